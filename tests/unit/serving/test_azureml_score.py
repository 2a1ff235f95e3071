"""The Azure ML scoring script answers like POST /score, from the model under AZUREML_MODEL_DIR."""

from __future__ import annotations

import json

import pytest

from mlrelease.domain.payload import MAX_BODY_BYTES
from mlrelease.serving import azureml_score
from mlrelease.serving.core import ModelLoadError

from .conftest import expected_probability, lr_document, record


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    # Azure ML mounts a registered model at .../azureml-models/<name>/<version>/, with the
    # registered folder's own layout below it.
    directory = tmp_path / "azureml-models" / "income-classifier" / "7"
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "portable_model.json").write_text(json.dumps(lr_document()))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(directory))
    monkeypatch.delenv("MLRELEASE_MODEL_NAME", raising=False)
    monkeypatch.delenv("MLRELEASE_MODEL_VERSION", raising=False)
    monkeypatch.setenv("MLRELEASE_RELEASE_ID", "rel-7")
    monkeypatch.setattr(azureml_score, "_model", None)
    monkeypatch.setattr(azureml_score, "_ref", None)
    return directory


def test_init_finds_the_artifact_and_run_answers_like_the_service(model_dir):
    azureml_score.init()
    records = [record(), record(native_country="Atlantis")]
    answer = azureml_score.run(json.dumps({"data": records}))
    assert set(answer) == {"request_id", "model", "release_id", "predictions"}
    assert answer["model"] == {"name": "income-classifier", "version": "7"}
    assert answer["release_id"] == "rel-7"
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
        [expected_probability(lr_document(), r) for r in records]
    )
    assert answer["predictions"][1]["unseen_categories"] == ["native_country"]


def test_environment_names_the_model_when_the_path_does_not(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("MLRELEASE_MODEL_NAME", "income")
    monkeypatch.setenv("MLRELEASE_MODEL_VERSION", "8")
    azureml_score.init()
    assert azureml_score.run(json.dumps({"data": [record()]}))["model"] == {"name": "income", "version": "8"}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"data": [{"age": -1}]}', "data[0].age"),
        ("not json", "body"),
        (b"\xff", "body"),
        ('{"data": []}', "data"),
    ],
)
def test_bad_input_is_answered_not_raised(model_dir, raw, field):
    azureml_score.init()
    answer = azureml_score.run(raw)
    assert answer["error"] == "invalid request"
    assert field in [d["field"] for d in answer["details"]]
    assert "predictions" not in answer


def test_too_large_body_is_answered(model_dir):
    azureml_score.init()
    answer = azureml_score.run(" " * (MAX_BODY_BYTES + 1))
    assert answer["details"][0]["field"] == "body" and "too large" in answer["details"][0]["error"]


def test_run_before_init_says_so(model_dir):
    assert azureml_score.run(json.dumps({"data": [record()]}))["error"] == "no model loaded"


def test_init_without_the_artifact_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "azureml-models" / "income-classifier" / "1"
    empty.mkdir(parents=True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="no portable_model.json under AZUREML_MODEL_DIR="):
        azureml_score.init()
    monkeypatch.delenv("AZUREML_MODEL_DIR")
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR is not set"):
        azureml_score.init()


def test_init_refuses_an_artifact_that_fails_to_load(model_dir):
    (model_dir / "model" / "portable_model.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        azureml_score.init()
    assert azureml_score._model is None
