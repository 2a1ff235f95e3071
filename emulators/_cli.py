"""The command line every emulator shares: ``python -m emulators.<name> start|stop|serve --home HOME``.

``start`` and ``stop`` are what people and Makefiles type, ``serve`` is what ``start`` launches; keeping
the three commands and their common flags in one place keeps the emulators interchangeable to drive.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

COMMANDS = ("start", "stop", "serve")


def command_line(
    name: str, description: str | None
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The parser and its ``start``/``stop``/``serve`` subparsers, with ``--home`` on all three and
    ``--port`` on ``start`` and ``serve``; the emulator adds its own options to the subparsers."""
    parser = argparse.ArgumentParser(prog=f"python -m emulators.{name}", description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    subparsers = {}
    for command in COMMANDS:
        sub = commands.add_parser(command)
        sub.add_argument("--home", type=Path, required=True, help=f"state goes to HOME/emulators/{name}")
        if command != "stop":
            sub.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
        subparsers[command] = sub
    return parser, subparsers


def run_stop(stop: Callable[[Path], bool], home: Path) -> int:
    """``stop``: end the emulator of ``home`` and say whether one was running (exit 0 either way)."""
    print("stopped" if stop(home) else "not running")
    return 0


def log_to_stderr() -> None:
    """``serve``'s logging: INFO and up on stderr, which ``start`` sends to the emulator's log file."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
