"""Process plumbing the emulators share: ports, pids, detached starts and stops, secret files.

Each emulator outlives the process that starts it (``make demo-cloud`` starts it, Airflow tasks use it),
so its ``start`` launches ``python -m emulators.<name> serve`` in a session of its own, waits until it
answers, and ``running``/``stop`` find it again through its ``state.json`` (see :mod:`emulators._state`).
The same few steps, with the same pitfalls (zombies, process groups, a child that never comes up, a
state file that outlived its server), are done here once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from emulators._state import clear_state, read_jsonl, read_state
from mlrelease.processes import alive as pid_running

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.1
REAP_TIMEOUT_SECONDS = 10.0
LOG_TAIL_CHARS = 4000

T = TypeVar("T")

# Popen objects of the emulators this process started, so that stopping one reaps it (no zombie, no
# ResourceWarning) and a child that already exited counts as dead before anyone has waited for it.
_CHILDREN: dict[int, subprocess.Popen] = {}


def free_port() -> int:
    """A loopback port nothing listens on now, for a server or child that is told its port up front."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def alive(pid: int | None) -> bool:
    """True while ``pid`` runs; False for no pid, and for a child of ours that exited but is not reaped.

    A state file may name no pid, or a pid this process started and has not waited for yet, which
    ``kill(pid, 0)`` alone would still report as running.
    """
    if not pid:
        return False
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    return pid_running(pid)


def kill_group(pid: int | None, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``pid`` leads, if any: a detached emulator leads its own, and
    its children (Azurite, the mlflow server, Spark runs) are in it unless they made their own."""
    if not pid:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def write_secret(path: Path, value: str) -> None:
    """Write ``value`` to a 0600 file: secrets reach a detached server through a file, never through its
    command line, where ``ps`` would show them to every user."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(value)
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that existed


def spawn_in_session(
    command: Sequence[str], log_path: Path, cwd: Path = REPO_ROOT, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start ``command`` in a new session with stdin closed and stdout and stderr appended to ``log_path``.

    Its own session keeps it alive when the starting terminal or test ends, keeps Ctrl-C in that
    terminal from reaching it, and makes its pid the group id with which it and its children are killed.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            list(command),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@dataclass(frozen=True)
class DetachedServer:
    """How to find, start and stop one emulator's server, given the home directory it serves.

    ``health(state)`` asks the server that ``state.json`` describes for its health answer (None if it
    does not answer); ``kill_leftovers(state)`` kills what the server stops itself on SIGTERM (its
    children) when it could not: it had died already, or had to be killed after ``stop_timeout``.
    """

    what: str  # "Azurite emulator": how errors name it
    state_dir_for: Callable[[Path], Path]
    health: Callable[[dict[str, Any]], dict[str, Any] | None]
    stop_timeout: float
    kill_leftovers: Callable[[dict[str, Any]], None] | None = None

    def running_state(self, home: Path, pid: int | None = None) -> dict[str, Any] | None:
        """The state of the emulator of ``home`` if its pid runs and answers ``health`` with that same pid
        (and, when given, that pid is ``pid``: the server just started, not an older one).

        A state file can outlive its server (SIGKILL, a reboot): only both checks together keep a reused
        pid, or another server on a reused port, from being taken for the emulator.
        """
        state = read_state(self.state_dir_for(home))
        if not state or not alive(state.get("pid")) or (pid is not None and state.get("pid") != pid):
            return None
        answer = self.health(state)
        if not answer or answer.get("pid") != state["pid"]:
            return None
        return state

    def find(self, home: Path, handle: Callable[[Path, dict[str, Any]], T]) -> T | None:
        """``handle(home, state)`` for the emulator running for ``home``, if one is."""
        state = self.running_state(home)
        return None if state is None else handle(home, state)

    def start(
        self,
        home: Path,
        command: Sequence[str],
        port: int,
        timeout: float,
        handle: Callable[[Path, dict[str, Any]], T],
    ) -> T:
        """Start ``command`` (the server for ``home`` on ``port``) detached, logging to ``emulator.log``
        in its state directory, and return ``handle(home, state)`` once it answers.

        If the server exits or does not answer within ``timeout`` seconds it is stopped and a
        RuntimeError says why, with the end of its log: a start that fails leaves no process behind and
        needs no second look at the machine to be understood.
        """
        state_dir = self.state_dir_for(home)
        clear_state(state_dir)  # a stale one names a dead server, or a live one whose answers would mislead
        log_path = state_dir / "emulator.log"
        process = spawn_in_session(command, log_path)
        _CHILDREN[process.pid] = process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            state = self.running_state(home, process.pid)
            if state is not None:
                return handle(home, state)
            time.sleep(POLL_SECONDS)
        if process.poll() is None:
            self._stop(process.pid, state_dir)
        tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log_path.exists() else ""
        reason = (
            f"exited with code {process.returncode}" if process.returncode is not None else "did not answer"
        )
        raise RuntimeError(
            f"{self.what} for {home} {reason} within {timeout:.0f}s (port {port}); "
            f"log {log_path} ends with:\n{tail}"
        )

    def stop(self, home: Path) -> bool:
        """Stop the emulator of ``home`` and forget it (remove its ``state.json``); True if it was running."""
        state_dir = self.state_dir_for(Path(home).resolve())
        state = read_state(state_dir) or {}
        was_running = alive(state.get("pid"))
        if was_running:
            self._stop(state["pid"], state_dir)
        elif state and self.kill_leftovers is not None:
            self.kill_leftovers(state)
        clear_state(state_dir)
        return was_running

    def _stop(self, pid: int, state_dir: Path) -> None:
        """SIGTERM, so that the server stops its children and withdraws its state file; if it still runs
        after ``stop_timeout``, SIGKILL its whole group and kill what it left behind. Reap a child of ours."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(POLL_SECONDS)
        if alive(pid):
            kill_group(pid, signal.SIGKILL)
            if self.kill_leftovers is not None:
                self.kill_leftovers(read_state(state_dir) or {})
        child = _CHILDREN.pop(pid, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=REAP_TIMEOUT_SECONDS)


class EmulatorHandle:
    """What every handle on a running emulator offers besides its own fields and clients' settings.

    A handle is a dataclass with a ``home`` field whose class sets ``_server``; this base declares no
    dataclass fields, so each handle keeps its own constructor.
    """

    _server: ClassVar[DetachedServer]
    home: Path

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def state_dir(self) -> Path:
        return self._server.state_dir_for(self.home)

    def requests(self) -> list[dict[str, Any]]:
        """Every request the emulator logged so far (``requests.jsonl``), oldest first."""
        return read_jsonl(self.state_dir / "requests.jsonl")

    def stop(self) -> bool:
        """Stop the emulator; True if it was running."""
        return self._server.stop(self.home)
