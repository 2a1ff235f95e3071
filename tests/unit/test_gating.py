"""The gate's rules without Airflow: the recorded decision (audit log) is what registration trusts.

Real MLflow (SQLite) for the runs and a real append-only audit store; no Spark: the child runs are
made with their metrics directly, as the training job would leave them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrelease.backends import Backends
from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.backends.local.mlflow_store import MlflowRegistry, MlflowTracker
from mlrelease.domain.gate import GatePolicy
from mlrelease.domain.lineage import AirflowRunInfo
from mlrelease.gating import GateRefused, recorded_gate, register_winner, select_and_gate
from mlrelease.settings import load_settings

FINGERPRINT = {
    "dataset_sha256": "d" * 64,
    "source": "test",
    "train": {"uri": "file:///train.parquet", "sha256": "a" * 64, "rows": 100},
    "holdout": {"uri": "file:///holdout.parquet", "sha256": "b" * 64, "rows": 50},
}
RUN = AirflowRunInfo("income_release", "manual__1", 1, "manual", "alice")


@pytest.fixture
def world(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, (tmp_path / "artifacts").as_uri())
    backends = Backends(
        compute=None,
        tracker=tracker,
        registry=MlflowRegistry(uri),
        audit=SqliteAuditLog(tmp_path / "a.db"),
        endpoints=None,
    )
    experiment = tracker.experiment_id("exp")
    client = tracker.client
    parent = client.create_run(experiment, tags={"mlrelease.role": "parent"}).info.run_id
    children = {}
    for name, val, test in (("good", 0.91, 0.90), ("weak", 0.85, 0.84)):
        child = client.create_run(
            experiment,
            run_name=name,
            tags={
                "mlflow.parentRunId": parent,
                "mlrelease.candidate": name,
                "mlrelease.algorithm": "LogisticRegression",
                "mlrelease.model_uri": f"runs:/placeholder/{name}",
            },
        ).info.run_id
        client.log_metric(child, "val_areaUnderROC", val)
        client.log_metric(child, "test_areaUnderROC", test)
        client.set_terminated(child, "FINISHED")
        children[name] = child
    settings = load_settings({"MLRELEASE_HOME": str(tmp_path)})
    return backends, settings, parent, children


def test_rejection_is_recorded_and_registration_refuses_it(world):
    backends, settings, parent, _ = world
    outcome = select_and_gate(backends, parent, "areaUnderROC", GatePolicy(min_value=0.95))
    assert not outcome.decision.approved and outcome.winner.candidate == "good"
    with pytest.raises(GateRefused, match="did not approve"):
        register_winner(backends, settings, parent, FINGERPRINT, RUN)


def test_first_recorded_decision_stands_when_the_gate_is_cleared_and_rerun(world):
    backends, settings, parent, children = world
    select_and_gate(backends, parent, "areaUnderROC", GatePolicy(min_value=0.95))
    # Someone clears the gate task and re-runs it with a laxer bar: the append-only record keeps the first.
    again = select_and_gate(backends, parent, "areaUnderROC", GatePolicy(min_value=0.5))
    assert not again.decision.approved
    assert recorded_gate(backends, parent).winner.run_id == children["good"]


def test_no_recorded_decision_means_no_registration(world):
    backends, settings, parent, _ = world
    with pytest.raises(GateRefused, match="no gate decision is recorded"):
        register_winner(backends, settings, parent, FINGERPRINT, RUN)
