"""``state.json``: how a detached emulator is found again, by whoever started it or by a later process.

The server writes it once it answers and removes it when it stops; ``running``, ``start`` and ``stop``
read it (see :mod:`emulators._process`). It is written through a rename, so a reader never sees half of
it, and a reader takes a missing or unreadable file for "no emulator".
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is missing or unreadable: the emulators' bookkeeping files
    are written by processes that may have died, and a reader can only treat those as absent."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[Any]:
    """The complete lines of a JSON-lines log (``requests.jsonl``), oldest first; none if it is missing.

    The emulator may be appending a line while a test reads: a last line without its newline is not
    complete yet, and is left for the next read.
    """
    try:
        lines = path.read_text().split("\n")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines[:-1] if line.strip()]


def read_state(state_dir: Path) -> dict[str, Any] | None:
    """What the server of ``state_dir`` wrote about itself (pid, url or port, children), if anything."""
    return read_json(state_dir / STATE_FILE) or None


def clear_state(state_dir: Path) -> None:
    """Forget the server of ``state_dir``: before starting another, or once it was stopped."""
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def publish_state(state_dir: Path, state: dict[str, Any]) -> None:
    """Write ``state.json`` through a temporary file and a rename, so no reader sees a partial one."""
    state_file = state_dir / STATE_FILE
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, state_file)


def withdraw_state(state_dir: Path) -> None:
    """Remove ``state.json`` on the way out, unless another server (a later start) has replaced it."""
    state_file = state_dir / STATE_FILE
    state = read_json(state_file)
    if isinstance(state, dict) and state.get("pid") == os.getpid():
        try:
            state_file.unlink(missing_ok=True)
        except OSError as e:
            log.warning("Could not remove %s: %s", state_file, e)
