"""The ``mlrelease`` command: read what the pipeline recorded.

``mlrelease summary`` prints the summary of the latest training run (or of one DAG run with
``--dag-run-id``): the candidates table, the winner, the gate decision and the registered version.
"""

from __future__ import annotations

import argparse
import sys

from mlrelease.backends.base import redact_uri
from mlrelease.settings import load_settings


def _summary(args: argparse.Namespace) -> int:
    from mlrelease.backends import get_backends
    from mlrelease.reporting import build_summary

    settings = load_settings()
    backends = get_backends(settings)
    experiment_id = backends.tracker.experiment_id(settings.experiment_name)
    key = f"{args.dag_id}/{args.dag_run_id}" if args.dag_run_id else None
    parent = backends.tracker.find_parent_run(experiment_id, key)
    if parent is None:
        what = f"DAG run {args.dag_id}/{args.dag_run_id}" if args.dag_run_id else "any DAG run"
        print(
            f"No training run found for {what} in {redact_uri(settings.tracking_uri)}; trigger the "
            f"{args.dag_id} DAG first (make demo).",
            file=sys.stderr,
        )
        return 1
    print(build_summary(backends, parent.run_id, settings.model_name))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlrelease", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="summary of the latest (or a given) training run")
    summary.add_argument("--dag-id", default="income_release")
    summary.add_argument("--dag-run-id", help="Airflow run_id; default: the latest run")
    summary.set_defaults(handler=_summary)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
