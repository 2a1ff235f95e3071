"""Start, find and stop a detached emulator for an ``MLRELEASE_HOME``-like home directory.

The emulator outlives the process that starts it (``make demo-cloud`` starts it, Airflow tasks use it),
so :func:`start` launches ``python -m emulators.databricks serve`` in its own session, waits until it
answers, and finds it again through ``HOME/emulators/databricks/state.json``. The workspace token
travels in a 0600 file, never on a command line where ``ps`` would show it.
"""

from __future__ import annotations

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

from emulators.databricks.mlflow_backend import free_port
from emulators.databricks.paths import WorkspaceTree
from emulators.databricks.server import state_dir_for

DEFAULT_TOKEN = "dapi-emulator-token"
REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0

# Popen objects of emulators this process started, so that stop() reaps them (no zombie, no warning).
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass
class Emulator:
    """A handle on a running emulator."""

    home: Path
    url: str
    token: str
    pid: int
    mlflow_pid: int | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def state_dir(self) -> Path:
        return state_dir_for(self.home)

    def requests(self) -> list[dict[str, Any]]:
        path = self.state_dir / "requests.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def runs(self) -> list[dict[str, Any]]:
        return _control(self.url, "GET", "/emulator/runs")["runs"]

    def set_faults(self, **faults: Any) -> None:
        _control(self.url, "POST", "/emulator/faults", faults)

    def faults(self) -> dict[str, Any]:
        return _control(self.url, "GET", "/emulator/faults")

    def volume_path(self, path: str) -> Path:
        """Where a ``/Volumes/...`` (or ``dbfs:/Volumes/...``, ``/Workspace/...``) path lives on disk."""
        return WorkspaceTree(self.state_dir).to_disk(path)

    def stop(self) -> bool:
        return stop(self.home)


def _control(
    url: str, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"Emulator control {method} {path} failed: {e.code} {e.read().decode()}") from e


def _health(url: str) -> dict[str, Any] | None:
    try:
        return _control(url, "GET", "/emulator/health", timeout=3)
    except (OSError, RuntimeError, ValueError):
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


def running(home: Path) -> Emulator | None:
    """The healthy emulator started earlier under ``home``, if any."""
    state_dir = state_dir_for(home)
    state = _read_state(state_dir)
    if not state or not _alive(state.get("pid")):
        return None
    health = _health(state["url"])
    if not health or health.get("pid") != state["pid"]:
        return None
    token_file = state_dir / "token"
    token = token_file.read_text().strip() if token_file.exists() else DEFAULT_TOKEN
    return Emulator(home, state["url"], token, state["pid"], state.get("mlflow_pid"), state)


def _write_token(path: Path, token: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    os.chmod(path, 0o600)


def start(
    home: Path,
    port: int | None = None,
    token: str = DEFAULT_TOKEN,
    spark_master: str = "local[2]",
    timeout: float = START_TIMEOUT_SECONDS,
) -> Emulator:
    """Start a detached emulator for ``home`` (or return the one already running there)."""
    home = Path(home).resolve()
    existing = running(home)
    if existing is not None:
        if existing.token != token:
            raise RuntimeError(
                f"An emulator for {home} is already running at {existing.url} with another token; "
                f"stop it first (python -m emulators.databricks stop --home {home})"
            )
        return existing
    state_dir = state_dir_for(home)
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").unlink(missing_ok=True)
    token_file = state_dir / "token"
    _write_token(token_file, token)
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "emulators.databricks",
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--spark-master",
        spark_master,
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
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        health = _health(url)
        state = _read_state(state_dir)
        if health and health.get("pid") == process.pid and state and state.get("pid") == process.pid:
            return Emulator(home, url, token, process.pid, health.get("mlflow_pid"), state)
        time.sleep(0.25)
    # Did not come up: leave nothing behind, and say why.
    if process.poll() is None:
        _stop_pid(process.pid, _read_state(state_dir) or {})
    tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    reason = f"exited with code {process.returncode}" if process.returncode is not None else "did not answer"
    raise RuntimeError(
        f"Databricks emulator for {home} {reason} within {timeout:.0f}s (port {port}); "
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
        _stop_pid(pid, state)
    else:
        # Crashed earlier: its mlflow server may still be around.
        _kill_group(state.get("mlflow_pid"), signal.SIGKILL)
    (state_dir / "state.json").unlink(missing_ok=True)
    return was_running


def _stop_pid(pid: int, state: dict[str, Any]) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        # Did not shut down cleanly: kill it, its mlflow server and any run it started.
        _kill_group(pid, signal.SIGKILL)
        _kill_group(state.get("mlflow_pid"), signal.SIGKILL)
        runs_dir = Path(state.get("state_dir", "")) / "runs"
        for run_file in runs_dir.glob("*/run.json"):
            try:
                run = json.loads(run_file.read_text())
            except (OSError, ValueError):
                continue
            if run.get("life_cycle_state") not in ("TERMINATED", "INTERNAL_ERROR", "SKIPPED"):
                _kill_group(run.get("pid"), signal.SIGKILL)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _kill_group(pid: int | None, sig: signal.Signals) -> None:
    if not pid:
        return
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
