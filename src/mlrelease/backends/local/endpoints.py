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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mlrelease.backends.base import DeploymentSpec, DeploymentState, EndpointError, ModelVersionRef, Rollout
from mlrelease.backends.probe import Target, call, client_for, run_contract_checks
from mlrelease.domain.endpoint_checks import CheckReport, Expectation, health_check, metadata_check
from mlrelease.domain.served import ServedModelRef
from mlrelease.hashing import sha256_file
from mlrelease.processes import alive
from mlrelease.tags import PORTABLE_MODEL_ARTIFACT

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
        fetch_artifact: Callable[[ModelVersionRef, str], Path],
        python: str | None = None,
    ) -> None:
        """``fetch_artifact(version, artifact path)`` returns a local copy of one of the version's
        training-run artifacts: the local service loads the portable model file from disk."""
        self.endpoints_dir = endpoints_dir
        self.ports = ports
        self.audit_db = audit_db
        self.fetch_artifact = fetch_artifact
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

    def metadata(self, endpoint: str) -> dict[str, Any] | None:
        """The service's ``/metadata`` (what it loaded, with lineage), or None when down or empty."""
        response = self._get(endpoint, "/metadata")
        if response is None or response.status_code != 200:
            return None
        return response.json()

    def serving(self, endpoint: str) -> ServedModelRef | None:
        return ServedModelRef.from_document(self.metadata(endpoint))

    def desired(self, endpoint: str) -> dict[str, Any] | None:
        """The deploy record (desired.json) the service loads on (re)start."""
        path = self.state_dir(endpoint) / "desired.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def restore_point(self, endpoint: str) -> dict[str, Any] | None:
        return self.desired(endpoint)

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

    def _apply(self, endpoint: str, desired: dict[str, Any]) -> ServedModelRef:
        """Write ``desired`` and hot-reload; on failure put the old desired.json back and raise."""
        self.ensure_running(endpoint)
        path = self.state_dir(endpoint) / "desired.json"
        previous_text = path.read_text() if path.is_file() else None
        _write_atomically(path, json.dumps(desired, indent=2, sort_keys=True))
        response = self._reload(endpoint)
        want = ServedModelRef.from_document(desired)
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
                f"endpoint {endpoint} refused {want.describe()} (HTTP {response.status_code}): "
                f"{body.get('error')}; still serving: {body.get('still_serving')}. See {self.log_path(endpoint)}"
            )
        served = self.serving(endpoint)
        if not want.same_as(served):
            raise EndpointError(
                f"endpoint {endpoint} reloaded but /metadata shows {served.describe() if served else 'nothing'} "
                f"instead of {want.describe()}"
            )
        return served

    def _desired_document(self, spec: DeploymentSpec) -> dict[str, Any]:
        try:
            artifact = self.fetch_artifact(spec.model, PORTABLE_MODEL_ARTIFACT)
        except RuntimeError as error:
            raise EndpointError(
                f"endpoint {spec.stage}: cannot stage {spec.served.describe()}: {error}"
            ) from error
        return {
            "model": spec.served.model_dict(),
            "release_id": spec.release_id,
            "artifact": str(artifact),
            "artifact_sha256": sha256_file(artifact),
            "lineage": spec.lineage,
            "stage": spec.stage,
            "deployed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }

    def deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        """Hot swap: the service loads the new model beside the old and swaps when it is healthy, so the
        rollout is live at once (a failed check is undone by :meth:`roll_back`)."""
        self.ensure_running(endpoint)
        desired = self._desired_document(spec)
        want = ServedModelRef.from_document(desired)
        before = ServedModelRef.from_document(self.metadata(endpoint))
        if want.same_as(before):
            log.info("Endpoint %s already serves %s: nothing to deploy", endpoint, want.describe())
            return Rollout(endpoint, want, live=True)
        return Rollout(endpoint, self._apply(endpoint, desired), live=True, replacing=before)

    def start_deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        return self.deploy(endpoint, spec)  # loading takes seconds: nothing worth deferring for

    def deployment_state(self, rollout: Rollout) -> DeploymentState:
        return DeploymentState(DeploymentState.SUCCEEDED)

    def finish_deploy(self, rollout: Rollout, state: DeploymentState) -> Rollout:
        return rollout

    def find(self, endpoint: str, served: ServedModelRef) -> Rollout | None:
        now = ServedModelRef.from_document(self.metadata(endpoint))
        return Rollout(endpoint, now, live=True) if served.same_as(now) else None

    def check(self, endpoint: str, expect: Expectation, rollout: Rollout) -> CheckReport:
        """Platform checks (``/health``, ``/metadata``) then the contract checks, on the one local service."""
        url = self.url(endpoint)
        with client_for(Target(url)) as client:
            platform = [
                health_check(call(client, "GET", f"{url}/health")),
                metadata_check(call(client, "GET", f"{url}/metadata"), expect),
            ]
        return CheckReport(endpoint, url, platform + run_contract_checks(Target(url), expect))

    def cut_over(self, rollout: Rollout) -> ServedModelRef:
        """Nothing to move: the local service swapped in place at deploy; verify it still serves."""
        served = self.serving(rollout.endpoint)
        if not rollout.served.same_as(served):
            raise EndpointError(
                f"endpoint {rollout.endpoint} should serve {rollout.served.describe()} but serves "
                f"{served.describe() if served else 'nothing'}; redeploy"
            )
        return served

    def retire(self, rollout: Rollout) -> list[str]:
        return []  # one model per process: the swap already released the old one

    def roll_back(self, rollout: Rollout, restore_point: dict[str, Any] | None) -> ServedModelRef | None:
        """Serve ``restore_point`` again, or nothing at all when there was nothing before."""
        endpoint = rollout.endpoint
        if restore_point is None:
            self.stop(endpoint)
            for name in ("desired.json", "serving.json"):
                (self.state_dir(endpoint) / name).unlink(missing_ok=True)
            return None
        want = ServedModelRef.from_document(restore_point)
        served = self.serving(endpoint)
        if want.same_as(served):
            return served
        return self._apply(endpoint, restore_point)

    def status(self) -> dict[str, dict[str, Any]]:
        """Live state of every endpoint, for ``mlrelease status``."""
        result: dict[str, dict[str, Any]] = {}
        for endpoint in self.ports:
            served = self.metadata(endpoint)
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
