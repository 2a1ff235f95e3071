"""Databricks-hosted MLflow: a real ``mlflow server`` behind the workspace URL, plus what only Databricks serves.

With tracking and registry URI ``databricks`` the MLflow client talks the ordinary MLflow REST API to
the workspace host, so those routes are reverse-proxied to a local ``mlflow server`` (SQLite store,
artifact root on the emulated UC volume, artifacts not served by it). Artifacts then travel through
the Files API (see files.py). What the OSS server lacks is the workspace registry's artifact access:
``models:/name/version`` downloads call ``model-versions/list-artifacts`` and
``model-versions/get-signed-download-uri``, answered here from the version's source on the volume.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from emulators._process import free_port, kill_group, spawn_in_session
from emulators.databricks.files import FilesApi
from emulators.databricks.paths import PathError, WorkspaceTree
from emulators.databricks.wire import ApiError, Request, Response, json_response

log = logging.getLogger(__name__)

DEFAULT_ARTIFACT_ROOT = "dbfs:/Volumes/main/mlrelease/mlflow"
PROXIED_PREFIXES = (
    "/api/2.0/mlflow/",
    "/api/2.0/preview/mlflow/",
    "/api/2.0/mlflow-artifacts/",
    "/api/3.0/mlflow/",
    "/ajax-api/",
)
LIST_ARTIFACTS = "/api/2.0/mlflow/model-versions/list-artifacts"
SIGNED_DOWNLOAD_URI = "/api/2.0/mlflow/model-versions/get-signed-download-uri"
FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "user-agent", "content-encoding")
PROXY_TIMEOUT_SECONDS = 120


class MlflowBackend:
    """The ``mlflow server`` child process and the routes in front of it."""

    def __init__(self, state_dir: Path, tree: WorkspaceTree, files: FilesApi) -> None:
        self.state_dir = state_dir
        self.tree = tree
        self.files = files
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---- process -------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        self.port = free_port()
        mlflow = Path(sys.executable).with_name("mlflow")
        command = [
            str(mlflow if mlflow.exists() else "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.state_dir / 'mlflow.db'}",
            "--default-artifact-root",
            DEFAULT_ARTIFACT_ROOT,
            "--no-serve-artifacts",
            "--workers",
            "1",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DATABRICKS_"))}
        # The server's background job runner (huey consumers, a process each) serves GenAI features the
        # emulator has no use for, and costs seconds and memory on a 2-core machine.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        log.info("Starting %s", " ".join(command))
        self.process = spawn_in_session(command, self.state_dir / "mlflow.log", cwd=self.state_dir, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self.process.returncode} while starting; "
                    f"see {self.state_dir / 'mlflow.log'}"
                )
            try:
                status, _, _ = self._call("GET", "/health", b"", {})
                if status == 200:
                    log.info("mlflow server ready at %s (pid %s)", self.url, self.process.pid)
                    return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(
            f"mlflow server did not answer within {timeout}s; see {self.state_dir / 'mlflow.log'}"
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        kill_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            kill_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        kill_group(self.process.pid, signal.SIGKILL)  # uvicorn workers left in the group, if any

    # ---- routes --------------------------------------------------------------------------------

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PROXIED_PREFIXES)

    def dispatch(self, request: Request) -> Response:
        if request.path == LIST_ARTIFACTS:
            return self.list_model_version_artifacts(request)
        if request.path == SIGNED_DOWNLOAD_URI:
            return self.signed_download_uri(request)
        return self.proxy(request)

    def _call(self, method: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=PROXY_TIMEOUT_SECONDS)
        try:
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), response.getheader("Content-Type", "application/json")
        finally:
            connection.close()

    def proxy(self, request: Request) -> Response:
        headers = {k: v for k, v in request.headers.items() if k in FORWARDED_REQUEST_HEADERS}
        headers["Host"] = f"127.0.0.1:{self.port}"
        try:
            status, body, content_type = self._call(request.method, request.raw_path, request.body, headers)
        except OSError as e:
            raise ApiError(
                503, "TEMPORARILY_UNAVAILABLE", f"MLflow backend at {self.url} unreachable: {e}"
            ) from e
        return Response(status, b"" if request.method == "HEAD" else body, {"Content-Type": content_type})

    def _get_json(self, path: str, **query: str) -> dict[str, Any]:
        status, body, _ = self._call("GET", f"{path}?{urlencode(query)}", b"", {"Accept": "application/json"})
        try:
            value = json.loads(body or b"{}")
        except ValueError:
            value = {}
        if status != 200:
            raise ApiError(
                status,
                value.get("error_code", "INTERNAL_ERROR"),
                value.get("message", body.decode(errors="replace")),
            )
        return value

    # ---- model version artifacts (Databricks workspace registry only) ---------------------------

    def _model_version_root(self, request: Request) -> Path:
        name, version = request.param("name"), request.param("version")
        if not name or not version:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "name and version are required")
        model_version = self._get_json("/api/2.0/mlflow/model-versions/get", name=name, version=str(version))
        source = model_version["model_version"].get("source", "")
        location = self._resolve_source(source, model_version["model_version"])
        try:
            return self.tree.volume_file(location)
        except PathError as e:
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"Model version {name}/{version} has source {source!r} -> {location!r}, which is not on a "
                "UC volume; the emulator serves registry artifacts from /Volumes only",
            ) from e

    def _resolve_source(self, source: str, model_version: dict[str, Any]) -> str:
        if source.startswith("models:/"):
            model_id = source[len("models:/") :].split("/", 1)[0]
            logged = self._get_json(f"/api/2.0/mlflow/logged-models/{quote(model_id)}")
            return logged["model"]["info"]["artifact_uri"]
        if source.startswith("runs:/"):
            run_id, _, sub = source[len("runs:/") :].partition("/")
            run = self._get_json("/api/2.0/mlflow/runs/get", run_id=run_id)
            root = run["run"]["info"]["artifact_uri"].rstrip("/")
            return f"{root}/{sub}" if sub else root
        return source

    def list_model_version_artifacts(self, request: Request) -> Response:
        root = self._model_version_root(request)
        path = str(request.param("path") or "").strip("/")
        target = root.joinpath(*[p for p in path.split("/") if p]) if path else root
        if ".." in path.split("/"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"path {path!r} contains '..'")
        if target.is_file():
            return json_response(
                {"files": [{"path": path, "is_dir": False, "file_size": target.stat().st_size}]}
            )
        if not target.is_dir():
            return json_response({"files": []})
        files = []
        for entry in sorted(target.iterdir()):
            relative = entry.relative_to(root).as_posix()
            item: dict[str, Any] = {"path": relative, "is_dir": entry.is_dir()}
            if entry.is_file():
                item["file_size"] = entry.stat().st_size
            files.append(item)
        return json_response({"files": files})

    def signed_download_uri(self, request: Request) -> Response:
        root = self._model_version_root(request)
        path = str(request.param("path") or "").strip("/")
        if ".." in path.split("/"):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"path {path!r} contains '..'")
        target = root.joinpath(*path.split("/")) if path else root
        if not target.is_file():
            raise ApiError(404, "RESOURCE_DOES_NOT_EXIST", f"No artifact {path!r} in this model version")
        return json_response(
            {"signed_uri": self.files.sign(self.tree.to_workspace_path(target)), "headers": []}
        )
