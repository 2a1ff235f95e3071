"""Bodies of the DAG's Python tasks. The DAG file wires them; heavy imports happen here, at run time.

Each function is idempotent: it reads the record (MLflow, registry, audit log) before it writes, so a
retried or cleared task converges to the same state.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from mlrelease.airflow.context import param, run_info
from mlrelease.domain.gate import PROD_ALIAS, GateMode, GatePolicy, decide, stale_champion
from mlrelease.domain.lineage import missing_lineage, model_version_tags
from mlrelease.domain.report import candidates_table
from mlrelease.domain.selection import CandidateResult, select_winner

log = logging.getLogger(__name__)


def _backends():
    from mlrelease.backends import get_backends
    from mlrelease.settings import load_settings

    settings = load_settings()
    return settings, get_backends(settings)


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
    return GatePolicy(
        mode=param(context, "gate_mode", "enforce"),
        metric=param(context, "gate_metric", "areaUnderROC"),
        min_value=float(param(context, "quality_bar", 0.88)),
        champion_tolerance=float(param(context, "champion_tolerance", 0.005)),
    )


def select_and_gate(training: dict, context: dict[str, Any]) -> bool:
    """Pick the winner, apply the gate, record both on the parent run; True lets the release proceed."""
    settings, backends = _backends()
    parent_run_id = training["parent_run_id"]
    parent = backends.tracker.get_run(parent_run_id)
    children = backends.tracker.finished_children(parent_run_id)
    metric = param(context, "selection_metric", "areaUnderROC")
    winner = select_winner(children, metric)
    policy = gate_policy_from_params(context)
    champion_version = parent.tags.get("mlrelease.champion.version")
    decision = decide(
        policy,
        challenger_value=winner.metric(f"test_{policy.metric}"),
        champion_version=champion_version,
        champion_value=parent.metrics.get(f"champion_test_{policy.metric}") if champion_version else None,
    )
    log.info(
        "Candidates (parent run %s, ranked by validation %s):\n%s",
        parent_run_id,
        metric,
        candidates_table(children, metric, winner.candidate),
    )
    log.info(
        "Winner: %s (%s, params %s), child run %s: val_%s=%.4f test_%s=%.4f",
        winner.candidate,
        winner.algorithm,
        winner.params,
        winner.run_id,
        metric,
        winner.metric(f"val_{metric}"),
        policy.metric,
        winner.metric(f"test_{policy.metric}") or float("nan"),
    )
    for check in decision.checks:
        log.info("Gate check %s: %s: %s", check.name, "pass" if check.passed else "FAIL", check.detail)
    backends.tracker.set_tags(
        parent_run_id,
        {
            "mlrelease.selection_metric": metric,
            "mlrelease.winner.candidate": winner.candidate,
            "mlrelease.winner.run_id": winner.run_id,
            "mlrelease.gate.mode": decision.mode,
            "mlrelease.gate.approved": str(decision.approved).lower(),
            "mlrelease.gate.checks_passed": str(decision.checks_passed).lower(),
            "mlrelease.gate.decision_json": json.dumps(decision.to_dict(), sort_keys=True),
        },
    )
    backends.audit.append(
        event_key=f"gate:{parent_run_id}",
        kind="gate_decision",
        subject=parent_run_id,
        payload={"winner": winner.candidate, "winner_run_id": winner.run_id, **decision.to_dict()},
    )
    ti = context["ti"]
    ti.xcom_push(key="decision", value=decision.to_dict())
    ti.xcom_push(
        key="winner",
        value={
            "candidate": winner.candidate,
            "run_id": winner.run_id,
            "algorithm": winner.algorithm,
            "params": winner.params,
            "metrics": winner.metrics,
            "model_uri": winner.model_uri,
        },
    )
    if decision.approved:
        log.info(
            "GATE %s (%s): %s",
            "PASSED" if decision.checks_passed else "DRY RUN",
            decision.mode,
            decision.reason,
        )
    else:
        log.warning(
            "GATE REJECTED the challenger %s (child run %s): %s. Registration and release are skipped; "
            "prod is unchanged. To ship anyway, re-trigger with gate_mode=dry_run (recorded on the run).",
            winner.candidate,
            winner.run_id,
            decision.reason,
        )
    return decision.approved


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else ""


def register_winner(training: dict, fingerprint: dict, context: dict[str, Any]) -> dict:
    """Register the gated winner with full lineage; a retry finds the version it made and stops there."""
    settings, backends = _backends()
    ti = context["ti"]
    winner_data = ti.xcom_pull(task_ids="select_and_gate", key="winner")
    decision = ti.xcom_pull(task_ids="select_and_gate", key="decision")
    if not winner_data or not decision:
        raise RuntimeError(
            "register_model found no winner/decision from select_and_gate in XCom; clear select_and_gate "
            "and its downstream tasks together"
        )
    if not decision["approved"]:
        raise RuntimeError(f"refusing to register: the gate did not approve ({decision['reason']})")
    winner = CandidateResult(**winner_data)
    if not winner.model_uri:
        raise RuntimeError(f"child run {winner.run_id} has no mlrelease.model_uri tag; it logged no model")
    name = settings.model_name
    parent_run_id = training["parent_run_id"]
    existing = backends.registry.find_version_for_run(name, winner.run_id)
    if existing:
        log.info(
            "Model %s version %s already registered for child run %s (retried or cleared task): reusing it. %s",
            name,
            existing.version,
            winner.run_id,
            backends.registry.version_url(existing),
        )
        ref = existing
        missing = missing_lineage(ref.tags)
        if missing:
            raise RuntimeError(
                f"Model {name} version {ref.version} lacks lineage tags {missing}; it must not be released. "
                "Delete that version in the registry and clear this task."
            )
    else:
        parent = backends.tracker.get_run(parent_run_id)
        from mlrelease.gitinfo import git_info
        from mlrelease.settings import project_root

        tags = model_version_tags(
            fingerprint=fingerprint,
            airflow=run_info(context),
            git=git_info(project_root()),
            winner=winner,
            parent_run_id=parent_run_id,
            gate=decision,
            training_started_at=_iso(parent.start_time_ms),
            training_finished_at=_iso(parent.end_time_ms),
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        # The registering task's own identity wins over the training's, but training's git commit is
        # what built the model: keep the parent's if it recorded one.
        tags["mlrelease.git.commit"] = parent.tags.get("mlrelease.git.commit", tags["mlrelease.git.commit"])
        tags["mlrelease.git.dirty"] = parent.tags.get("mlrelease.git.dirty", tags["mlrelease.git.dirty"])
        ref = backends.registry.register(name, winner.model_uri, winner.run_id, tags)
        log.info(
            "Registered %s version %s from child run %s (%s, %s). %s",
            name,
            ref.version,
            winner.run_id,
            winner.candidate,
            winner.model_uri,
            backends.registry.version_url(ref),
        )
    backends.tracker.set_tags(parent_run_id, {"mlrelease.registered_version": ref.version})
    backends.audit.append(
        event_key=f"registered:{name}:{ref.version}",
        kind="model_registered",
        subject=f"{name}:{ref.version}",
        payload={"run_id": winner.run_id, "parent_run_id": parent_run_id, "tags": ref.tags},
    )
    return {"name": name, "version": ref.version, "uri": ref.uri, "run_id": winner.run_id}


def _release(registered: dict, context: dict[str, Any]):
    from mlrelease.domain.endpoint_checks import DEFAULT_LATENCY_BUDGET_MS
    from mlrelease.releasing import Release

    return Release(
        model_name=registered["name"],
        version=registered["version"],
        run=run_info(context),
        latency_budget_ms=float(param(context, "endpoint_latency_budget_ms", DEFAULT_LATENCY_BUDGET_MS)),
    )


def deploy_test(registered: dict, context: dict[str, Any]) -> dict:
    """Deploy the registered winner to the test endpoint (hot swap: it never answers with an error)."""
    from mlrelease import releasing

    settings, backends = _backends()
    release = _release(registered, context)
    try:
        served = releasing.deploy(backends, settings, release, releasing.TEST)
    except (releasing.ReleaseError, releasing.EndpointError) as error:
        raise AirflowFailException(f"deploy_test: {error}") from error
    return {"release_id": release.release_id, "url": backends.endpoints.url(releasing.TEST), "served": served}


def check_test(registered: dict, context: dict[str, Any]) -> dict:
    """Endpoint checks on the test endpoint; any failed check fails the task and nothing reaches prod."""
    from mlrelease import releasing

    settings, backends = _backends()
    release = _release(registered, context)
    report = releasing.run_checks(backends, settings, release, releasing.TEST)
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


def promote_prod(registered: dict, context: dict[str, Any]) -> dict:
    """Deploy to prod, check prod, move the alias ``prod`` and record the release; roll back on failure."""
    from mlrelease import releasing

    settings, backends = _backends()
    name, version = registered["name"], registered["version"]
    current = backends.registry.get_by_alias(name, PROD_ALIAS)
    previous = current.version if current else None
    decision = context["ti"].xcom_pull(task_ids="select_and_gate", key="decision") or {}
    if decision.get("mode") != GateMode.DISABLED and (
        problem := stale_champion(decision.get("champion_version"), previous, version)
    ):
        raise AirflowFailException(problem)
    try:
        return releasing.promote(backends, settings, _release(registered, context))
    except releasing.ReleaseError as error:
        # A rollback or a refused deployment is not transient: fail now, with prod's state in the message.
        raise AirflowFailException(str(error)) from error


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
