"""The end-of-run summary, built from the tracking store and registry (the record, not task memory).

Used by the DAG's ``report`` task and by ``mlrelease summary``, so the demo prints exactly what an
auditor would find later.
"""

from __future__ import annotations

import json

from mlrelease.backends import Backends
from mlrelease.domain.gate import PROD_ALIAS
from mlrelease.domain.report import candidates_table
from mlrelease.domain.selection import SELECTION_METRICS
from mlrelease.tags import (
    TAG_COMPUTE_RUN_BACKEND,
    TAG_COMPUTE_RUN_ID,
    TAG_COMPUTE_RUN_URL,
    TAG_DATASET_HOLDOUT_ROWS,
    TAG_DATASET_HOLDOUT_URI,
    TAG_DATASET_SHA256,
    TAG_DATASET_TRAIN_ROWS,
    TAG_DATASET_TRAIN_URI,
    TAG_GATE_DECISION_JSON,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_REGISTERED_VERSION,
    TAG_SELECTION_METRIC,
    TAG_SPARK_APPLICATION_ID,
    TAG_SPARK_VERSION,
    TAG_TRAINING_KEY,
    TAG_TRIGGERED_BY,
    TAG_WINNER_CANDIDATE,
    TAG_WINNER_RUN_ID,
)


def _release_line(backends: Backends, training_key: str, model_name: str, version: str) -> str:
    from mlrelease.audit_trail import AuditLookupError, release_story
    from mlrelease.domain.release import release_id_for

    release_id = release_id_for(training_key, model_name, version)
    try:
        story = release_story(backends, release_id)
    except AuditLookupError:
        return f"Release {release_id}: not started (nothing was deployed)"
    line = f"Release {release_id}: {story['status']}"
    if story.get("reason"):
        line += f" ({story['reason']})"
    return line + f"\n  audit trail: mlrelease audit release {release_id}"


def build_summary(backends: Backends, parent_run_id: str, model_name: str) -> str:
    tracker, registry = backends.tracker, backends.registry
    parent = tracker.get_run(parent_run_id)
    tags = parent.tags
    children = tracker.finished_children(parent_run_id)
    metric = tags.get(TAG_SELECTION_METRIC, "areaUnderROC")
    metric = metric if metric in SELECTION_METRICS else "areaUnderROC"
    winner = tags.get(TAG_WINNER_CANDIDATE)
    lines = [
        "=" * 100,
        f"mlrelease summary: {tags.get(TAG_TRAINING_KEY, '?')}",
        f"  triggered by      : {tags.get(TAG_TRIGGERED_BY, '?')}",
        f"  dataset           : sha256 {tags.get(TAG_DATASET_SHA256, '?')}",
        f"                      train {tags.get(TAG_DATASET_TRAIN_ROWS, '?')} rows "
        f"({tags.get(TAG_DATASET_TRAIN_URI, '?')})",
        f"                      held-out {tags.get(TAG_DATASET_HOLDOUT_ROWS, '?')} rows "
        f"({tags.get(TAG_DATASET_HOLDOUT_URI, '?')})",
        f"  code              : git {tags.get(TAG_GIT_COMMIT, '?')} (dirty: {tags.get(TAG_GIT_DIRTY, '?')})",
        f"  training run      : {tracker.run_url(parent)} (status {parent.status})",
        f"  spark             : {tags.get(TAG_SPARK_VERSION, '?')}, application {tags.get(TAG_SPARK_APPLICATION_ID, '?')}",
        f"  compute run       : {tags.get(TAG_COMPUTE_RUN_BACKEND, '?')} run "
        f"{tags.get(TAG_COMPUTE_RUN_ID, '?')} ({tags.get(TAG_COMPUTE_RUN_URL, '?')})",
        "",
        f"Candidates (ranked by validation {metric}; * = winner):",
        candidates_table(children, metric, winner),
        "",
    ]
    if winner:
        lines.append(f"Winner: {winner} (child run {tags.get(TAG_WINNER_RUN_ID, '?')})")
    decision_json = tags.get(TAG_GATE_DECISION_JSON)
    if decision_json:
        decision = json.loads(decision_json)
        verdict = "APPROVED" if decision["approved"] else "REJECTED"
        lines.append(f"Gate ({decision['mode']}): {verdict}: {decision['reason']}")
        for check in decision.get("checks", []):
            lines.append(f"  - {check['name']}: {'pass' if check['passed'] else 'FAIL'}: {check['detail']}")
    else:
        lines.append("Gate: not evaluated (the run stopped before the gate)")
    version = tags.get(TAG_REGISTERED_VERSION)
    if version:
        prod = registry.get_by_alias(model_name, PROD_ALIAS)
        lines.append(f"Registered: {model_name} version {version}")
        lines.append(f"Registry alias 'prod' -> version {prod.version if prod else 'none'}")
        lines.append(_release_line(backends, tags.get(TAG_TRAINING_KEY, ""), model_name, version))
    else:
        lines.append(f"Registered: nothing ({model_name} unchanged)")
    lines.append("=" * 100)
    return "\n".join(lines)
