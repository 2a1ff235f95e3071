"""The Azurite launcher and its logging proxy, driven by the real azure-storage-blob client.

One emulator serves the module (Azurite starts in about a second; the npm install is cached outside the
repository after the first run). The last test starts a second one through the command line to check
the detached start/stop and that blobs survive a restart.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from emulators.azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, running, start, stop

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Azurite needs Node.js on PATH")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    home = tmp_path_factory.mktemp("azurite-home")
    emulator = start(home)
    yield emulator
    emulator.stop()


def test_start_writes_state_and_is_found_again(azurite: Azurite) -> None:
    state = json.loads((azurite.state_dir / "state.json").read_text())
    assert state["pid"] == azurite.pid and state["port"] == azurite.port
    assert state["azurite_version"] and state["data_dir"] == str(azurite.data_dir)
    again = running(azurite.home)
    assert again is not None and again.pid == azurite.pid
    assert start(azurite.home).pid == azurite.pid  # a second start reuses the running one
    assert azurite.blob_endpoint == f"http://127.0.0.1:{azurite.port}/{ACCOUNT_NAME}"
    assert f"BlobEndpoint={azurite.blob_endpoint};" in azurite.connection_string
    assert (
        requests.get(f"http://127.0.0.1:{azurite.port}/emulator/health", timeout=5).json()["pid"]
        == azurite.pid
    )


def test_blob_round_trip_is_logged_without_content_or_secrets(azurite: Azurite) -> None:
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("emulator-test")
    container.create_container()
    content = b"the quick brown fox " * 50
    container.upload_blob("dir/fox.txt", content, overwrite=False)
    assert container.download_blob("dir/fox.txt").readall() == content

    # A SAS read: the signature travels in the query string.
    sas = generate_blob_sas(
        ACCOUNT_NAME,
        "emulator-test",
        "dir/fox.txt",
        account_key=ACCOUNT_KEY,
        permission=BlobSasPermissions(read=True),
        expiry=datetime.now(UTC) + timedelta(minutes=5),
    )
    response = requests.get(f"{azurite.blob_endpoint}/emulator-test/dir/fox.txt?{sas}", timeout=10)
    assert response.status_code == 200 and response.content == content
    signature = dict(part.split("=", 1) for part in sas.split("&"))["sig"]

    entries = azurite.requests()
    upload = next(e for e in entries if e["method"] == "PUT" and e["path"].endswith("/dir/fox.txt"))
    assert upload["path"] == f"/{ACCOUNT_NAME}/emulator-test/dir/fox.txt"
    assert upload["headers"]["x-ms-blob-type"] == "BlockBlob" and upload["headers"]["if-none-match"] == "*"
    assert upload["body"] is None and upload["body_bytes"] == len(content)
    assert upload["body_sha256"] == hashlib.sha256(content).hexdigest() and upload["status"] == 201
    sas_read = [e for e in entries if e["method"] == "GET" and e["query"].get("sig")]
    assert sas_read and sas_read[-1]["query"]["sig"] == "***" and sas_read[-1]["status"] == 200
    for entry in entries:
        assert {"method", "path", "query", "body", "status"} <= set(entry)

    text = azurite.requests_path.read_text()
    assert "quick brown fox" not in text
    assert ACCOUNT_KEY not in text and signature not in text and signature.replace("%2B", "+") not in text
    assert "authorization" not in text.lower() and "SharedKey" not in text


def test_command_line_start_stop_and_data_survives_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = subprocess.run(
        [sys.executable, "-m", "emulators.azurite", "start", "--home", str(home), "--connection-string"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    emulator = running(home)
    assert emulator is not None and started.stdout.strip() == emulator.connection_string
    try:
        service = BlobServiceClient.from_connection_string(emulator.connection_string)
        service.get_container_client("kept").create_container()
        service.get_blob_client("kept", "a.json").upload_blob(b"{}")
        assert stop(home) is True and running(home) is None
        assert emulator.data_dir.is_dir()

        restarted = start(home)
        again = BlobServiceClient.from_connection_string(restarted.connection_string)
        assert again.get_blob_client("kept", "a.json").download_blob().readall() == b"{}"
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "emulators.azurite", "stop", "--home", str(home)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stopped.stdout.strip() == "stopped" and running(home) is None
    assert not (home / "emulators" / "azurite" / "state.json").exists()
