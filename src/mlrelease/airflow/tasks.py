"""Bodies of the DAG's Python tasks. The DAG file wires them; heavy imports happen here, at run time.

Each function is idempotent: it reads the record (MLflow, registry, audit log) before it writes, so a
retried or cleared task converges to the same state.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlrelease.airflow.context import param, run_info
from mlrelease.domain.gate import GatePolicy
from mlrelease.domain.selection import DEFAULT_SELECTION_METRIC

log = logging.getLogger(__name__)


def _backends():
    from mlrelease.airflow.connections import task_backends
    from mlrelease.settings import load_settings

    settings = load_settings()
    return settings, task_backends(settings)


def validate_data(context: dict[str, Any]) -> dict:
    """Fetch (if needed), validate and fingerprint the data; the fingerprint is this task's XCom."""
    from mlrelease.data.prepare import prepare_dataset
    from mlrelease.domain.validation import DataValidationError, ValidationPolicy
    from mlrelease.settings import load_settings

    settings = load_settings()
    settings.ensure_dirs()
    policy = ValidationPolicy(min_rows=int(param(context, "min_rows", ValidationPolicy.min_rows)))
    try:
        prepared = prepare_dataset(
            settings.data_cache_dir,
            data_path=param(context, "data_path", settings.default_data_path),
            holdout_path=param(context, "holdout_path", settings.default_holdout_path),
            policy=policy,
        )
    except (DataValidationError, FileNotFoundError, ValueError) as error:
        # Bad data or bad params do not get better on retry: fail now, with the reason, and stop here.
        raise AirflowFailException(str(error)) from error
    fingerprint = prepared.fingerprint
    log.info(
        "Data validation passed. dataset sha256=%s train_rows=%s holdout_rows=%s source=%s",
        fingerprint["dataset_sha256"],
        fingerprint["train"]["rows"],
        fingerprint["holdout"]["rows"],
        fingerprint["train"]["uri"],
    )
    for report in fingerprint["validation"]:
        worst = max(report["missing_share"].items(), key=lambda item: item[1])
        log.info(
            "  %s: %s rows, positive share %.3f, most missing: %s %.1f%%",
            report["dataset"],
            report["rows"],
            report["positive_share"],
            worst[0],
            100 * worst[1],
        )
    return fingerprint


def gate_policy_from_params(context: dict[str, Any]) -> GatePolicy:
    defaults = GatePolicy()
    return GatePolicy(
        mode=param(context, "gate_mode", defaults.mode),
        metric=param(context, "gate_metric", defaults.metric),
        min_value=float(param(context, "quality_bar", defaults.min_value)),
        champion_tolerance=float(param(context, "champion_tolerance", defaults.champion_tolerance)),
    )


def select_and_gate(training: dict, context: dict[str, Any]) -> bool:
    """Pick the winner and gate it (``mlrelease.gating``); True lets the release proceed."""
    from mlrelease.gating import select_and_gate as decide_release

    settings, backends = _backends()
    outcome = decide_release(
        backends,
        training["parent_run_id"],
        param(context, "selection_metric", DEFAULT_SELECTION_METRIC),
        gate_policy_from_params(context),
    )
    # For people and the report only: registration and promotion read the decision from the audit log.
    ti = context["ti"]
    ti.xcom_push(key="decision", value=outcome.decision.to_dict())
    ti.xcom_push(key="winner", value={"candidate": outcome.winner.candidate, "run_id": outcome.winner.run_id})
    return outcome.decision.approved


def register_winner(training: dict, fingerprint: dict, context: dict[str, Any]) -> dict:
    """Register the gated winner with full lineage; a retry finds the version it made and stops there."""
    from mlrelease.gating import GateRefused
    from mlrelease.gating import register_winner as register

    settings, backends = _backends()
    try:
        ref = register(backends, settings, training["parent_run_id"], fingerprint, run_info(context))
    except GateRefused as error:
        raise AirflowFailException(str(error)) from error
    return {"name": ref.name, "version": ref.version, "uri": ref.uri, "run_id": ref.run_id}


def _release(registered: dict, context: dict[str, Any]):
    from mlrelease.domain.endpoint_checks import DEFAULT_LATENCY_BUDGET_MS
    from mlrelease.releasing import Release

    return Release(
        model_name=registered["name"],
        version=registered["version"],
        run=run_info(context),
        latency_budget_ms=float(param(context, "endpoint_latency_budget_ms", DEFAULT_LATENCY_BUDGET_MS)),
    )


def check_test(registered: dict, context: dict[str, Any]) -> dict:
    """Endpoint checks on the test deployment, then its traffic moves to it; a failed check fails the task and
    nothing reaches prod."""
    from mlrelease import releasing

    settings, backends = _backends()
    release = _release(registered, context)
    try:
        report = releasing.check_test(backends, settings, release)
    except (releasing.ReleaseError, releasing.EndpointError) as error:
        raise AirflowFailException(f"check_test: {error}") from error
    if not report.passed:
        raise AirflowFailException(
            f"{len(report.failed)} of {len(report.checks)} test endpoint checks FAILED for "
            f"{release.model_name} version {release.version} (release {release.release_id}) at {report.url}: "
            + "; ".join(check.line() for check in report.failed)
            + ". Prod is unchanged; the test endpoint keeps this version for debugging. "
            f"Details: mlrelease audit release {release.release_id}"
        )
    log.info("All %s test endpoint checks passed at %s", len(report.checks), report.url)
    return report.to_dict()


def report(training: dict | None, context: dict[str, Any]) -> str:
    from mlrelease.backends.base import log_file_for
    from mlrelease.reporting import build_summary

    settings, backends = _backends()
    if not training:
        raise RuntimeError("report found no training result in XCom")
    summary = build_summary(backends, training["parent_run_id"], settings.model_name)
    log.info("Release summary:\n%s", summary)
    reports = settings.home / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    log_file_for(reports, run_info(context).run_id, ".txt").write_text(summary + "\n")
    return summary
