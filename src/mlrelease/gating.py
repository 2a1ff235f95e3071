"""Selection, the gate and registration: the rules between training and the release, without Airflow.

The DAG's tasks are thin adapters over these functions, so calling them directly (a test, a script,
another orchestrator) applies the same rules:

* :func:`select_and_gate` picks the winner among the finished child runs, applies the gate policy, and
  records the decision on the parent run and, append-only, in the audit log;
* :func:`recorded_gate` reads that decision back from the audit log, the one record nobody can edit
  (an XCom can be edited by an Admin in the UI; registration and promotion do not trust it);
* :func:`register_winner` refuses unless the recorded gate approved, and is keyed by the winner's
  child run, so a retry finds the version it made.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from mlrelease.backends import Backends
from mlrelease.backends.base import ModelVersionRef
from mlrelease.domain.gate import GateDecision, GatePolicy, decide
from mlrelease.domain.lineage import AirflowRunInfo, missing_lineage, model_version_tags
from mlrelease.domain.report import candidates_table
from mlrelease.domain.selection import CandidateResult, select_winner
from mlrelease.settings import Settings
from mlrelease.tags import (
    TAG_CHAMPION_VERSION,
    TAG_COMPUTE_RUN_BACKEND,
    TAG_COMPUTE_RUN_ID,
    TAG_COMPUTE_RUN_URL,
    TAG_GATE_APPROVED,
    TAG_GATE_CHECKS_PASSED,
    TAG_GATE_DECISION_JSON,
    TAG_GATE_MODE,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_MODEL_URI,
    TAG_REGISTERED_VERSION,
    TAG_SELECTION_METRIC,
    TAG_WINNER_CANDIDATE,
    TAG_WINNER_RUN_ID,
)

log = logging.getLogger(__name__)

GATE_DECISION = "gate_decision"  # audit event kind; its subject is the parent run id


class GateRefused(RuntimeError):
    """Registration or promotion was asked for a challenger the recorded gate did not approve."""


@dataclass(frozen=True)
class GateOutcome:
    winner: CandidateResult
    decision: GateDecision
    parent_run_id: str


def select_and_gate(
    backends: Backends, parent_run_id: str, selection_metric: str, policy: GatePolicy
) -> GateOutcome:
    """Pick the winner on validation, gate it on the held-out data, and record the decision once."""
    parent = backends.tracker.get_run(parent_run_id)
    children = backends.tracker.finished_children(parent_run_id)
    winner = select_winner(children, selection_metric)
    champion_version = parent.tags.get(TAG_CHAMPION_VERSION)
    decision = decide(
        policy,
        challenger_value=winner.metric(f"test_{policy.metric}"),
        champion_version=champion_version,
        champion_value=parent.metrics.get(f"champion_test_{policy.metric}") if champion_version else None,
    )
    log.info(
        "Candidates (parent run %s, ranked by validation %s):\n%s",
        parent_run_id,
        selection_metric,
        candidates_table(children, selection_metric, winner.candidate),
    )
    log.info(
        "Winner: %s (%s, params %s), child run %s: val_%s=%.4f test_%s=%.4f",
        winner.candidate,
        winner.algorithm,
        winner.params,
        winner.run_id,
        selection_metric,
        winner.metric(f"val_{selection_metric}"),
        policy.metric,
        winner.metric(f"test_{policy.metric}") or float("nan"),
    )
    for check in decision.checks:
        log.info("Gate check %s: %s: %s", check.name, "pass" if check.passed else "FAIL", check.detail)
    backends.tracker.set_tags(
        parent_run_id,
        {
            TAG_SELECTION_METRIC: selection_metric,
            TAG_WINNER_CANDIDATE: winner.candidate,
            TAG_WINNER_RUN_ID: winner.run_id,
            TAG_GATE_MODE: decision.mode,
            TAG_GATE_APPROVED: str(decision.approved).lower(),
            TAG_GATE_CHECKS_PASSED: str(decision.checks_passed).lower(),
            TAG_GATE_DECISION_JSON: json.dumps(decision.to_dict(), sort_keys=True),
        },
    )
    event = backends.audit.append(
        event_key=f"gate:{parent_run_id}",
        kind=GATE_DECISION,
        subject=parent_run_id,
        payload={"winner": winner.candidate, "winner_run_id": winner.run_id, **decision.to_dict()},
    )
    if event.payload["winner_run_id"] != winner.run_id:
        # A cleared gate task re-decides; the first decision is the record (append-only) and stands.
        log.warning(
            "The gate of parent run %s was already recorded at %s for %s; that record stands",
            parent_run_id,
            event.recorded_at,
            event.payload["winner"],
        )
    recorded = recorded_gate(backends, parent_run_id)
    if recorded.decision.approved:
        log.info(
            "GATE %s (%s): %s",
            "PASSED" if recorded.decision.checks_passed else "DRY RUN",
            recorded.decision.mode,
            recorded.decision.reason,
        )
    else:
        log.warning(
            "GATE REJECTED the challenger %s (child run %s): %s. Registration and release are skipped; "
            "prod is unchanged. To ship anyway, re-trigger with gate_mode=dry_run (recorded on the run).",
            recorded.winner.candidate,
            recorded.winner.run_id,
            recorded.decision.reason,
        )
    return recorded


def recorded_gate(backends: Backends, parent_run_id: str) -> GateOutcome:
    """The gate decision of one training run, as the audit log holds it (GateRefused if none)."""
    events = backends.audit.events(kind=GATE_DECISION, subject=parent_run_id)
    if not events:
        raise GateRefused(
            f"no gate decision is recorded for training run {parent_run_id}; run (or clear) select_and_gate"
        )
    payload = dict(events[0].payload)
    winner_run_id = payload.pop("winner_run_id")
    payload.pop("winner")
    decision = GateDecision.from_dict(payload)
    winner = next(
        (c for c in backends.tracker.finished_children(parent_run_id) if c.run_id == winner_run_id), None
    )
    if winner is None:
        raise GateRefused(
            f"the gate of training run {parent_run_id} chose child run {winner_run_id}, which is not a "
            "finished child run of it any more; trigger a new run"
        )
    return GateOutcome(winner, decision, parent_run_id)


def _iso(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds") if ms else ""


def register_winner(
    backends: Backends, settings: Settings, parent_run_id: str, fingerprint: dict, run: AirflowRunInfo
) -> ModelVersionRef:
    """Register the gated winner with full lineage; refuse unless the recorded gate approved it."""
    from mlrelease.gitinfo import git_info
    from mlrelease.settings import project_root

    outcome = recorded_gate(backends, parent_run_id)
    winner, decision = outcome.winner, outcome.decision
    if not decision.approved:
        raise GateRefused(f"refusing to register: the gate did not approve ({decision.reason})")
    if not winner.model_uri:
        raise RuntimeError(f"child run {winner.run_id} has no {TAG_MODEL_URI} tag; it logged no model")
    name = settings.model_name
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
        tags = model_version_tags(
            fingerprint=fingerprint,
            airflow=run,
            git=git_info(project_root()),
            winner=winner,
            parent_run_id=parent_run_id,
            gate=decision.to_dict(),
            training_started_at=_iso(parent.start_time_ms),
            training_finished_at=_iso(parent.end_time_ms),
            registered_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        # The registering task's own identity wins over the training's, but training's git commit is
        # what built the model, and the compute run is where it was built: keep the parent's.
        for key in (TAG_GIT_COMMIT, TAG_GIT_DIRTY):
            tags[key] = parent.tags.get(key, tags[key])
        for key in (TAG_COMPUTE_RUN_BACKEND, TAG_COMPUTE_RUN_ID, TAG_COMPUTE_RUN_URL):
            if parent.tags.get(key):
                tags[key] = parent.tags[key]
        ref = backends.registry.register(
            name, backends.tracker.portable_model_uri(winner.model_uri), winner.run_id, tags
        )
        log.info(
            "Registered %s version %s from child run %s (%s, %s). %s",
            name,
            ref.version,
            winner.run_id,
            winner.candidate,
            winner.model_uri,
            backends.registry.version_url(ref),
        )
    backends.tracker.set_tags(parent_run_id, {TAG_REGISTERED_VERSION: ref.version})
    backends.audit.append(
        event_key=f"registered:{name}:{ref.version}",
        kind="model_registered",
        subject=f"{name}:{ref.version}",
        payload={"run_id": winner.run_id, "parent_run_id": parent_run_id, "tags": ref.tags},
    )
    return ref
