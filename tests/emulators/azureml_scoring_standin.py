"""A stand-in for Azure ML's inference server, so the emulator tests need no scoring venv.

``start_scoring_process`` has the signature of ``emulators.azureml.scoring_host.start_scoring_process``
and is injected into the emulator (``scoring_launcher=``): it starts ``python -m
tests.emulators.azureml_scoring_standin``, which imports the code asset's scoring script, calls its
``init()`` with ``AZUREML_MODEL_DIR`` set, and serves the routes the real server serves (``GET /``
liveness, ``POST /score`` calling ``run(raw_body)``, ``GET /swagger.json``). An ``init()`` that raises
ends the process, as it ends the real server's worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from emulators._process import spawn_in_session

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_scoring_process(
    code_dir: Path,
    scoring_script: str,
    model_dir: Path,
    environment_variables: dict[str, str],
    port: int,
    log_path: Path,
) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    environment.update(environment_variables)
    environment["AZUREML_MODEL_DIR"] = str(model_dir)
    environment["PYTHONPATH"] = str(REPO_ROOT)
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [
        sys.executable,
        "-m",
        "tests.emulators.azureml_scoring_standin",
        "--script",
        str(Path(code_dir) / scoring_script),
        "--port",
        str(port),
    ]
    return spawn_in_session(command, log_path, cwd=code_dir, env=environment)


def _serve(script: Path, port: int) -> None:
    spec = importlib.util.spec_from_file_location("score", script)
    assert spec and spec.loader, f"cannot import {script}"
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(script.parent))
    spec.loader.exec_module(module)
    print("Invoking user's init function", flush=True)
    module.init()
    print("Users's init has completed successfully", flush=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ms-request-id", self.headers.get("x-request-id", "standin"))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/":
                self._answer(200, b"Healthy", "text/plain")
            elif self.path == "/swagger.json":
                self._answer(200, json.dumps({"swagger": "2.0", "info": {"title": "standin"}}).encode())
            else:
                self._answer(404, b'{"message": "not found"}')

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            try:
                result = module.run(raw)
            except Exception as e:  # the inference server answers 500 with the message
                print(f"run() failed: {e!r}", flush=True)
                self._answer(500, json.dumps({"message": str(e)}).encode())
                return
            echo = {"x-request-id": self.headers.get("x-request-id")}
            print(f"scored request {echo}", flush=True)
            self._answer(200, json.dumps(result).encode())

        def log_message(self, format: str, *args: object) -> None:
            print(format % args, flush=True)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"Listening at: http://127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    arguments = parser.parse_args()
    _serve(arguments.script, arguments.port)
