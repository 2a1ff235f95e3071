"""Lineage: the tags that let a model version answer "where did you come from?".

Model M (name, version) was trained on dataset D (sha256, rows, source) with algorithm A (and its
parameters) in training run T (MLflow parent and child run ids) from code C (git commit, dirty or not)
by person P (who triggered the Airflow DAG run, or ``scheduler``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mlrelease.domain.selection import CandidateResult

TAG_PREFIX = "mlrelease."
SCHEDULER_USER = "scheduler"


@dataclass(frozen=True)
class AirflowRunInfo:
    dag_id: str
    run_id: str
    try_number: int
    run_type: str
    triggered_by: str

    @property
    def training_key(self) -> str:
        """Deterministic key of one DAG run's training: a retry finds the same key."""
        return f"{self.dag_id}/{self.run_id}"


def triggering_user(run_type: str, triggering_user_name: str | None) -> str:
    """Who caused this run: the UI/API user for manual runs, ``scheduler`` for scheduled ones."""
    if run_type == "scheduled":
        return SCHEDULER_USER
    return triggering_user_name or f"unknown ({run_type} run, no triggering user recorded)"


@dataclass(frozen=True)
class GitInfo:
    commit: str
    dirty: bool | None

    def describe(self) -> str:
        state = "unknown" if self.dirty is None else ("dirty" if self.dirty else "clean")
        return f"{self.commit} ({state} tree)"


def dataset_tags(fingerprint: dict) -> dict[str, str]:
    return {
        "mlrelease.dataset.sha256": fingerprint["dataset_sha256"],
        "mlrelease.dataset.source": fingerprint["source"],
        "mlrelease.dataset.train_uri": fingerprint["train"]["uri"],
        "mlrelease.dataset.train_sha256": fingerprint["train"]["sha256"],
        "mlrelease.dataset.train_rows": str(fingerprint["train"]["rows"]),
        "mlrelease.dataset.holdout_uri": fingerprint["holdout"]["uri"],
        "mlrelease.dataset.holdout_sha256": fingerprint["holdout"]["sha256"],
        "mlrelease.dataset.holdout_rows": str(fingerprint["holdout"]["rows"]),
    }


def run_context_tags(airflow: AirflowRunInfo, git: GitInfo) -> dict[str, str]:
    return {
        "mlrelease.git.commit": git.commit,
        "mlrelease.git.dirty": "unknown" if git.dirty is None else str(git.dirty).lower(),
        "mlrelease.airflow.dag_id": airflow.dag_id,
        "mlrelease.airflow.run_id": airflow.run_id,
        "mlrelease.airflow.run_type": airflow.run_type,
        "mlrelease.airflow.try_number": str(airflow.try_number),
        "mlrelease.triggered_by": airflow.triggered_by,
        "mlrelease.training_key": airflow.training_key,
    }


def model_version_tags(
    *,
    fingerprint: dict,
    airflow: AirflowRunInfo,
    git: GitInfo,
    winner: CandidateResult,
    parent_run_id: str,
    gate: dict[str, Any],
    training_started_at: str,
    training_finished_at: str,
    registered_at: str,
) -> dict[str, str]:
    """Every lineage fact as a string tag for the registered model version."""
    tags = {
        **dataset_tags(fingerprint),
        **run_context_tags(airflow, git),
        "mlrelease.algorithm": winner.algorithm,
        "mlrelease.candidate": winner.candidate,
        "mlrelease.params": json.dumps(winner.params, sort_keys=True),
        "mlrelease.parent_run_id": parent_run_id,
        "mlrelease.child_run_id": winner.run_id,
        "mlrelease.gate.mode": str(gate.get("mode")),
        "mlrelease.gate.checks_passed": str(bool(gate.get("checks_passed"))).lower(),
        "mlrelease.gate.reason": str(gate.get("reason", ""))[:4000],
        "mlrelease.training.started_at": training_started_at,
        "mlrelease.training.finished_at": training_finished_at,
        "mlrelease.registered_at": registered_at,
    }
    for key in ("test_areaUnderROC", "test_areaUnderPR", "test_accuracy", "test_f1"):
        value = winner.metric(key)
        if value is not None:
            tags[f"mlrelease.metrics.{key}"] = f"{value:.6f}"
    return tags


REQUIRED_LINEAGE_TAGS = (
    "mlrelease.dataset.sha256",
    "mlrelease.dataset.train_rows",
    "mlrelease.dataset.holdout_rows",
    "mlrelease.dataset.train_uri",
    "mlrelease.git.commit",
    "mlrelease.git.dirty",
    "mlrelease.algorithm",
    "mlrelease.params",
    "mlrelease.parent_run_id",
    "mlrelease.child_run_id",
    "mlrelease.airflow.dag_id",
    "mlrelease.airflow.run_id",
    "mlrelease.airflow.try_number",
    "mlrelease.triggered_by",
    "mlrelease.training.started_at",
    "mlrelease.training.finished_at",
    "mlrelease.registered_at",
)


def missing_lineage(tags: dict[str, str]) -> list[str]:
    """Lineage tags absent or empty; a version with any missing is not fit for release."""
    return [key for key in REQUIRED_LINEAGE_TAGS if not tags.get(key)]
