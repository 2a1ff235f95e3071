"""Releases: naming them, recording them, and reading the alias history back.

A *release* is one attempt to put one registered model version into production from one DAG run. Its id
is derived from the DAG run and the version (no clock, no counter), so a retried or cleared task talks
about the same release, and every audit record of it (deployments, check reports, the outcome) carries
that id as its subject: ``mlrelease audit release <id>`` reads them back in order.

The registry keeps only the *current* alias; the audit log keeps every move, and :func:`alias_intervals`
turns those moves into "which version was prod from when to when".
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mlrelease.tags import (
    TAG_AIRFLOW_DAG_ID,
    TAG_AIRFLOW_RUN_ID,
    TAG_ALGORITHM,
    TAG_CANDIDATE,
    TAG_DATASET_SHA256,
    TAG_DATASET_SOURCE,
    TAG_DATASET_TRAIN_ROWS,
    TAG_GIT_COMMIT,
    TAG_LINEAGE_CHILD_RUN_ID,
    TAG_LINEAGE_PARENT_RUN_ID,
    TAG_METRICS_PREFIX,
    TAG_PARAMS,
    TAG_REGISTERED_AT,
    TAG_TRIGGERED_BY,
)


class ReleaseOutcome(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled back"
    DEPLOY_FAILED = "prod deployment failed"


# Audit event kinds of the release half (the subject of each is the release id).
DEPLOYMENT = "deployment"
DEPLOYMENT_FAILED = "deployment_failed"
ENDPOINT_CHECKS = "endpoint_checks"
RELEASE_STARTED = "release_started"
RELEASE = "release"
ROLLBACK = "rollback"
ALIAS_MOVED = "alias_moved"  # subject "<model>:<alias>": the history of what was prod from when to when


def release_id_for(training_key: str, model_name: str, version: str) -> str:
    """``<model>-v<version>-<8 hex of the DAG run>``: readable, unique per DAG run and version."""
    digest = hashlib.sha256(f"{training_key}|{model_name}|{version}".encode()).hexdigest()[:8]
    return f"{model_name}-v{version}-{digest}"


@dataclass(frozen=True)
class AliasInterval:
    version: str
    release_id: str | None
    since: str
    until: str | None  # None: still current

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "release_id": self.release_id, "from": self.since, "to": self.until}


def alias_intervals(moves: list[tuple[str, str, str | None]]) -> list[AliasInterval]:
    """``[(recorded_at, version, release_id), ...]`` in log order -> one interval per move.

    A move to the version that is already current (a replayed record) extends the interval instead of
    opening a new one.
    """
    intervals: list[AliasInterval] = []
    for recorded_at, version, release_id in moves:
        if intervals and intervals[-1].version == version:
            continue
        if intervals:
            last = intervals[-1]
            intervals[-1] = AliasInterval(last.version, last.release_id, last.since, recorded_at)
        intervals.append(AliasInterval(version, release_id, recorded_at, None))
    return intervals


def lineage_summary(tags: dict[str, str]) -> dict[str, Any]:
    """The lineage an endpoint shows in ``/metadata``: from a registered version's tags."""

    return {
        "algorithm": tags.get(TAG_ALGORITHM),
        "candidate": tags.get(TAG_CANDIDATE),
        "params": tags.get(TAG_PARAMS),
        "child_run_id": tags.get(TAG_LINEAGE_CHILD_RUN_ID),
        "parent_run_id": tags.get(TAG_LINEAGE_PARENT_RUN_ID),
        "dataset_sha256": tags.get(TAG_DATASET_SHA256),
        "dataset_source": tags.get(TAG_DATASET_SOURCE),
        "train_rows": tags.get(TAG_DATASET_TRAIN_ROWS),
        "git_commit": tags.get(TAG_GIT_COMMIT),
        "dag_id": tags.get(TAG_AIRFLOW_DAG_ID),
        "dag_run_id": tags.get(TAG_AIRFLOW_RUN_ID),
        "triggered_by": tags.get(TAG_TRIGGERED_BY),
        "registered_at": tags.get(TAG_REGISTERED_AT),
        "test_areaUnderROC": tags.get(f"{TAG_METRICS_PREFIX}test_areaUnderROC"),
    }
