"""The process and state plumbing the three emulators share (``emulators._process``, ``emulators._state``).

The emulator tests start and stop real emulators, which stop cleanly; these cover the paths they do not
reach: a server that ignores SIGTERM, one that crashed and left its state behind, one that never comes
up, and a request log read while a line is still being written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from emulators._process import DetachedServer, alive
from emulators._state import publish_state, read_jsonl, read_state, withdraw_state

NO_SUCH_PID = 2**22 + 12345  # above PID_MAX_LIMIT: never a process on Linux
IGNORES_SIGTERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def server(leftovers: list[dict[str, Any]], health: Any = None) -> DetachedServer:
    return DetachedServer(
        "Test emulator",
        lambda home: Path(home) / "state",
        health or (lambda state: None),
        1.0,
        leftovers.append,
    )


def test_read_jsonl_leaves_a_line_still_being_written(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    assert read_jsonl(log) == []
    log.write_text('{"n": 1}\n\n{"n": 2}\n{"n": ')
    assert read_jsonl(log) == [{"n": 1}, {"n": 2}]


def test_withdraw_state_removes_only_this_process_state(tmp_path: Path) -> None:
    publish_state(tmp_path, {"pid": os.getpid() + 1})
    withdraw_state(tmp_path)
    assert read_state(tmp_path) == {"pid": os.getpid() + 1}  # a later server's: kept
    publish_state(tmp_path, {"pid": os.getpid()})
    withdraw_state(tmp_path)
    assert read_state(tmp_path) is None
    assert not list(tmp_path.iterdir())


def test_stop_kills_a_server_that_ignores_sigterm_and_what_it_left(tmp_path: Path) -> None:
    leftovers: list[dict[str, Any]] = []
    emulator = server(leftovers, health=lambda state: {"pid": state["pid"]})
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", IGNORES_SIGTERM], start_new_session=True, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == b"up\n"  # SIGTERM is ignored now
        publish_state(state_dir, {"pid": process.pid, "child": 42})
        assert emulator.running_state(tmp_path) == {"pid": process.pid, "child": 42}
        assert emulator.stop(tmp_path) is True
        assert process.wait(timeout=5) == -signal.SIGKILL
        assert leftovers == [{"pid": process.pid, "child": 42}]
        assert read_state(state_dir) is None
        assert emulator.running_state(tmp_path) is None
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_a_server_that_never_answers_is_killed_and_reported(tmp_path: Path) -> None:
    leftovers: list[dict[str, Any]] = []
    emulator = server(leftovers)
    with pytest.raises(RuntimeError) as failure:
        emulator.start(tmp_path, [sys.executable, "-c", IGNORES_SIGTERM], 1234, 3, lambda home, state: state)
    assert "Test emulator for" in str(failure.value)
    assert str(failure.value).endswith("ends with:\nup\n")
    assert leftovers == [{}]  # it ignored SIGTERM, so it was killed, and its leftovers looked for


def test_stop_after_a_crash_kills_the_leftovers_and_forgets_the_state(tmp_path: Path) -> None:
    leftovers: list[dict[str, Any]] = []
    emulator = server(leftovers)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    assert emulator.stop(tmp_path) is False  # nothing recorded: nothing to kill
    assert leftovers == []
    dead = {"pid": NO_SUCH_PID, "child": 7}
    publish_state(state_dir, dead)
    assert emulator.running_state(tmp_path) is None
    assert emulator.stop(tmp_path) is False
    assert leftovers == [dead]
    assert read_state(state_dir) is None


def test_a_server_that_exits_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    emulator = server([])
    command = [sys.executable, "-c", "import sys; print('cannot bind', flush=True); sys.exit(3)"]
    with pytest.raises(RuntimeError) as failure:
        emulator.start(tmp_path, command, 4321, 30, lambda home, state: state)
    message = str(failure.value)
    assert message.startswith(f"Test emulator for {tmp_path} exited with code 3 within 30s (port 4321)")
    assert message.endswith("cannot bind\n")


def test_alive_is_false_for_no_pid_and_a_dead_one() -> None:
    assert alive(os.getpid())
    assert not alive(None)
    assert not alive(0)
    assert not alive(NO_SUCH_PID)
