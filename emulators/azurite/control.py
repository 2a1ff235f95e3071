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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators.azurite.install import ensure_installed, node_executable
from emulators.azurite.server import ACCOUNT_KEY, ACCOUNT_NAME, HEALTH_ROUTE, free_port, state_dir_for

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 20.0

# Popen objects of emulators this process started, so that stop() reaps them (no zombie, no warning).
_CHILDREN: dict[int, subprocess.Popen] = {}


def connection_string(blob_endpoint: str) -> str:
    """A storage connection string for the emulator's account at ``blob_endpoint``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
        f"BlobEndpoint={blob_endpoint};"
    )


@dataclass
class Azurite:
    """A handle on a running emulator: what clients need, and where its files are."""

    home: Path
    port: int
    pid: int
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

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
    def state_dir(self) -> Path:
        return state_dir_for(self.home)

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "data"

    @property
    def requests_path(self) -> Path:
        return self.state_dir / "requests.jsonl"

    def requests(self) -> list[dict[str, Any]]:
        """Every request the proxy forwarded so far, oldest first."""
        if not self.requests_path.exists():
            return []
        return [json.loads(line) for line in self.requests_path.read_text().splitlines() if line.strip()]

    def stop(self) -> bool:
        return stop(self.home)


def _health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{HEALTH_ROUTE}", timeout=3) as response:
            return json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def running(home: Path) -> Azurite | None:
    """The healthy emulator started earlier under ``home``, if any."""
    home = Path(home).resolve()
    state = _read_state(state_dir_for(home))
    if not state or not _alive(state.get("pid")):
        return None
    health = _health(state["port"])
    if not health or health.get("pid") != state["pid"]:
        return None
    return Azurite(home, state["port"], state["pid"], state)


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
    state_dir = state_dir_for(home)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
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
    log_path = state_dir / "emulator.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _CHILDREN[process.pid] = process
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        state = _read_state(state_dir)
        if state and state.get("pid") == process.pid:
            health = _health(port)
            if health and health.get("pid") == process.pid:
                return Azurite(home, port, process.pid, state)
        time.sleep(0.1)
    if process.poll() is None:
        _stop_pid(process.pid)
    tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    reason = f"exited with code {process.returncode}" if process.returncode is not None else "did not answer"
    raise RuntimeError(
        f"Azurite emulator for {home} {reason} within {timeout:.0f}s (port {port}); "
        f"log {log_path} ends with:\n{tail}"
    )


def stop(home: Path) -> bool:
    """Stop the emulator started under ``home``; True if one was running."""
    state_dir = state_dir_for(Path(home).resolve())
    state = _read_state(state_dir)
    if not state:
        return False
    pid = state.get("pid")
    was_running = _alive(pid)
    if was_running:
        _stop_pid(pid)
    if _alive(state.get("azurite_pid")):  # the proxy died without taking Azurite down
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(state["azurite_pid"], signal.SIGKILL)
    (state_dir / "state.json").unlink(missing_ok=True)
    return was_running


def _stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)  # the proxy and Azurite share its process group
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=10)
