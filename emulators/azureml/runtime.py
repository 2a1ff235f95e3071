"""Deployments as local scoring processes: materialise the assets, start the process, probe it, proxy to it.

On Azure ML a Kubernetes online deployment becomes a pod: the storage initializer downloads the model
into ``AZUREML_MODEL_DIR`` (``.../azureml-models/<model>/<version>/``) and the code asset next to it,
then the inference server starts the scoring script and the deployment succeeds once the liveness
probe answers. The emulator does the same on this machine: blobs come from the workspace datastore's
Blob endpoint, the process is started by ``emulators.azureml.scoring_host.start_scoring_process`` (or
an injected launcher with the same signature), and a deployment that does not answer ``GET /`` in time
fails with the process's log tail, as ``get_logs`` would show it on Azure.
"""

from __future__ import annotations

import http.client
import importlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from emulators._process import free_port
from emulators._server import HOP_BY_HOP_HEADERS
from emulators.azureml.blob import BlobStore, parse_blob_url, parse_datastore_uri
from emulators.azureml.resources import ApiError

LIVENESS_POLL_SECONDS = 0.1
STOP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_LINES = 50
# Not forwarded to a scoring process nor back: the connection's own headers, and the caller's credential
# (azureml-fe checks it and does not pass it on).
HOP_BY_HOP = HOP_BY_HOP_HEADERS | {"host", "content-length", "authorization"}


class ScoringLauncher(Protocol):
    """``emulators.azureml.scoring_host.start_scoring_process``'s signature."""

    def __call__(
        self,
        code_dir: Path,
        scoring_script: str,
        model_dir: Path,
        environment_variables: dict[str, str],
        port: int,
        log_path: Path,
    ) -> subprocess.Popen: ...


class ProvisioningError(Exception):
    """Provisioning failed; ``code`` and ``message`` go into the operation status as the service's error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def default_launcher() -> ScoringLauncher:
    """The project's scoring host, imported when the first deployment is provisioned."""
    try:
        module = importlib.import_module("emulators.azureml.scoring_host")
    except ImportError as e:
        raise ProvisioningError(
            "InferencingClientCallFailed",
            f"The emulator cannot start scoring processes: emulators.azureml.scoring_host is not importable "
            f"({e}). Install it, or start the emulator with scoring_launcher=<module:function>.",
        ) from e
    return module.start_scoring_process


def load_launcher(spec: str) -> ScoringLauncher:
    """``"package.module:function"`` -> the function (for ``--scoring-launcher`` on the command line)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"Scoring launcher {spec!r} is not of the form 'package.module:function'")
    return getattr(importlib.import_module(module_name), attribute)


def iso_duration_seconds(value: Any, default: float) -> float:
    """``PT5S``/``PT1M30S``/``PT0.5S`` -> seconds (the service's duration format)."""
    if not isinstance(value, str):
        return default
    match = re.fullmatch(r"P(?:T(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?", value)
    if not match:
        return default
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds or default


@dataclass
class Runtime:
    """The running scoring process of one deployment."""

    endpoint: str
    deployment: str
    process: subprocess.Popen
    port: int
    log_path: Path
    directory: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen) -> None:
    """Terminate a scoring process (its whole group when it leads one) and reap it."""
    if process.poll() is not None:
        return
    group = _own_group(process.pid)
    _signal(process.pid, signal.SIGTERM, group)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        _signal(process.pid, signal.SIGKILL, group)
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def kill_pid(pid: int) -> None:
    """Kill a scoring process left behind by an emulator that did not shut down (``stop`` after a crash)."""
    _signal(pid, signal.SIGKILL, _own_group(pid))


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid and os.getpgid(pid) != os.getpgid(0)
    except ProcessLookupError:
        return False


def _signal(pid: int, sig: signal.Signals, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int) -> str:
    if lines <= 0 or not path.exists():
        return ""
    text = path.read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class ProvisionRequest:
    """Everything needed to bring one deployment up, resolved from the workspace state."""

    endpoint: str
    deployment: str
    model_name: str
    model_version: str
    model_uri: str
    code_uri: str | None
    scoring_script: str | None
    environment_variables: dict[str, str] = field(default_factory=dict)
    liveness_timeout_s: float = 120.0


class Provisioner:
    """Brings deployments up as local processes under ``state_dir/deployments/<endpoint>/<deployment>``."""

    def __init__(
        self,
        state_dir: Path,
        blob_store: BlobStore | None,
        launcher: ScoringLauncher | None,
        on_process: Callable[[], None],
    ) -> None:
        self.root = state_dir / "deployments"
        self.blob_store = blob_store
        self._launcher = launcher
        self._on_process = on_process
        self._lock = threading.Lock()
        # Processes started but not yet live (not yet a deployment's runtime): "endpoint/deployment" -> pid.
        self.starting: dict[str, int] = {}

    def starting_pids(self) -> dict[str, int]:
        with self._lock:
            return dict(self.starting)

    def directory(self, endpoint: str, deployment: str) -> Path:
        return self.root / endpoint / deployment

    def storage_log(self, endpoint: str, deployment: str) -> Path:
        return self.directory(endpoint, deployment) / "storage-initializer.log"

    def inference_log(self, endpoint: str, deployment: str) -> Path:
        return self.directory(endpoint, deployment) / "inference-server.log"

    def provision(self, request: ProvisionRequest, cancelled: threading.Event) -> Runtime:
        directory = self.directory(request.endpoint, request.deployment)
        model_root = directory / "model"
        code_dir = directory / "code"
        for stale in (model_root, code_dir):
            shutil.rmtree(stale, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
        storage_log = self.storage_log(request.endpoint, request.deployment)
        log_path = self.inference_log(request.endpoint, request.deployment)
        log_path.unlink(missing_ok=True)

        model_dir = model_root / "azureml-models" / request.model_name / request.model_version
        with storage_log.open("w") as log:
            log.write(
                f"Downloading model {request.model_name}:{request.model_version} from {request.model_uri}\n"
            )
            for path in self._download(request.model_uri, model_dir, keep_basename=True, what="model"):
                log.write(f"  {path.relative_to(directory)}\n")
            code_dir.mkdir(parents=True, exist_ok=True)
            if request.code_uri:
                log.write(f"Downloading code from {request.code_uri}\n")
                for path in self._download(request.code_uri, code_dir, keep_basename=False, what="code"):
                    log.write(f"  {path.relative_to(directory)}\n")
            log.write("Models are downloaded successfully or no model need to download\n")
        if cancelled.is_set():
            raise ProvisioningError(
                "OperationCanceled", "Provisioning was cancelled: the emulator is stopping"
            )

        script = request.scoring_script or "score.py"
        if request.code_uri and not (code_dir / script).is_file():
            raise ProvisioningError(
                "UserScriptFunctionNotFound",
                f"Scoring script {script!r} is not in the code asset {request.code_uri} of deployment "
                f"{request.deployment}; fix code_configuration.scoring_script or the uploaded code",
            )
        environment = dict(request.environment_variables)
        environment.setdefault("AZUREML_MODEL_DIR", str(model_dir))
        environment.setdefault("AZUREML_ENTRY_SCRIPT", script)
        launcher = self._launcher or default_launcher()
        port = free_port()
        try:
            process = launcher(code_dir, script, model_dir, environment, port, log_path)
        except ProvisioningError:
            raise
        except Exception as e:
            raise ProvisioningError(
                "KubernetesCrashLoopBackOff",
                f"Could not start the scoring process of deployment {request.deployment}: {e}",
            ) from e
        runtime = Runtime(request.endpoint, request.deployment, process, port, log_path, directory)
        key = f"{request.endpoint}/{request.deployment}"
        with self._lock:
            self.starting[key] = process.pid
        self._on_process()
        try:
            self._wait_live(runtime, request.liveness_timeout_s, cancelled)
        except BaseException:
            runtime.stop()
            raise
        finally:
            with self._lock:
                self.starting.pop(key, None)
        return runtime

    def _download(self, uri: str, destination: Path, keep_basename: bool, what: str) -> list[Path]:
        if self.blob_store is None:
            raise ProvisioningError(
                "ResourceNotReady",
                f"Cannot download the {what} {uri}: the emulator was started without a Blob connection "
                "string (start it with blob_connection_string=... / --blob-connection-string)",
            )
        parsed = parse_datastore_uri(uri)
        if parsed is not None:
            datastore, path = parsed
            if datastore != "workspaceblobstore":
                raise ProvisioningError(
                    "ResourceNotFound",
                    f"Datastore {datastore!r} of {what} {uri} does not exist; the emulated workspace has "
                    "only 'workspaceblobstore'",
                )
        else:
            path = parse_blob_url(uri, self.blob_store)
            if path is None:
                raise ProvisioningError(
                    "ResourceNotFound",
                    f"Cannot download the {what} {uri}: only azureml://datastores/workspaceblobstore/paths/... "
                    f"and URLs into container {self.blob_store.container} are served by the emulator",
                )
        try:
            return self.blob_store.download_prefix(path, destination, keep_basename=keep_basename)
        except Exception as e:
            raise ProvisioningError("ResourceNotFound", f"Unable to download user {what} {uri}: {e}") from e

    def _wait_live(self, runtime: Runtime, timeout_s: float, cancelled: threading.Event) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if cancelled.is_set():
                raise ProvisioningError(
                    "OperationCanceled", "Provisioning was cancelled: the emulator is stopping"
                )
            code = runtime.process.poll()
            if code is not None:
                raise ProvisioningError(
                    "ResourceNotReady",
                    f"User container has crashed or terminated: the scoring process of deployment "
                    f"{runtime.deployment} (endpoint {runtime.endpoint}) exited with code {code} before its "
                    f"liveness probe (GET / on port {runtime.port}) answered. Log tail:\n"
                    f"{tail(runtime.log_path, LOG_TAIL_LINES)}",
                )
            if _answers_liveness(runtime.port):
                return
            if time.monotonic() > deadline:
                raise ProvisioningError(
                    "ResourceNotReady",
                    f"Liveness probe failed: the scoring process of deployment {runtime.deployment} (endpoint "
                    f"{runtime.endpoint}) did not answer GET / on port {runtime.port} within {timeout_s:.0f}s. "
                    f"Log tail:\n{tail(runtime.log_path, LOG_TAIL_LINES)}",
                )
            time.sleep(LIVENESS_POLL_SECONDS)


def _answers_liveness(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        connection.close()


def forward(
    runtime: Runtime, method: str, path: str, headers: dict[str, str], body: bytes, timeout_s: float
) -> tuple[int, dict[str, str], bytes]:
    """Send one scoring request to the deployment's process, as azureml-fe does; its answer unchanged."""
    outgoing = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
    outgoing["Host"] = f"127.0.0.1:{runtime.port}"
    connection = http.client.HTTPConnection("127.0.0.1", runtime.port, timeout=timeout_s)
    try:
        connection.request(method, path, body=body or None, headers=outgoing)
        response = connection.getresponse()
        content = response.read()
        answer = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
        return response.status, answer, content
    except TimeoutError as e:
        raise ApiError(
            504,
            "RequestTimeout",
            f"Deployment {runtime.deployment} did not answer within {timeout_s:g}s "
            "(request_settings.request_timeout_ms)",
        ) from e
    except OSError as e:
        raise ApiError(
            502,
            "BadGateway",
            f"Deployment {runtime.deployment}'s scoring process is not reachable on port {runtime.port} ({e}); "
            "see its logs (ml_client.online_deployments.get_logs)",
        ) from e
    finally:
        connection.close()
