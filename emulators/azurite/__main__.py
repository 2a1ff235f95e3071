"""Command line: ``python -m emulators.azurite start|stop|serve --home HOME``.

``start`` installs Azurite if needed, detaches the emulator and prints its blob endpoint (or, with
``--connection-string``, the emulator's connection string, whose key is Azurite's public development
key); ``stop`` ends it; ``serve`` runs it in the foreground (what ``start`` launches).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from emulators.azurite.control import start, stop
from emulators.azurite.install import AZURITE_VERSION, ensure_installed, node_executable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators.azurite", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "stop", "serve"):
        sub = commands.add_parser(name)
        sub.add_argument("--home", type=Path, required=True, help="state goes to HOME/emulators/azurite")
        if name != "stop":
            sub.add_argument("--port", type=int, default=None, help="loopback port (default: a free one)")
        if name == "start":
            sub.add_argument("--connection-string", action="store_true", help="print the connection string")
        if name == "serve":
            sub.add_argument("--node", default=None, help="the node executable (default: from PATH)")
            sub.add_argument("--script", type=Path, default=None, help="Azurite's blob main.js")
    args = parser.parse_args(argv)

    if args.command == "start":
        emulator = start(args.home, port=args.port)
        print(emulator.connection_string if args.connection_string else emulator.blob_endpoint)
        return 0
    if args.command == "stop":
        print("stopped" if stop(args.home) else "not running")
        return 0

    from emulators.azurite.server import free_port, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    serve(
        args.home.resolve(),
        args.port or free_port(),
        args.node or node_executable(),
        args.script or ensure_installed(),
        AZURITE_VERSION,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
