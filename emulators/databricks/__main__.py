"""Command line: ``python -m emulators.databricks start|stop|serve --home HOME``.

``start`` detaches the emulator and prints its URL (for ``make demo-cloud``), ``stop`` ends it, and
``serve`` runs it in the foreground (what ``start`` launches; also usable in a container). The token
comes from ``--token-file`` or the ``DATABRICKS_EMULATOR_TOKEN`` environment variable, never from the
command line.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from emulators._cli import command_line, log_to_stderr, run_stop
from emulators.databricks.control import DEFAULT_TOKEN, start, stop


def _token(token_file: str | None) -> str:
    if token_file:
        return Path(token_file).read_text().strip()
    return os.environ.get("DATABRICKS_EMULATOR_TOKEN", DEFAULT_TOKEN)


def main(argv: list[str] | None = None) -> int:
    parser, commands = command_line("databricks", __doc__)
    for sub in (commands["start"], commands["serve"]):
        sub.add_argument("--token-file", default=None, help="file holding the workspace token")
        sub.add_argument("--spark-master", default="local[2]")
    args = parser.parse_args(argv)

    if args.command == "start":
        emulator = start(
            args.home, port=args.port, token=_token(args.token_file), spark_master=args.spark_master
        )
        print(emulator.url)
        return 0
    if args.command == "stop":
        return run_stop(stop, args.home)

    from emulators._process import free_port
    from emulators.databricks.server import serve

    log_to_stderr()
    serve(args.home.resolve(), args.port or free_port(), _token(args.token_file), args.spark_master)
    return 0


if __name__ == "__main__":
    sys.exit(main())
