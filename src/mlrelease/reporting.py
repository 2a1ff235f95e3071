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
    metric = tags.get("mlrelease.selection_metric", "areaUnderROC")
    metric = metric if metric in SELECTION_METRICS else "areaUnderROC"
    winner = tags.get("mlrelease.winner.candidate")
    lines = [
        "=" * 100,
        f"mlrelease summary: {tags.get('mlrelease.training_key', '?')}",
        f"  triggered by      : {tags.get('mlrelease.triggered_by', '?')}",
        f"  dataset           : sha256 {tags.get('mlrelease.dataset.sha256', '?')}",
        f"                      train {tags.get('mlrelease.dataset.train_rows', '?')} rows "
        f"({tags.get('mlrelease.dataset.train_uri', '?')})",
        f"                      held-out {tags.get('mlrelease.dataset.holdout_rows', '?')} rows "
        f"({tags.get('mlrelease.dataset.holdout_uri', '?')})",
        f"  code              : git {tags.get('mlrelease.git.commit', '?')} "
        f"(dirty: {tags.get('mlrelease.git.dirty', '?')})",
        f"  training run      : {tracker.run_url(parent)} (status {parent.status})",
        f"  spark             : {tags.get('spark.version', '?')}, application {tags.get('spark.application_id', '?')}",
        f"  compute run       : {tags.get('mlrelease.compute.backend', '?')} run "
        f"{tags.get('mlrelease.compute.run_id', '?')} ({tags.get('mlrelease.compute.run_url', '?')})",
        "",
        f"Candidates (ranked by validation {metric}; * = winner):",
        candidates_table(children, metric, winner),
        "",
    ]
    if winner:
        lines.append(f"Winner: {winner} (child run {tags.get('mlrelease.winner.run_id', '?')})")
    decision_json = tags.get("mlrelease.gate.decision_json")
    if decision_json:
        decision = json.loads(decision_json)
        verdict = "APPROVED" if decision["approved"] else "REJECTED"
        lines.append(f"Gate ({decision['mode']}): {verdict}: {decision['reason']}")
        for check in decision.get("checks", []):
            lines.append(f"  - {check['name']}: {'pass' if check['passed'] else 'FAIL'}: {check['detail']}")
    else:
        lines.append("Gate: not evaluated (the run stopped before the gate)")
    version = tags.get("mlrelease.registered_version")
    if version:
        prod = registry.get_by_alias(model_name, PROD_ALIAS)
        lines.append(f"Registered: {model_name} version {version}")
        lines.append(f"Registry alias 'prod' -> version {prod.version if prod else 'none'}")
        lines.append(_release_line(backends, tags.get("mlrelease.training_key", ""), model_name, version))
    else:
        lines.append(f"Registered: nothing ({model_name} unchanged)")
    lines.append("=" * 100)
    return "\n".join(lines)
