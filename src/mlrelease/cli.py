"""The ``mlrelease`` command: read what the pipeline recorded.

``mlrelease summary`` prints the summary of the latest training run (or of one DAG run with
``--dag-run-id``): the candidates table, the winner, the gate decision and the registered version.
``mlrelease status [--json]`` shows what the test and prod endpoints serve, live.
``mlrelease audit prediction <request_id> | model <name>:<version> | release <release_id> [--json]`` prints
the chain from a prediction down to the dataset, code and person.
``mlrelease endpoints stop`` stops the local endpoints (``make stop``).
"""

from __future__ import annotations

import argparse
import sys

from mlrelease.backends.base import redact_uri
from mlrelease.settings import load_settings


def _backends(settings):
    """Local backends directly; Azure ones with credentials from the Airflow connections, like a task."""
    import contextlib
    import logging

    from mlrelease.airflow.connections import task_backends, uses_azure
    from mlrelease.backends import get_backends

    if not uses_azure(settings):
        return get_backends(settings)
    # Reading the connections logs which workspace and storage it found: on stderr, so that stdout
    # stays the command's answer (``status --json`` is parsed by scripts).
    # azure-identity and azure-core log every token and request at INFO: noise in a person's shell.
    for name in ("azure", "azure.identity", "azure.core"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        return task_backends(settings)


def _summary(args: argparse.Namespace) -> int:
    from mlrelease.reporting import build_summary

    settings = load_settings()
    backends = _backends(settings)
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


def _status(args: argparse.Namespace) -> int:
    import json

    backends = _backends(load_settings())
    endpoints = backends.endpoints.status()
    if args.json:
        print(json.dumps({"endpoints": endpoints}, indent=2, sort_keys=True))
        return 0
    for name, state in endpoints.items():
        if state["version"]:
            print(
                f"{name:5} {state['url']}  serves {state['model']} version {state['version']} "
                f"(release {state['release_id']}"
                + (f", since {state['since']})" if state.get("since") else ")")
            )
        else:
            print(f"{name:5} {state['url']}  {'up, serving nothing' if state['up'] else 'down'}")
        print(f"      log: {state['log']}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json

    from mlrelease import audit_trail

    backends = _backends(load_settings())
    try:
        if args.what == "prediction":
            story = audit_trail.prediction_story(backends, args.id)
            words = audit_trail.prediction_in_words
        elif args.what == "release":
            story = audit_trail.release_story(backends, args.id)
            words = audit_trail.release_in_words
        else:
            name, sep, version = args.id.rpartition(":")
            if not sep or not name or not version:
                print(
                    f"expected <name>:<version>, e.g. income-classifier:3; got {args.id!r}", file=sys.stderr
                )
                return 2
            story = audit_trail.model_story(backends, name, version)
            words = audit_trail.model_in_words
    except audit_trail.AuditLookupError as error:
        print(str(error), file=sys.stderr)
        return 1
    print(json.dumps(story, indent=2, sort_keys=True, default=str) if args.json else words(story))
    return 0


def _endpoint_key(args: argparse.Namespace) -> int:
    """Print an endpoint's key for a person who must call it; only endpoints that have keys."""
    backends = _backends(load_settings())
    key = getattr(backends.endpoints, "key", None)
    if key is None:
        print(f"the {args.endpoint} endpoint needs no key (local endpoints on loopback)", file=sys.stderr)
        return 1
    print(key(args.endpoint))
    return 0


def _endpoints(args: argparse.Namespace) -> int:
    backends = _backends(load_settings())
    for name in backends.endpoints.status():
        stopped = backends.endpoints.stop(name)
        print(f"{name}: {'stopped' if stopped else 'was not running'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlrelease", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="summary of the latest (or a given) training run")
    summary.add_argument("--dag-id", default="income_release")
    summary.add_argument("--dag-run-id", help="Airflow run_id; default: the latest run")
    summary.set_defaults(handler=_summary)
    status = commands.add_parser("status", help="what the test and prod endpoints serve, live")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)
    audit = commands.add_parser("audit", help="the chain behind a prediction, a model version or a release")
    audit.add_argument("what", choices=("prediction", "model", "release"))
    audit.add_argument("id", help="request id, <name>:<version>, or release id")
    audit.add_argument("--json", action="store_true", help="machine-readable output")
    audit.set_defaults(handler=_audit)
    endpoints = commands.add_parser("endpoints", help="manage the local endpoints")
    endpoints.add_argument("action", choices=("stop",))
    endpoints.set_defaults(handler=_endpoints)
    endpoint_key = commands.add_parser("endpoint-key", help="print an endpoint's key (Azure ML endpoints)")
    endpoint_key.add_argument("endpoint", choices=("test", "prod"))
    endpoint_key.set_defaults(handler=_endpoint_key)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
