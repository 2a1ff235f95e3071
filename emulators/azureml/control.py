"""Start, find and stop a detached Azure ML emulator for a home directory; build MLClient arguments.

Like ``emulators.databricks``, the HTTPS emulator outlives the process that starts it (a demo starts it,
Airflow tasks use it): :func:`start` launches ``python -m emulators.azureml serve`` in its own session,
waits until it answers, and finds it again through ``HOME/emulators/azureml/state.json``. The Blob
connection string travels in a 0600 file, never on the server's command line. :func:`stop` also kills
scoring processes a crashed emulator left behind (``processes.json``).
"""

from __future__ import annotations

import json
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators._process import DetachedServer, EmulatorHandle, alive, free_port, write_secret
from emulators._state import read_json
from emulators.azureml.runtime import kill_pid
from emulators.azureml.sdk import cloud_metadata, cloud_name
from emulators.azureml.server import state_dir_for
from emulators.azureml.service import (
    DEFAULT_AKS_COMPUTE,
    DEFAULT_CONTAINER,
    DEFAULT_LOCATION,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION,
    DEFAULT_WORKSPACE,
    IDENTITY_ROUTE,
    AzureMLService,
)

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def _control(
    url: str, ca_bundle: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    context = ssl.create_default_context(cafile=ca_bundle)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"Emulator control {method} {path} failed: {e.code} {e.read().decode()}") from e


def _health(state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return _control(state["url"], state["ca_bundle"], "GET", "/emulator/health", timeout=3)
    except (OSError, RuntimeError, ValueError):
        return None


def _kill_leftovers(state: dict[str, Any]) -> None:
    """Scoring processes run in sessions of their own, out of reach of a kill of the emulator's group:
    those of an emulator that crashed or had to be killed are named in ``processes.json``."""
    if not state.get("state_dir"):
        return
    processes_file = Path(state["state_dir"], "processes.json")
    for pid in (read_json(processes_file) or {}).values():
        if alive(pid):
            kill_pid(int(pid))
    processes_file.unlink(missing_ok=True)


SERVER = DetachedServer("Azure ML emulator", state_dir_for, _health, STOP_TIMEOUT_SECONDS, _kill_leftovers)


@dataclass
class Emulator(EmulatorHandle):
    """A handle on a running HTTPS emulator."""

    _server = SERVER

    home: Path
    url: str
    pid: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def ca_bundle(self) -> str:
        return str(self.state["ca_bundle"])

    @property
    def subscription_id(self) -> str:
        return str(self.state["subscription_id"])

    @property
    def resource_group(self) -> str:
        return str(self.state["resource_group"])

    @property
    def workspace(self) -> str:
        return str(self.state["workspace"])

    def identity_env(self) -> dict[str, str]:
        """``IDENTITY_ENDPOINT``/``IDENTITY_HEADER`` for a process whose DefaultAzureCredential should use
        the emulator's managed identity (it must also trust ``ca_bundle``: ``REQUESTS_CA_BUNDLE``)."""
        return {
            "IDENTITY_ENDPOINT": f"{self.url}{IDENTITY_ROUTE}",
            "IDENTITY_HEADER": (self.state_dir / "identity-header").read_text().strip(),
        }

    def scoring_uri(self, endpoint: str) -> str:
        return f"{self.url}/endpoints/{endpoint}/score"

    def ml_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MLClient(credential, **kwargs)`` reaching this emulator over HTTPS."""
        return {
            "subscription_id": self.subscription_id,
            "resource_group_name": self.resource_group,
            "workspace_name": self.workspace,
            "cloud": cloud_name(self.url),
            "cloud_metadata": cloud_metadata(self.url),
            "connection_verify": self.ca_bundle,
            "enable_telemetry": False,
        }

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return _control(self.url, self.ca_bundle, "POST", "/emulator/faults", faults)

    def faults(self) -> dict[str, Any]:
        return _control(self.url, self.ca_bundle, "GET", "/emulator/faults")

    def snapshot(self) -> dict[str, Any]:
        """Endpoints, traffic and deployments with their ports and pids."""
        return _control(self.url, self.ca_bundle, "GET", "/emulator/state")


def in_process_kwargs(service: AzureMLService) -> dict[str, Any]:
    """Keyword arguments for ``MLClient(credential, **kwargs)`` answered in process by ``service``."""
    return service.ml_client_kwargs()


def _handle(home: Path, state: dict[str, Any]) -> Emulator:
    return Emulator(home, state["url"], state["pid"], state)


def running(home: Path) -> Emulator | None:
    """The healthy emulator started earlier under ``home``, if any."""
    return SERVER.find(Path(home).resolve(), _handle)


def start(
    home: Path,
    port: int | None = None,
    blob_connection_string: str | None = None,
    aks_computes: tuple[str, ...] = (DEFAULT_AKS_COMPUTE,),
    subscription_id: str = DEFAULT_SUBSCRIPTION,
    resource_group: str = DEFAULT_RESOURCE_GROUP,
    workspace: str = DEFAULT_WORKSPACE,
    location: str = DEFAULT_LOCATION,
    blob_container: str = DEFAULT_CONTAINER,
    scoring_launcher: str | None = None,
    lro_retry_after_ms: int | None = 100,
    liveness_timeout_s: float = 120.0,
    timeout: float = START_TIMEOUT_SECONDS,
) -> Emulator:
    """Start a detached HTTPS emulator for ``home`` (or return the one already running there).

    ``scoring_launcher`` is ``"package.module:function"`` with ``start_scoring_process``'s signature
    (default: ``emulators.azureml.scoring_host.start_scoring_process``).
    """
    home = Path(home).resolve()
    existing = running(home)
    if existing is not None:
        if existing.workspace != workspace or existing.subscription_id != subscription_id:
            raise RuntimeError(
                f"An Azure ML emulator for {home} is already running at {existing.url} for another workspace; "
                f"stop it first (python -m emulators.azureml stop --home {home})"
            )
        return existing
    state_dir = state_dir_for(home)
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "emulators.azureml",
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        "--subscription-id",
        subscription_id,
        "--resource-group",
        resource_group,
        "--workspace",
        workspace,
        "--location",
        location,
        "--blob-container",
        blob_container,
        "--liveness-timeout",
        str(liveness_timeout_s),
        "--lro-retry-after-ms",
        "none" if lro_retry_after_ms is None else str(lro_retry_after_ms),
    ]
    for compute in aks_computes:
        command += ["--aks-compute", compute]
    if blob_connection_string:
        secret_file = state_dir / "blob-connection-string"
        write_secret(secret_file, blob_connection_string)
        command += ["--blob-connection-string-file", str(secret_file)]
    if scoring_launcher:
        command += ["--scoring-launcher", scoring_launcher]
    identity_file = state_dir / "identity-header"
    write_secret(identity_file, secrets.token_hex(16))
    command += ["--identity-header-file", str(identity_file)]
    return SERVER.start(home, command, port, timeout, _handle)


def stop(home: Path) -> bool:
    """Stop the emulator started under ``home`` and its scoring processes; True if one was running."""
    return SERVER.stop(home)
