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
from mlrelease.tags import (
    TAG_AIRFLOW_DAG_ID,
    TAG_AIRFLOW_RUN_ID,
    TAG_AIRFLOW_RUN_TYPE,
    TAG_AIRFLOW_TRY_NUMBER,
    TAG_ALGORITHM,
    TAG_CANDIDATE,
    TAG_DATASET_HOLDOUT_ROWS,
    TAG_DATASET_HOLDOUT_SHA256,
    TAG_DATASET_HOLDOUT_URI,
    TAG_DATASET_SHA256,
    TAG_DATASET_SOURCE,
    TAG_DATASET_TRAIN_ROWS,
    TAG_DATASET_TRAIN_SHA256,
    TAG_DATASET_TRAIN_URI,
    TAG_GATE_CHECKS_PASSED,
    TAG_GATE_MODE,
    TAG_GATE_REASON,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_LINEAGE_CHILD_RUN_ID,
    TAG_LINEAGE_PARENT_RUN_ID,
    TAG_METRICS_PREFIX,
    TAG_PARAMS,
    TAG_REGISTERED_AT,
    TAG_TRAINING_FINISHED_AT,
    TAG_TRAINING_KEY,
    TAG_TRAINING_STARTED_AT,
    TAG_TRIGGERED_BY,
)

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
        TAG_DATASET_SHA256: fingerprint["dataset_sha256"],
        TAG_DATASET_SOURCE: fingerprint["source"],
        TAG_DATASET_TRAIN_URI: fingerprint["train"]["uri"],
        TAG_DATASET_TRAIN_SHA256: fingerprint["train"]["sha256"],
        TAG_DATASET_TRAIN_ROWS: str(fingerprint["train"]["rows"]),
        TAG_DATASET_HOLDOUT_URI: fingerprint["holdout"]["uri"],
        TAG_DATASET_HOLDOUT_SHA256: fingerprint["holdout"]["sha256"],
        TAG_DATASET_HOLDOUT_ROWS: str(fingerprint["holdout"]["rows"]),
    }


def run_context_tags(airflow: AirflowRunInfo, git: GitInfo) -> dict[str, str]:
    return {
        TAG_GIT_COMMIT: git.commit,
        TAG_GIT_DIRTY: "unknown" if git.dirty is None else str(git.dirty).lower(),
        TAG_AIRFLOW_DAG_ID: airflow.dag_id,
        TAG_AIRFLOW_RUN_ID: airflow.run_id,
        TAG_AIRFLOW_RUN_TYPE: airflow.run_type,
        TAG_AIRFLOW_TRY_NUMBER: str(airflow.try_number),
        TAG_TRIGGERED_BY: airflow.triggered_by,
        TAG_TRAINING_KEY: airflow.training_key,
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
        TAG_ALGORITHM: winner.algorithm,
        TAG_CANDIDATE: winner.candidate,
        TAG_PARAMS: json.dumps(winner.params, sort_keys=True),
        TAG_LINEAGE_PARENT_RUN_ID: parent_run_id,
        TAG_LINEAGE_CHILD_RUN_ID: winner.run_id,
        TAG_GATE_MODE: str(gate.get("mode")),
        TAG_GATE_CHECKS_PASSED: str(bool(gate.get("checks_passed"))).lower(),
        TAG_GATE_REASON: str(gate.get("reason", ""))[:4000],
        TAG_TRAINING_STARTED_AT: training_started_at,
        TAG_TRAINING_FINISHED_AT: training_finished_at,
        TAG_REGISTERED_AT: registered_at,
    }
    for key in ("test_areaUnderROC", "test_areaUnderPR", "test_accuracy", "test_f1"):
        value = winner.metric(key)
        if value is not None:
            tags[f"{TAG_METRICS_PREFIX}{key}"] = f"{value:.6f}"
    return tags


REQUIRED_LINEAGE_TAGS = (
    TAG_DATASET_SHA256,
    TAG_DATASET_TRAIN_ROWS,
    TAG_DATASET_HOLDOUT_ROWS,
    TAG_DATASET_TRAIN_URI,
    TAG_GIT_COMMIT,
    TAG_GIT_DIRTY,
    TAG_ALGORITHM,
    TAG_PARAMS,
    TAG_LINEAGE_PARENT_RUN_ID,
    TAG_LINEAGE_CHILD_RUN_ID,
    TAG_AIRFLOW_DAG_ID,
    TAG_AIRFLOW_RUN_ID,
    TAG_AIRFLOW_TRY_NUMBER,
    TAG_TRIGGERED_BY,
    TAG_TRAINING_STARTED_AT,
    TAG_TRAINING_FINISHED_AT,
    TAG_REGISTERED_AT,
)


def missing_lineage(tags: dict[str, str]) -> list[str]:
    """Lineage tags absent or empty; a version with any missing is not fit for release."""
    return [key for key in REQUIRED_LINEAGE_TAGS if not tags.get(key)]
