"""Why did the model predict this? The audit chain, read back from the record.

``prediction -> release -> model version -> training child run -> parent run -> dataset, code, DAG run,
person``. Each link comes from where it was written: the prediction log and the release events from the
append-only audit store, the lineage from the registered version's tags, parameters and metrics from the
training run. Nothing here is inferred from the current state (the registry alias may have moved since);
a link that cannot be found is reported as missing, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from mlrelease.backends import Backends
from mlrelease.domain.gate import PROD_ALIAS
from mlrelease.domain.release import (
    ALIAS_MOVED,
    DEPLOYMENT,
    DEPLOYMENT_FAILED,
    ENDPOINT_CHECKS,
    RELEASE,
    RELEASE_STARTED,
    ROLLBACK,
    alias_intervals,
)
from mlrelease.tags import (
    TAG_AIRFLOW_DAG_ID,
    TAG_AIRFLOW_RUN_ID,
    TAG_AIRFLOW_RUN_TYPE,
    TAG_ALGORITHM,
    TAG_CANDIDATE,
    TAG_COMPUTE_RUN_BACKEND,
    TAG_COMPUTE_RUN_ID,
    TAG_COMPUTE_RUN_URL,
    TAG_DATASET_HOLDOUT_ROWS,
    TAG_DATASET_HOLDOUT_URI,
    TAG_DATASET_SHA256,
    TAG_DATASET_SOURCE,
    TAG_DATASET_TRAIN_ROWS,
    TAG_DATASET_TRAIN_URI,
    TAG_GATE_CHECKS_PASSED,
    TAG_GATE_DECISION_JSON,
    TAG_GATE_MODE,
    TAG_GATE_REASON,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_LINEAGE_CHILD_RUN_ID,
    TAG_LINEAGE_PARENT_RUN_ID,
    TAG_PARAMS,
    TAG_REGISTERED_AT,
    TAG_SPARK_APPLICATION_ID,
    TAG_TRAINING_FINISHED_AT,
    TAG_TRAINING_STARTED_AT,
    TAG_TRIGGERED_BY,
)


class AuditLookupError(LookupError):
    """The thing asked about is not in the record; the message says where we looked."""


def prod_history(backends: Backends, model_name: str) -> list[dict[str, Any]]:
    moves = [
        (e.recorded_at, str(e.payload["version"]), e.payload.get("release_id"))
        for e in backends.audit.events(kind=ALIAS_MOVED, subject=f"{model_name}:{PROD_ALIAS}")
    ]
    return [interval.to_dict() for interval in alias_intervals(moves)]


def release_story(backends: Backends, release_id: str) -> dict[str, Any]:
    events = backends.audit.events(subject=release_id)
    if not events:
        raise AuditLookupError(
            f"no release {release_id!r} in the audit store; list releases with `mlrelease status` or "
            "read release ids from the endpoints' /metadata"
        )
    outcomes = [e for e in events if e.kind == RELEASE]
    final = outcomes[-1].payload if outcomes else None
    checks = [e.payload for e in events if e.kind == ENDPOINT_CHECKS]
    deployments = [{**e.payload, "at": e.recorded_at} for e in events if e.kind == DEPLOYMENT]
    started = next((e.payload for e in events if e.kind == RELEASE_STARTED), None)
    first = deployments[0] if deployments else {}
    if final:
        status = final["outcome"]
    elif any(c["endpoint"] == "test" and not c["passed"] for c in checks[-1:]):
        status = "stopped at test (test endpoint checks failed)"
    elif deployments:
        status = "deployed to test, not promoted"
    elif any(e.kind == DEPLOYMENT_FAILED for e in events):
        status = "stopped at test (the deployment failed)"
    else:
        status = "started"
    return {
        "release_id": release_id,
        "status": status,
        "model": (final or first).get("model"),
        "version": (final or first).get("version"),
        "previous_prod_version": (final or {}).get("previous_prod_version")
        or (started or {}).get("previous_alias_version"),
        "promoted_by": (final or first).get("triggered_by"),
        "at": (final or {}).get("at"),
        "reason": (final or {}).get("reason"),
        "dag_id": (final or first).get("dag_id"),
        "run_id": (final or first).get("run_id"),
        "deployments": deployments,
        "checks": checks,
        "rollbacks": [e.payload for e in events if e.kind == ROLLBACK],
        "failed_deployments": [
            {**e.payload, "at": e.recorded_at} for e in events if e.kind == DEPLOYMENT_FAILED
        ],
        "events": [{"seq": e.seq, "kind": e.kind, "at": e.recorded_at} for e in events],
    }


def model_story(backends: Backends, name: str, version: str) -> dict[str, Any]:
    ref = backends.registry.get_version(name, str(version))
    if ref is None:
        raise AuditLookupError(f"model {name} version {version} is not in the registry")
    tags = ref.tags

    child: dict[str, Any] = {"run_id": tags.get(TAG_LINEAGE_CHILD_RUN_ID)}
    parent: dict[str, Any] = {"run_id": tags.get(TAG_LINEAGE_PARENT_RUN_ID)}
    runs = {}
    for record, run_id in ((child, child["run_id"]), (parent, parent["run_id"])):
        if not run_id:
            record["missing"] = "no run id on the model version"
            continue
        try:
            run = backends.tracker.get_run(run_id)
        except Exception as error:  # reported, not swallowed: the chain says which link is broken
            record["missing"] = f"run {run_id} not found in the tracking store: {error}"
            continue
        runs[run_id] = run
        record.update(
            status=run.status,
            params=run.params,
            metrics=run.metrics,
            url=backends.tracker.run_url(run),
        )
    if "missing" not in parent:
        parent_run = runs[parent["run_id"]]
        parent.update(
            spark_application_id=parent_run.tags.get(TAG_SPARK_APPLICATION_ID),
            gate=json.loads(parent_run.tags.get(TAG_GATE_DECISION_JSON, "null")),
            metrics={},  # the parent's metrics are the champion's re-score, not this model's
        )
    return {
        "name": name,
        "version": str(version),
        "registered_at": tags.get(TAG_REGISTERED_AT),
        "registry_url": backends.registry.version_url(ref),
        "algorithm": tags.get(TAG_ALGORITHM),
        "candidate": tags.get(TAG_CANDIDATE),
        "params": json.loads(tags.get(TAG_PARAMS) or "{}"),
        "training_run": child,
        "parent_run": parent,
        # From the version's own tags: known even when the tracking store cannot be reached.
        "compute_run": {
            "backend": tags.get(TAG_COMPUTE_RUN_BACKEND),
            "run_id": tags.get(TAG_COMPUTE_RUN_ID),
            "url": tags.get(TAG_COMPUTE_RUN_URL),
        },
        "dataset": {
            "sha256": tags.get(TAG_DATASET_SHA256),
            "source": tags.get(TAG_DATASET_SOURCE),
            "train_uri": tags.get(TAG_DATASET_TRAIN_URI),
            "train_rows": tags.get(TAG_DATASET_TRAIN_ROWS),
            "holdout_uri": tags.get(TAG_DATASET_HOLDOUT_URI),
            "holdout_rows": tags.get(TAG_DATASET_HOLDOUT_ROWS),
        },
        "git": {"commit": tags.get(TAG_GIT_COMMIT), "dirty": tags.get(TAG_GIT_DIRTY)},
        "airflow": {
            "dag_id": tags.get(TAG_AIRFLOW_DAG_ID),
            "run_id": tags.get(TAG_AIRFLOW_RUN_ID),
            "run_type": tags.get(TAG_AIRFLOW_RUN_TYPE),
            "triggered_by": tags.get(TAG_TRIGGERED_BY),
        },
        "gate": {
            "mode": tags.get(TAG_GATE_MODE),
            "checks_passed": tags.get(TAG_GATE_CHECKS_PASSED),
            "reason": tags.get(TAG_GATE_REASON),
        },
        "training": {
            "started_at": tags.get(TAG_TRAINING_STARTED_AT),
            "finished_at": tags.get(TAG_TRAINING_FINISHED_AT),
        },
        "prod_history": [h for h in prod_history(backends, name) if h["version"] == str(version)],
    }


def prediction_story(backends: Backends, request_id: str) -> dict[str, Any]:
    record = backends.audit.get_prediction(request_id)
    if record is None:
        raise AuditLookupError(
            f"no prediction with request id {request_id!r} in the prediction log; the id is the "
            "'request_id' field (and X-Request-ID header) of a /score answer"
        )
    story: dict[str, Any] = {"prediction": asdict(record)}
    if record.release_id:
        story["release"] = release_story(backends, record.release_id)
    if record.model_name and record.model_version:
        story["model"] = model_story(backends, record.model_name, record.model_version)
    return story


# ------------------------------------------------------------------------------------------ in words
def _checks_line(checks: list[dict[str, Any]]) -> list[str]:
    lines = []
    for report in checks:
        names = [c["name"] for c in report["checks"] if c["passed"]]
        failed = [
            f"{c['name']} (expected {c['expected']}; actual {c['actual']})"
            for c in report["checks"]
            if not c["passed"]
        ]
        state = "passed" if report["passed"] else "FAILED"
        line = f"  checks on {report['endpoint']} (try {report.get('try_number')}): {state}; passed: {', '.join(names) or 'none'}"
        if failed:
            line += f"; failed: {'; '.join(failed)}"
        lines.append(line)
    return lines


def release_in_words(release: dict[str, Any]) -> str:
    lines = [
        f"Release {release['release_id']}: {release['model']} version {release['version']}, status: {release['status']}.",
        f"  from DAG run {release['dag_id']} / {release['run_id']}, triggered (and promoted) by {release['promoted_by']}"
        + (f", at {release['at']}" if release.get("at") else ""),
        f"  previous prod version: {release['previous_prod_version'] or 'none (first release)'}",
    ]
    if release.get("reason"):
        lines.append(f"  why: {release['reason']}")
    for deployment in release["deployments"]:
        previous = deployment.get("previous") or {}
        lines.append(
            f"  deployed to {deployment['endpoint']} ({deployment['url']}) at {deployment['at']}, replacing "
            f"{('version ' + str(previous.get('version'))) if previous else 'nothing'}"
        )
    for failed in release.get("failed_deployments", []):
        lines.append(
            f"  DEPLOYMENT FAILED on {failed['endpoint']} ({failed.get('deployment') or 'in place'}) at "
            f"{failed['at']}: {failed['reason']}"
        )
    lines += _checks_line(release["checks"])
    for rollback in release["rollbacks"]:
        where = rollback.get("endpoint", "prod")
        lines.append(
            f"  ROLLED BACK {where} to {rollback.get('restored') or 'nothing'}: {rollback['failed']}"
        )
    return "\n".join(lines)


def model_in_words(model: dict[str, Any]) -> str:
    child, parent, data = model["training_run"], model["parent_run"], model["dataset"]
    metrics = child.get("metrics") or {}
    shown = ", ".join(
        f"{k}={metrics[k]:.4f}"
        for k in ("val_areaUnderROC", "test_areaUnderROC", "test_accuracy")
        if k in metrics
    )
    lines = [
        f"Model {model['name']} version {model['version']} (registered {model['registered_at']}; {model['registry_url']})",
        f"  algorithm {model['algorithm']} (candidate {model['candidate']}), params {model['params']}",
        f"  trained in child run {child['run_id']} ({child.get('url') or child.get('missing')}); metrics: {shown or 'none'}",
        f"  under parent run {parent['run_id']} (Spark application {parent.get('spark_application_id')}), "
        f"{model['training']['started_at']} .. {model['training']['finished_at']}",
        f"  computed in {model['compute_run']['backend'] or 'an unrecorded'} run {model['compute_run']['run_id']} "
        f"({model['compute_run']['url']})",
        f"  on dataset sha256 {data['sha256']} ({data['train_rows']} training rows, {data['holdout_rows']} held-out rows, "
        f"source {data['source']}: {data['train_uri']})",
        f"  from git commit {model['git']['commit']} (dirty: {model['git']['dirty']})",
        f"  by Airflow DAG run {model['airflow']['dag_id']} / {model['airflow']['run_id']} "
        f"({model['airflow']['run_type']}), triggered by {model['airflow']['triggered_by']}",
        f"  gate: {model['gate']['mode']}, checks passed: {model['gate']['checks_passed']}: {model['gate']['reason']}",
    ]
    for interval in model["prod_history"]:
        lines.append(
            f"  was prod from {interval['from']} to {interval['to'] or 'now'} (release {interval['release_id']})"
        )
    if not model["prod_history"]:
        lines.append("  has never been prod")
    return "\n".join(lines)


def prediction_in_words(story: dict[str, Any]) -> str:
    p = story["prediction"]
    lines = [
        f"Prediction {p['request_id']} at {p['received_at']} on the {p['endpoint']} endpoint "
        f"(HTTP {p['status']}, {p['latency_ms']:.1f} ms), served by {p['model_name']} version {p['model_version']} "
        f"in release {p['release_id']}.",
    ]
    inputs, outputs = p.get("inputs") or [], p.get("outputs") or []
    for i, (record, output) in enumerate(zip(inputs, outputs, strict=False)):
        if i == 5:
            lines.append(f"  ... and {len(inputs) - 5} more records (see --json)")
            break
        lines.append(f"  input {i}: {json.dumps(record, sort_keys=True)}")
        lines.append(f"  output {i}: {json.dumps(output, sort_keys=True)}")
    if p.get("error"):
        lines.append(f"  rejected: {json.dumps(p['error'])[:1000]}")
    if "release" in story:
        lines.append(release_in_words(story["release"]))
    if "model" in story:
        lines.append(model_in_words(story["model"]))
    return "\n".join(lines)
