"""The real process: ``python -m mlrelease.serving`` on a loopback port, over real HTTP, stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.serving.__main__ import main
from tests.conftest import free_port

from .conftest import lr_document, record, write_deploy

START_TIMEOUT_S = 60.0


@pytest.fixture
def server(tmp_path: Path):
    state_dir = tmp_path / "endpoints" / "test"
    write_deploy(state_dir, lr_document(), version="3", release_id="rel-3")
    audit_db = tmp_path / "audit.db"
    port = free_port()
    log_path = tmp_path / "service.log"
    command = [
        sys.executable,
        "-m",
        "mlrelease.serving",
        "--endpoint",
        "test",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state-dir",
        str(state_dir),
        "--audit-db",
        str(audit_db),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            assert process.poll() is None, f"server exited {process.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, (
                f"server not ready in {START_TIMEOUT_S} s:\n{log_path.read_text()}"
            )
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield process, url, SqliteAuditLog(audit_db), log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_scores_over_http_and_stops_cleanly_on_sigterm(server):
    process, url, audit, log_path = server
    response = httpx.post(f"{url}/score", json={"data": [record(), record(age=50)]}, timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "income-classifier", "version": "3"} and len(body["predictions"]) == 2
    assert httpx.post(f"{url}/admin/reload", timeout=10).json()["status"] == "unchanged"

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0, log_path.read_text()
    stored = audit.get_prediction(response.headers["x-request-id"])
    assert stored is not None and stored.status == 200 and stored.outputs == body["predictions"]
    service_log = log_path.read_text()
    assert f"request_id={body['request_id']} status=200 records=2 model_version=3" in service_log


def test_a_request_in_flight_at_sigterm_is_answered_and_logged(server):
    process, url, audit, log_path = server
    first_part_sent, release_rest = threading.Event(), threading.Event()
    body = json.dumps({"data": [record()] * 200}).encode()

    def slow_body():
        yield body[:100]
        first_part_sent.set()
        release_rest.wait(10)
        yield body[100:]

    result: dict = {}

    def send():
        headers = {"Content-Type": "application/json", "X-Request-ID": "in-flight-1"}
        result["response"] = httpx.post(f"{url}/score", content=slow_body(), headers=headers, timeout=30)

    sender = threading.Thread(target=send)
    sender.start()
    assert first_part_sent.wait(10)
    time.sleep(0.3)  # the server has the request line and the first bytes: the request is in flight
    process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    release_rest.set()
    sender.join(30)
    assert result["response"].status_code == 200, log_path.read_text()
    assert len(result["response"].json()["predictions"]) == 200
    assert process.wait(timeout=30) == 0, log_path.read_text()
    assert audit.get_prediction("in-flight-1").status == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_a_non_loopback_host_is_refused_without_allow_remote(tmp_path, capsys, host):
    args = ["--endpoint", "test", "--host", host, "--port", "1", "--state-dir", str(tmp_path), "--audit-db"]
    assert main([*args, str(tmp_path / "audit.db")]) == 2
    message = capsys.readouterr().err
    assert f"refusing to bind {host!r}" in message and "--allow-remote" in message
    assert not (tmp_path / "audit.db").exists()
