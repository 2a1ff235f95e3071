"""Start, find and stop a detached emulator for an ``MLRELEASE_HOME``-like home directory.

The emulator outlives the process that starts it (``make demo-cloud`` starts it, Airflow tasks use it),
so :func:`start` launches ``python -m emulators.databricks serve`` in its own session, waits until it
answers, and finds it again through ``HOME/emulators/databricks/state.json``. The workspace token
travels in a 0600 file, never on a command line where ``ps`` would show it.
"""

from __future__ import annotations

import json
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators._process import DetachedServer, EmulatorHandle, free_port, kill_group, write_secret
from emulators._state import read_json
from emulators.databricks.paths import WorkspaceTree
from emulators.databricks.server import state_dir_for

DEFAULT_TOKEN = "dapi-emulator-token"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


def _control(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"Emulator control {method} {path} failed: {e.code} {e.read().decode()}") from e


def _health(state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return _control(state["url"], "GET", "/emulator/health", timeout=3)
    except (OSError, RuntimeError, ValueError):
        return None


def _kill_leftovers(state: dict[str, Any]) -> None:
    """An emulator that crashed or had to be killed leaves its mlflow server and active runs behind."""
    kill_group(state.get("mlflow_pid"), signal.SIGKILL)
    if not state.get("state_dir"):
        return
    for run_file in Path(state["state_dir"], "runs").glob("*/run.json"):
        run = read_json(run_file)
        if run and run.get("life_cycle_state") not in ("TERMINATED", "INTERNAL_ERROR", "SKIPPED"):
            kill_group(run.get("pid"), signal.SIGKILL)


SERVER = DetachedServer("Databricks emulator", state_dir_for, _health, STOP_TIMEOUT_SECONDS, _kill_leftovers)


@dataclass
class Emulator(EmulatorHandle):
    """A handle on a running emulator."""

    _server = SERVER

    home: Path
    url: str
    token: str
    pid: int
    mlflow_pid: int | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def runs(self) -> list[dict[str, Any]]:
        return _control(self.url, "GET", "/emulator/runs")["runs"]

    def set_faults(self, **faults: Any) -> None:
        _control(self.url, "POST", "/emulator/faults", faults)

    def faults(self) -> dict[str, Any]:
        return _control(self.url, "GET", "/emulator/faults")

    def volume_path(self, path: str) -> Path:
        """Where a ``/Volumes/...`` (or ``dbfs:/Volumes/...``, ``/Workspace/...``) path lives on disk."""
        return WorkspaceTree(self.state_dir).to_disk(path)


def _handle(home: Path, state: dict[str, Any]) -> Emulator:
    token_file = state_dir_for(home) / "token"
    token = token_file.read_text().strip() if token_file.exists() else DEFAULT_TOKEN
    return Emulator(home, state["url"], token, state["pid"], state.get("mlflow_pid"), state)


def running(home: Path) -> Emulator | None:
    """The healthy emulator started earlier under ``home``, if any."""
    return SERVER.find(home, _handle)


def start(
    home: Path,
    port: int | None = None,
    token: str = DEFAULT_TOKEN,
    spark_master: str = "local[2]",
    timeout: float = START_TIMEOUT_SECONDS,
) -> Emulator:
    """Start a detached emulator for ``home`` (or return the one already running there)."""
    home = Path(home).resolve()
    existing = running(home)
    if existing is not None:
        if existing.token != token:
            raise RuntimeError(
                f"An emulator for {home} is already running at {existing.url} with another token; "
                f"stop it first (python -m emulators.databricks stop --home {home})"
            )
        return existing
    state_dir = state_dir_for(home)
    state_dir.mkdir(parents=True, exist_ok=True)
    token_file = state_dir / "token"
    write_secret(token_file, token)
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "emulators.databricks",
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--spark-master",
        spark_master,
    ]
    return SERVER.start(home, command, port, timeout, _handle)


def stop(home: Path) -> bool:
    """Stop the emulator started under ``home``; True if one was running."""
    return SERVER.stop(home)
