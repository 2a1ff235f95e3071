"""Command line: ``python -m emulators.azurite start|stop|serve --home HOME``.

``start`` installs Azurite if needed, detaches the emulator and prints its blob endpoint (or, with
``--connection-string``, the emulator's connection string, whose key is Azurite's public development
key); ``stop`` ends it; ``serve`` runs it in the foreground (what ``start`` launches).
"""

from __future__ import annotations

import sys
from pathlib import Path

from emulators._cli import command_line, log_to_stderr, run_stop
from emulators.azurite.control import start, stop
from emulators.azurite.install import AZURITE_VERSION, ensure_installed, node_executable


def main(argv: list[str] | None = None) -> int:
    parser, commands = command_line("azurite", __doc__)
    commands["start"].add_argument(
        "--connection-string", action="store_true", help="print the connection string"
    )
    commands["serve"].add_argument("--node", default=None, help="the node executable (default: from PATH)")
    commands["serve"].add_argument("--script", type=Path, default=None, help="Azurite's blob main.js")
    args = parser.parse_args(argv)

    if args.command == "start":
        emulator = start(args.home, port=args.port)
        print(emulator.connection_string if args.connection_string else emulator.blob_endpoint)
        return 0
    if args.command == "stop":
        return run_stop(stop, args.home)

    from emulators._process import free_port
    from emulators.azurite.server import serve

    log_to_stderr()
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
