"""Run one local scoring endpoint: ``python -m mlrelease.serving --endpoint test --port 8701 ...``.

The service binds to loopback unless told otherwise: ``/score`` has no authentication and no TLS, and
the local deployment is meant for one machine. ``--allow-remote`` exists for a reverse proxy or a lab
network, and must be asked for explicitly.

On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits for requests in flight, which
includes their prediction-log write (done in a worker thread the request awaits), then the process
exits 0. uvicorn re-raises the signal after its graceful shutdown so that the exit status says
"killed by SIGTERM"; a supervisor that asked for the stop would read that as a crash, so :func:`main`
absorbs the re-raised signal and returns 0 once shutdown has completed.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
from pathlib import Path

import uvicorn

from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.serving.app import create_app

log = logging.getLogger("mlrelease.serving")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mlrelease.serving", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--endpoint", required=True, help="endpoint name, e.g. test or prod (logged, recorded)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="where desired.json / serving.json live"
    )
    parser.add_argument(
        "--audit-db", type=Path, required=True, help="SQLite audit store for the prediction log"
    )
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding a non-loopback address (the service has no authentication or TLS)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not is_loopback_host(args.host) and not args.allow_remote:
        print(
            f"refusing to bind {args.host!r}: it is not a loopback address, and this scoring service has no "
            "authentication or TLS, so anyone who can reach the port could score requests (and fill the "
            "prediction log). Bind 127.0.0.1 (and put a proxy in front), or pass --allow-remote if exposing "
            "it is intended.",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    args.state_dir.mkdir(parents=True, exist_ok=True)
    audit = SqliteAuditLog(args.audit_db)
    # Open (and if needed create) the prediction log now: an unusable audit store should stop the
    # start-up with its path in the message, not turn every request into a 503.
    audit.predictions(limit=1)

    app = create_app(args.endpoint, args.state_dir, audit)
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, server_header=False)
    )

    def stop(signum: int, _frame: object) -> None:
        # Before uvicorn installs its own handlers (start-up) this asks it to stop as soon as it can;
        # after its graceful shutdown it receives uvicorn's re-raised signal, which is then harmless.
        server.should_exit = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "Starting endpoint %s on http://%s:%s (state %s, prediction log %s)",
        args.endpoint,
        args.host,
        args.port,
        args.state_dir,
        args.audit_db,
    )
    server.run()
    if not server.started:
        log.error(
            "Endpoint %s did not start on %s:%s (see the errors above)", args.endpoint, args.host, args.port
        )
        return 1
    log.info("Endpoint %s stopped", args.endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
