"""Command line: ``python -m emulators.azureml start|stop|serve --home HOME``.

``start`` detaches the HTTPS emulator and prints its URL and CA bundle, ``stop`` ends it (and its
scoring processes), ``serve`` runs it in the foreground (what ``start`` launches). The Blob connection
string comes from ``--blob-connection-string``, ``--blob-connection-string-file`` or the
``AZUREML_EMULATOR_BLOB_CONNECTION_STRING`` environment variable; ``start`` hands it to the server in a
0600 file, so ``ps`` never shows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from emulators._cli import command_line, log_to_stderr, run_stop
from emulators.azureml.control import start, stop
from emulators.azureml.service import (
    DEFAULT_AKS_COMPUTE,
    DEFAULT_CONTAINER,
    DEFAULT_LOCATION,
    DEFAULT_RESOURCE_GROUP,
    DEFAULT_SUBSCRIPTION,
    DEFAULT_WORKSPACE,
)


def _connection_string(args: argparse.Namespace) -> str | None:
    if getattr(args, "blob_connection_string", None):
        return args.blob_connection_string
    if getattr(args, "blob_connection_string_file", None):
        return Path(args.blob_connection_string_file).read_text().strip()
    return os.environ.get("AZUREML_EMULATOR_BLOB_CONNECTION_STRING") or None


def _retry_after(value: str) -> int | None:
    return None if value.lower() == "none" else int(value)


def main(argv: list[str] | None = None) -> int:
    parser, commands = command_line("azureml", __doc__)
    for sub in (commands["start"], commands["serve"]):
        sub.add_argument("--blob-connection-string", default=None, help="Blob endpoint of workspaceblobstore")
        sub.add_argument("--blob-connection-string-file", default=None, help="file holding it (preferred)")
        sub.add_argument(
            "--identity-header-file", type=Path, default=None, help="file holding the managed-identity header"
        )
        sub.add_argument("--blob-container", default=DEFAULT_CONTAINER)
        sub.add_argument(
            "--aks-compute", action="append", default=None, help="attached Kubernetes compute (repeatable)"
        )
        sub.add_argument("--subscription-id", default=DEFAULT_SUBSCRIPTION)
        sub.add_argument("--resource-group", default=DEFAULT_RESOURCE_GROUP)
        sub.add_argument("--workspace", default=DEFAULT_WORKSPACE)
        sub.add_argument("--location", default=DEFAULT_LOCATION)
        sub.add_argument(
            "--scoring-launcher", default=None, help="package.module:function (default scoring_host)"
        )
        sub.add_argument("--lro-retry-after-ms", type=_retry_after, default=100, help="retry hint, or 'none'")
        sub.add_argument("--liveness-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)

    if args.command == "stop":
        return run_stop(stop, args.home)
    computes = tuple(args.aks_compute or [DEFAULT_AKS_COMPUTE])
    if args.command == "start":
        emulator = start(
            args.home,
            port=args.port,
            blob_connection_string=_connection_string(args),
            aks_computes=computes,
            subscription_id=args.subscription_id,
            resource_group=args.resource_group,
            workspace=args.workspace,
            location=args.location,
            blob_container=args.blob_container,
            scoring_launcher=args.scoring_launcher,
            lro_retry_after_ms=args.lro_retry_after_ms,
            liveness_timeout_s=args.liveness_timeout,
        )
        print(emulator.url)
        print(f"CA bundle: {emulator.ca_bundle}")
        return 0

    from emulators._process import free_port
    from emulators.azureml.runtime import load_launcher
    from emulators.azureml.server import serve
    from emulators.azureml.service import WorkspaceConfig

    log_to_stderr()
    logging.getLogger("azure").setLevel(logging.WARNING)  # the Blob client logs every request at INFO
    config = WorkspaceConfig(
        subscription_id=args.subscription_id,
        resource_group=args.resource_group,
        workspace=args.workspace,
        location=args.location,
        aks_computes=computes,
        blob_connection_string=_connection_string(args),
        blob_container=args.blob_container,
        lro_retry_after_ms=args.lro_retry_after_ms,
        liveness_timeout_s=args.liveness_timeout,
        identity_header=args.identity_header_file.read_text().strip() if args.identity_header_file else None,
    )
    launcher = load_launcher(args.scoring_launcher) if args.scoring_launcher else None
    serve(args.home.resolve(), args.port or free_port(), config, launcher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
