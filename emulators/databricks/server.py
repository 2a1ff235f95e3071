"""The emulator's HTTP server: a loopback Databricks workspace for the provider, MLflow and the SDK.

The stdlib ``ThreadingHTTPServer`` is used rather than an ASGI framework because one fault,
``lose_submit_response``, must create a run and then close the connection without writing any
response, which is what a client sees when a gateway drops an answer. Every request is appended to
``requests.jsonl`` (token values masked) so tests can assert on what the clients really sent.

Routes: Jobs API 2.1/2.2 runs (jobs.py), Files API (files.py), MLflow (mlflow_backend.py), and the
control routes under ``/emulator/`` (no auth, loopback only): ``health``, ``runs``, ``faults``, plus
``presigned`` (download URLs signed by the emulator, which clients fetch without credentials, like a
cloud storage URL). ``/.well-known/databricks-config`` is unauthenticated too, as on Databricks:
databricks-sdk fetches it before every client it builds.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from emulators._server import LoopbackHandler, LoopbackHTTPServer, serve_until_signalled
from emulators.databricks.files import PRESIGNED_ROUTE, FilesApi
from emulators.databricks.jobs import FORCEABLE_RESULTS, WORKSPACE_ORG_ID, Faults, RunRegistry
from emulators.databricks.mlflow_backend import MlflowBackend
from emulators.databricks.paths import WorkspaceTree
from emulators.databricks.wire import ApiError, Request, Response, error_response, json_response

log = logging.getLogger(__name__)

JOBS_ROUTE = re.compile(r"^/api/2\.[12]/jobs/runs/(submit|get|get-output|cancel)$")
SECRET_KEY = re.compile(r"token|password|secret|(^|_)pat($|_)", re.IGNORECASE)
UNMASKED_KEYS = ("idempotency_token",)
MAX_REQUEST_BYTES = 6 * 1024 * 1024 * 1024


def state_dir_for(home: Path) -> Path:
    return home / "emulators" / "databricks"


def mask(value: Any) -> Any:
    """A copy of a JSON value with secret-looking keys' values replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: ("***" if SECRET_KEY.search(str(k)) and k not in UNMASKED_KEYS else mask(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


class RequestLog:
    """``requests.jsonl``: one line per request, the workspace token never written."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self.token = token
        self._lock = threading.Lock()

    def append(self, request: Request, status: int, started: float) -> None:
        body: Any = None
        entry: dict[str, Any] = {
            "time": round(started, 3),
            "method": request.method,
            "path": request.path,
            "query": mask(request.query),
        }
        if request.body:
            # A Files API upload is file content, whatever its format: logged by size only.
            is_upload = request.path.startswith("/api/2.0/fs/files/")
            try:
                if is_upload:
                    raise ValueError("file content")
                body = mask(json.loads(request.body))
            except (ValueError, UnicodeDecodeError):
                entry["body_bytes"] = len(request.body)
        entry["body"] = body
        entry["status"] = status
        entry["duration_ms"] = round((time.time() - started) * 1000, 1)
        line = json.dumps(entry)
        if self.token:
            line = line.replace(self.token, "***")
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")


class Workspace:
    """Everything one emulated workspace serves; the HTTP handler calls :meth:`handle`."""

    def __init__(self, home: Path, port: int, token: str, spark_master: str) -> None:
        self.home = home
        self.state_dir = state_dir_for(home)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.token = token
        self.tree = WorkspaceTree(self.state_dir)
        self.tree.ensure()
        self.faults = Faults()
        self.files = FilesApi(self.tree, self.url)
        self.mlflow = MlflowBackend(self.state_dir, self.tree, self.files)
        self.runs = RunRegistry(self.state_dir, self.tree, self.url, token, spark_master, self.faults)
        self.request_log = RequestLog(self.state_dir / "requests.jsonl", token)

    # ---- dispatch ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        try:
            if request.path.startswith("/emulator/"):
                return self.control(request)
            if request.path == "/.well-known/databricks-config":
                # Host metadata that databricks-sdk fetches, without credentials, when it builds a client.
                return json_response({"oidc_endpoint": f"{self.url}/oidc", "workspace_id": WORKSPACE_ORG_ID})
            self.authenticate(request)
            return self.route(request)
        except ApiError as e:
            if e.status == 404:
                log.warning("404 for %s %s: %s", request.method, request.path, e.message)
            return error_response(e.status, e.error_code, e.message)
        except Exception as e:
            log.exception("Error handling %s %s", request.method, request.path)
            return error_response(500, "INTERNAL_ERROR", f"Emulator error: {e}")

    def authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip(), self.token):
            raise ApiError(
                401,
                "UNAUTHENTICATED",
                "Missing or invalid credentials: send 'Authorization: Bearer <token>' with the emulator's "
                "workspace token",
            )

    def route(self, request: Request) -> Response:
        path = request.path
        match = JOBS_ROUTE.match(path)
        if match:
            return self.jobs(match.group(1), request)
        if path.startswith("/api/2.0/fs/"):
            return self.files.dispatch(request)
        if MlflowBackend.handles(path):
            response = self.mlflow.dispatch(request)
            if response.status == 404:
                log.warning("MLflow 404 for %s %s: %s", request.method, path, response.body[:300])
            return response
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {path}'")

    # ---- Jobs API ------------------------------------------------------------------------------

    def jobs(self, action: str, request: Request) -> Response:
        expected = "POST" if action in ("submit", "cancel") else "GET"
        if request.method != expected:
            raise ApiError(
                405, "METHOD_NOT_ALLOWED", f"{request.path} takes {expected}, not {request.method}"
            )
        if action == "submit":
            return self.submit(request)
        if action == "cancel":
            self.runs.cancel(request.json().get("run_id"))
            return json_response({})
        run, by_task_id = self.runs.lookup(request.param("run_id"))
        if action == "get":
            return json_response(self.runs.task_run_view(run) if by_task_id else self.runs.run_view(run))
        return json_response(self.runs.output(run, by_task_id))

    def submit(self, request: Request) -> Response:
        with self.runs.cond:
            if self.faults.submit_503 > 0:
                self.faults.submit_503 -= 1
                log.info("Fault submit_503: answering 503 (%s left)", self.faults.submit_503)
                raise ApiError(
                    503, "TEMPORARILY_UNAVAILABLE", "The service is temporarily unavailable (fault)"
                )
            lose = self.faults.lose_submit_response > 0
            if lose:
                self.faults.lose_submit_response -= 1
        run, created = self.runs.submit(request.json())
        if lose:
            log.info("Fault lose_submit_response: run %s created, dropping the connection", run.run_id)
            return Response(200, drop_connection=True)
        return json_response({"run_id": run.run_id, "number_in_job": run.run_id})

    # ---- control -------------------------------------------------------------------------------

    def control(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == PRESIGNED_ROUTE:
            return self.files.dispatch(request)
        if path == "/emulator/health" and method == "GET":
            return json_response(
                {
                    "status": "ok",
                    "url": self.url,
                    "pid": os.getpid(),
                    "mlflow_pid": self.mlflow.process.pid if self.mlflow.process else None,
                    "mlflow_url": self.mlflow.url,
                    "state_dir": str(self.state_dir),
                }
            )
        if path == "/emulator/runs" and method == "GET":
            return json_response({"runs": [self.runs.control_view(r) for r in self.runs.all_runs()]})
        if path == "/emulator/faults":
            if method == "POST":
                self.set_faults(request.json())
            elif method != "GET":
                raise ApiError(405, "METHOD_NOT_ALLOWED", "/emulator/faults takes GET or POST")
            with self.runs.cond:
                return json_response(asdict(self.faults))
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No control route '{method} {path}'")

    def set_faults(self, body: dict[str, Any]) -> None:
        known = set(asdict(self.faults))
        unknown = set(body) - known
        if unknown:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"Unknown faults {sorted(unknown)}; known: {sorted(known)}"
            )
        result = body.get("next_run_result")
        if result is not None and result not in FORCEABLE_RESULTS:
            raise ApiError(
                400, "INVALID_PARAMETER_VALUE", f"next_run_result must be one of {FORCEABLE_RESULTS} or null"
            )
        release = False
        with self.runs.cond:
            for key in ("submit_503", "lose_submit_response"):
                if key in body:
                    setattr(self.faults, key, max(int(body[key] or 0), 0))
            if "next_run_result" in body:
                self.faults.next_run_result = result
            if "next_run_message" in body:
                self.faults.next_run_message = body["next_run_message"]
            if "stuck_pending" in body:
                release = self.faults.stuck_pending and not body["stuck_pending"]
                self.faults.stuck_pending = bool(body["stuck_pending"])
        if release:
            self.runs.release_held()
        log.info("Faults now %s", asdict(self.faults))


class Handler(LoopbackHandler):
    max_request_bytes = MAX_REQUEST_BYTES
    server: EmulatorHTTPServer

    def _dispatch(self) -> None:
        started = time.time()
        body = self.read_body_or_refuse()
        if body is None:
            return
        target = urlsplit(self.path)
        query = {
            k: v[0] if len(v) == 1 else v for k, v in parse_qs(target.query, keep_blank_values=True).items()
        }
        request = Request(
            method=self.command,
            path=unquote(target.path),
            raw_path=self.path,
            query=query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        workspace = self.server.workspace
        response = workspace.handle(request)
        if response.drop_connection:
            workspace.request_log.append(request, 0, started)
            self.close_connection = True
            return
        # Logged before answering, so a client that reads the log right after its call finds the entry.
        workspace.request_log.append(request, response.status, started)
        self.send_response(response.status)
        headers = dict(response.headers)
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(response.body))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class EmulatorHTTPServer(LoopbackHTTPServer):
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        super().__init__(workspace.port, Handler)


def serve(home: Path, port: int, token: str, spark_master: str) -> None:
    """Run the emulator in the foreground until SIGTERM/SIGINT; write and remove ``state.json``."""
    workspace = Workspace(home, port, token, spark_master)
    workspace.mlflow.start()
    try:
        httpd = EmulatorHTTPServer(workspace)
    except OSError:
        workspace.mlflow.stop()
        raise
    state = {
        "url": workspace.url,
        "host": "127.0.0.1",
        "port": port,
        "pid": os.getpid(),
        "mlflow_pid": workspace.mlflow.process.pid if workspace.mlflow.process else None,
        "mlflow_url": workspace.mlflow.url,
        "spark_master": spark_master,
        "state_dir": str(workspace.state_dir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def stop_runs_and_mlflow() -> None:
        log.info("Stopping: cancelling active runs, stopping mlflow server")
        workspace.runs.shutdown()
        workspace.mlflow.stop()

    log.info("Databricks emulator serving %s (state %s)", workspace.url, workspace.state_dir)
    serve_until_signalled(httpd, workspace.state_dir, state, stop_runs_and_mlflow)
