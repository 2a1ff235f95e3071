"""Start, find and stop a detached Azurite (behind its logging proxy) for a home directory.

The emulator outlives the process that starts it (``make demo-cloud`` starts it, Airflow tasks and
scoring services use it), so :func:`start` installs the pinned Azurite if needed, launches
``python -m emulators.azurite serve`` in its own session, waits until it answers, and finds it again
through ``HOME/emulators/azurite/state.json``. Blobs persist in ``HOME/emulators/azurite/data`` across
restarts. The account key is Azurite's public development key, good for the emulator only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators._process import DetachedServer, EmulatorHandle, alive, free_port
from emulators.azurite.install import ensure_installed, node_executable
from emulators.azurite.server import ACCOUNT_KEY, ACCOUNT_NAME, HEALTH_ROUTE, state_dir_for

START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0


def connection_string(blob_endpoint: str) -> str:
    """A storage connection string for the emulator's account at ``blob_endpoint``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={blob_endpoint};"
    )


def _health(state: dict[str, Any]) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{state['port']}{HEALTH_ROUTE}", timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _kill_leftovers(state: dict[str, Any]) -> None:
    """Azurite shares the proxy's process group, but a proxy that died alone leaves it running."""
    if alive(state.get("azurite_pid")):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(state["azurite_pid"], signal.SIGKILL)


SERVER = DetachedServer("Azurite emulator", state_dir_for, _health, STOP_TIMEOUT_SECONDS, _kill_leftovers)


@dataclass
class Azurite(EmulatorHandle):
    """A handle on a running emulator: what clients need, and where its files are."""

    _server = SERVER

    home: Path
    port: int
    pid: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def account_name(self) -> str:
        return ACCOUNT_NAME

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.blob_endpoint)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def requests_path(self) -> Path:
        return self.state_dir / "requests.jsonl"


def _handle(home: Path, state: dict[str, Any]) -> Azurite:
    return Azurite(home, state["port"], state["pid"], state)


def running(home: Path) -> Azurite | None:
    """The healthy emulator started earlier under ``home``, if any."""
    return SERVER.find(Path(home).resolve(), _handle)


def start(home: Path, port: int | None = None, timeout: float = START_TIMEOUT_SECONDS) -> Azurite:
    """Start a detached Azurite for ``home`` (or return the one already running there).

    ``port`` is where clients connect (the proxy); a free one when None. The first call on a machine
    installs Azurite from npm (see :mod:`emulators.azurite.install`), which takes a few seconds more.
    """
    home = Path(home).resolve()
    existing = running(home)
    if existing is not None:
        if port is not None and existing.port != port:
            raise RuntimeError(
                f"Azurite for {home} is already running on port {existing.port}, not {port}; stop it first "
                f"(python -m emulators.azurite stop --home {home})"
            )
        return existing
    script = ensure_installed()
    node = node_executable()
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "emulators.azurite",
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        "--node",
        node,
        "--script",
        str(script),
    ]
    return SERVER.start(home, command, port, timeout, _handle)


def stop(home: Path) -> bool:
    """Stop the emulator started under ``home``; True if one was running."""
    return SERVER.stop(home)
