"""The local registry against a real MLflow SQLite store: idempotent registration, aliases."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from mlrelease.backends.local.mlflow_store import MlflowRegistry, MlflowTracker

MODEL = "income-classifier-test"


class TinyModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [0] * len(model_input)


@pytest.fixture
def store(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, (tmp_path / "artifacts").as_uri())
    experiment_id = tracker.experiment_id("exp")
    client = tracker.client
    run = client.create_run(experiment_id, run_name="child")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_id=run.info.run_id):
            info = mlflow.pyfunc.log_model(name="model", python_model=TinyModel())
    finally:
        mlflow.set_tracking_uri(previous)
    return tracker, MlflowRegistry(uri), run.info.run_id, info.model_uri


def test_register_is_keyed_by_training_run_and_carries_tags(store):
    tracker, registry, run_id, model_uri = store
    assert registry.find_version_for_run(MODEL, run_id) is None
    first = registry.register(MODEL, model_uri, run_id, {"mlrelease.dataset.sha256": "abc"})
    assert first.version == "1" and first.tags["mlrelease.dataset.sha256"] == "abc"
    again = registry.find_version_for_run(MODEL, run_id)
    assert again is not None and again.version == "1"
    assert again.tags == first.tags
    assert len(tracker.client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_aliases(store):
    _, registry, run_id, model_uri = store
    assert registry.get_by_alias(MODEL, "prod") is None  # no registered model at all yet
    version = registry.register(MODEL, model_uri, run_id, {})
    assert registry.get_by_alias(MODEL, "prod") is None  # model exists, alias does not
    registry.set_alias(MODEL, "prod", version.version)
    assert registry.get_by_alias(MODEL, "prod").version == version.version
    assert registry.get_by_alias(MODEL, "prod").uri == f"models:/{MODEL}/1"


def test_parent_runs_are_found_by_training_key(store, tmp_path):
    tracker, _, _, _ = store
    experiment_id = tracker.experiment_id("exp")
    assert tracker.experiment_id("exp") == experiment_id  # found, not created twice
    train = tmp_path / "train.parquet"
    train.write_bytes(b"x")
    fingerprint = {
        "prepared": {"train_path": str(train), "holdout_path": str(train)},
        "train": {"uri": "file:///train.csv", "sha256": "a" * 64},
        "holdout": {"uri": "file:///holdout.csv", "sha256": "b" * 64},
    }
    assert tracker.find_parent_run(experiment_id, "dag/run'1") is None
    parent = tracker.create_parent_run(
        experiment_id, "p", {"mlrelease.training_key": "dag/run'1"}, fingerprint
    )
    found = tracker.find_parent_run(experiment_id, "dag/run'1")
    assert found is not None and found.run_id == parent.run_id
    assert tracker.find_parent_run(experiment_id, "dag/run2") is None
    assert tracker.find_parent_run(experiment_id).run_id == parent.run_id
    inputs = tracker.client.get_run(parent.run_id).inputs.dataset_inputs
    assert sorted(i.dataset.digest for i in inputs) == ["a" * 32, "b" * 32]
