"""The local test and prod endpoints: one scoring process each, on loopback, detached from whoever started it.

Each endpoint has a state directory ``MLRELEASE_HOME/endpoints/<name>/`` holding

* ``desired.json``: what it should serve (written here, atomically);
* ``serving.json``: what it loaded (written by the service);
* ``service.pid`` and ``service.log``: the process and its log.

A deployment never stops the process: it writes ``desired.json`` and asks the running service to
reload (``POST /admin/reload``). The service loads and self-tests the new model beside the old one and
swaps only if that worked, so the endpoint answers throughout, and a model that fails to load leaves the
previous one serving (``desired.json`` is then put back, so a restart serves the previous one too).
Processes are started in their own session, so they outlive the Airflow task (or ``make demo``) that
started them; ``mlrelease endpoints stop`` (``make stop``) ends them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mlrelease.backends.base import DeploymentSpec, EndpointError
from mlrelease.processes import alive

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
RELOAD_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class LocalEndpoints:
    def __init__(
        self,
        endpoints_dir: Path,
        ports: dict[str, int],
        audit_db: Path,
        python: str | None = None,
    ) -> None:
        self.endpoints_dir = endpoints_dir
        self.ports = ports
        self.audit_db = audit_db
        self.python = python or sys.executable

    # ---------------------------------------------------------------- where things are
    def _check_name(self, endpoint: str) -> None:
        if endpoint not in self.ports:
            raise EndpointError(f"unknown endpoint {endpoint!r}; known endpoints: {', '.join(self.ports)}")

    def url(self, endpoint: str) -> str:
        self._check_name(endpoint)
        return f"http://127.0.0.1:{self.ports[endpoint]}"

    def state_dir(self, endpoint: str) -> Path:
        self._check_name(endpoint)
        return self.endpoints_dir / endpoint

    def log_path(self, endpoint: str) -> Path:
        return self.state_dir(endpoint) / "service.log"

    def _pid_path(self, endpoint: str) -> Path:
        return self.state_dir(endpoint) / "service.pid"

    def pid(self, endpoint: str) -> int | None:
        try:
            pid = int(self._pid_path(endpoint).read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    # ---------------------------------------------------------------- reading
    def _get(self, endpoint: str, path: str, timeout: float = 5.0) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url(endpoint)}{path}", timeout=timeout)
        except httpx.HTTPError:
            return None

    def _is_our_service(self, response: httpx.Response | None) -> bool:
        if response is None or response.status_code not in (200, 503):
            return False
        try:
            return response.json().get("status") in ("ready", "not ready")
        except ValueError:
            return False

    def current(self, endpoint: str) -> dict[str, Any] | None:
        response = self._get(endpoint, "/metadata")
        if response is None or response.status_code != 200:
            return None
        return response.json()

    def desired(self, endpoint: str) -> dict[str, Any] | None:
        path = self.state_dir(endpoint) / "desired.json"
        return json.loads(path.read_text()) if path.is_file() else None

    # ---------------------------------------------------------------- process lifecycle
    def ensure_running(self, endpoint: str) -> None:
        """Start the endpoint's process unless it already answers; EndpointError if it cannot start."""
        health = self._get(endpoint, "/health", timeout=2.0)
        if self._is_our_service(health):
            if self.pid(endpoint) is None:
                # A scoring service of another MLRELEASE_HOME (another checkout, a test run): deploying
                # into it would write our desired.json where it never looks.
                raise EndpointError(
                    f"port {self.ports[endpoint]} (endpoint {endpoint}) is served by an mlrelease scoring "
                    f"service that was not started from {self.endpoints_dir} (no live pid in "
                    f"{self._pid_path(endpoint)}); stop it (`make stop` with its MLRELEASE_HOME) or set "
                    f"MLRELEASE_{endpoint.upper()}_ENDPOINT_PORT to a free port"
                )
            return
        if health is not None:
            raise EndpointError(
                f"port {self.ports[endpoint]} (endpoint {endpoint}) answers HTTP {health.status_code} but is "
                f"not an mlrelease scoring service; stop whatever listens there or set "
                f"MLRELEASE_{endpoint.upper()}_ENDPOINT_PORT to a free port"
            )
        state = self.state_dir(endpoint)
        state.mkdir(parents=True, exist_ok=True)
        command = [
            self.python,
            "-m",
            "mlrelease.serving",
            "--endpoint",
            endpoint,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.ports[endpoint]),
            "--state-dir",
            str(state),
            "--audit-db",
            str(self.audit_db),
        ]
        with open(self.log_path(endpoint), "ab") as log_file:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlive the task / make target that started it
                cwd=state,
            )
        self._pid_path(endpoint).write_text(f"{process.pid}\n")
        log.info(
            "Started endpoint %s (pid %s) on %s; its log: %s",
            endpoint,
            process.pid,
            self.url(endpoint),
            self.log_path(endpoint),
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EndpointError(
                    f"endpoint {endpoint} exited with code {process.returncode} while starting; "
                    f"last log lines:\n{self._log_tail(endpoint)}"
                )
            if self._is_our_service(self._get(endpoint, "/health", timeout=1.0)):
                return
            time.sleep(0.3)
        raise EndpointError(
            f"endpoint {endpoint} (pid {process.pid}) did not answer on {self.url(endpoint)} within "
            f"{START_TIMEOUT_S:.0f} s; see {self.log_path(endpoint)}:\n{self._log_tail(endpoint)}"
        )

    def _log_tail(self, endpoint: str, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path(endpoint).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, endpoint: str) -> bool:
        """SIGTERM the endpoint (it finishes in-flight requests and their log records), then wait."""
        pid = self.pid(endpoint)
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if alive(pid):
            log.warning(
                "endpoint %s (pid %s) ignored SIGTERM for %.0f s; killing it", endpoint, pid, STOP_TIMEOUT_S
            )
            os.kill(pid, signal.SIGKILL)
        self._pid_path(endpoint).unlink(missing_ok=True)
        return True

    # ---------------------------------------------------------------- deploying
    def _reload(self, endpoint: str) -> httpx.Response:
        try:
            return httpx.post(f"{self.url(endpoint)}/admin/reload", timeout=RELOAD_TIMEOUT_S)
        except httpx.HTTPError as error:
            raise EndpointError(f"endpoint {endpoint} did not answer the reload request: {error}") from error

    def _apply(self, endpoint: str, desired: dict[str, Any]) -> dict[str, Any]:
        """Write ``desired`` and hot-reload; on failure put the old desired.json back and raise."""
        self.ensure_running(endpoint)
        path = self.state_dir(endpoint) / "desired.json"
        previous_text = path.read_text() if path.is_file() else None
        _write_atomically(path, json.dumps(desired, indent=2, sort_keys=True))
        response = self._reload(endpoint)
        if response.status_code != 200:
            if previous_text is None:
                path.unlink(missing_ok=True)
            else:
                _write_atomically(path, previous_text)
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:500]}
            raise EndpointError(
                f"endpoint {endpoint} refused {desired['model']['name']} version {desired['model']['version']} "
                f"(HTTP {response.status_code}): {body.get('error')}; still serving: {body.get('still_serving')}. "
                f"See {self.log_path(endpoint)}"
            )
        served = self.current(endpoint)
        want = desired["model"]
        got = (served or {}).get("model") or {}
        if (got.get("name"), str(got.get("version"))) != (want["name"], str(want["version"])):
            raise EndpointError(
                f"endpoint {endpoint} reloaded but /metadata shows {got or 'nothing'} instead of {want}"
            )
        return served or {}

    def deploy(self, endpoint: str, spec: DeploymentSpec) -> dict[str, Any]:
        self.ensure_running(endpoint)
        served = self.current(endpoint)
        if spec.served_by(served):
            log.info(
                "Endpoint %s already serves %s version %s (release %s): nothing to deploy",
                endpoint,
                spec.model_name,
                spec.version,
                spec.release_id,
            )
            return served or {}
        return self._apply(endpoint, spec.desired(datetime.now(UTC).isoformat(timespec="seconds")))

    def restore(self, endpoint: str, desired: dict[str, Any] | None) -> dict[str, Any] | None:
        """Serve ``desired`` again (a rollback), or nothing at all when there was nothing before."""
        if desired is None:
            self.stop(endpoint)
            for name in ("desired.json", "serving.json"):
                (self.state_dir(endpoint) / name).unlink(missing_ok=True)
            return None
        served = self.current(endpoint)
        if (
            served
            and (served.get("model") == desired["model"])
            and served.get("release_id") == desired["release_id"]
        ):
            return served
        return self._apply(endpoint, desired)

    def status(self) -> dict[str, dict[str, Any]]:
        """Live state of every endpoint, for ``mlrelease status``."""
        result: dict[str, dict[str, Any]] = {}
        for endpoint in self.ports:
            served = self.current(endpoint)
            health = self._get(endpoint, "/health", timeout=2.0)
            model = (served or {}).get("model") or {}
            result[endpoint] = {
                "url": self.url(endpoint),
                "up": health is not None,
                "ready": health is not None and health.status_code == 200,
                "model": model.get("name"),
                "version": model.get("version"),
                "release_id": (served or {}).get("release_id"),
                "since": (served or {}).get("deployed_at"),
                "pid": self.pid(endpoint),
                "log": str(self.log_path(endpoint)),
            }
        return result
