"""The training operators' bookkeeping on the MLflow parent run, without Spark or a scheduler.

Real MLflow (SQLite) for the parent run; the task context is the part of Airflow's that the
preparation reads (the DAG run's identity and the task instance's try number and XComs).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from mlrelease.airflow.operators import TrainCandidatesOperator
from mlrelease.backends import Backends
from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.backends.local.mlflow_store import MlflowRegistry, MlflowTracker
from mlrelease.settings import load_settings


class FakeTaskInstance:
    task_id = "train_candidates"
    try_number = 1

    def __init__(self) -> None:
        self.xcoms: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.xcoms[key] = value


@pytest.fixture
def operator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TrainCandidatesOperator:
    monkeypatch.setenv("MLRELEASE_GIT_COMMIT", "abc123")
    prepared = {}
    for role in ("train", "holdout"):
        path = tmp_path / f"{role}.parquet"
        path.write_bytes(b"")
        prepared[f"{role}_path"] = str(path)
    fingerprint = {
        "dataset_sha256": "d" * 64,
        "source": "test",
        "train": {"uri": "file:///train.parquet", "sha256": "a" * 64, "rows": 100},
        "holdout": {"uri": "file:///holdout.parquet", "sha256": "b" * 64, "rows": 50},
        "prepared": prepared,
    }
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    op = TrainCandidatesOperator(
        task_id="train_candidates", fingerprint=fingerprint, candidates=["lr_reg_0.01"]
    )
    op.__dict__["settings"] = load_settings({"MLRELEASE_HOME": str(tmp_path)})
    op.__dict__["backends"] = Backends(
        compute=SimpleNamespace(name="local"),
        tracker=MlflowTracker(uri, (tmp_path / "artifacts").as_uri()),
        registry=MlflowRegistry(uri),
        audit=SqliteAuditLog(tmp_path / "audit.db"),
        endpoints=None,
    )
    return op


def context() -> dict:
    dag_run = SimpleNamespace(
        dag_id="income_release", run_id="manual__1", run_type="manual", triggering_user_name="alice"
    )
    return {"dag_run": dag_run, "ti": FakeTaskInstance()}


def test_a_new_parent_run_says_where_it_trains_before_the_training_ends(operator):
    """A training that fails (no finish_training) still names its compute backend on the parent run."""
    prepared = operator.prepare_training(context())
    tags = operator.backends.tracker.get_run(prepared.parent_run_id).tags
    assert tags["mlrelease.compute.backend"] == "local"
    assert "mlrelease.compute_backend" not in tags  # the old spelling is no longer written
    assert tags["mlrelease.role"] == "parent"
    assert tags["mlrelease.training_key"] == "income_release/manual__1"
    assert tags["mlrelease.candidates"] == '["lr_reg_0.01"]'
    result = operator.training_result(prepared.parent_run_id, prepared.names, False)
    assert result["compute_backend"] == "local" and result["compute_run_id"] is None


def test_finish_training_records_the_compute_run_on_the_parent_run(operator):
    prepared = operator.prepare_training(context())
    with pytest.raises(RuntimeError, match=r"without child runs for \['lr_reg_0.01'\]"):
        operator.finish_training(prepared, "run-7", "http://spark/run-7")
    tags = operator.backends.tracker.get_run(prepared.parent_run_id).tags
    assert tags["mlrelease.compute.backend"] == "local"
    assert tags["mlrelease.compute.run_id"] == "run-7"
    assert tags["mlrelease.compute.run_url"] == "http://spark/run-7"
