"""The Azure ML score script answers like POST /score and records every answer before giving it.

The inference server is not installed here (it has its own venv, see emulators/azureml/scoring_host.py):
its request is a real werkzeug request (what Flask hands ``run``) and its ``AMLResponse`` a stand-in
with the same constructor. The real server is exercised in tests/integration/test_azureml_scoring_host.py.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import types
from typing import Any

import pytest
from fastapi.testclient import TestClient
from werkzeug.test import EnvironBuilder
from werkzeug.wrappers import Request

from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.domain.payload import MAX_BODY_BYTES
from mlrelease.domain.records import PredictionRecord
from mlrelease.serving import azureml_score
from mlrelease.serving.app import create_app
from mlrelease.serving.core import ModelLoadError

from .conftest import expected_probability, lr_document, record, write_deploy

EVENTS: list[str] = []


class FakeAMLResponse:
    """``azureml_inference_server_http.api.aml_response.AMLResponse``'s constructor, recording the answer."""

    def __init__(
        self, message, status_code, response_headers=None, json_str=False, run_function_failed=False
    ):
        EVENTS.append("answer")
        assert json_str is True
        self.body = json.loads(json.dumps(message))  # what goes on the wire
        self.status_code = status_code
        self.headers = dict(response_headers or {})


class ListLog:
    """A prediction log that keeps the first record per request id, like the real stores."""

    def __init__(self) -> None:
        self.records: dict[str, PredictionRecord] = {}

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        EVENTS.append("record")
        return self.records.setdefault(record.request_id, record)


class BrokenLog:
    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        EVENTS.append("record failed")
        raise OSError("audit container unreachable (test)")


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    EVENTS.clear()
    monkeypatch.setattr(azureml_score, "_serving", None)
    monkeypatch.setattr(azureml_score, "AMLResponse", FakeAMLResponse)
    for name in (
        azureml_score.ENV_MODEL_NAME,
        azureml_score.ENV_MODEL_VERSION,
        azureml_score.ENV_PREDICTION_LOG,
        azureml_score.ENV_AUDIT_CONTAINER,
        azureml_score.ENV_AUDIT_ACCOUNT_URL,
        azureml_score.ENV_AUDIT_CONNECTION_STRING,
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    # Azure ML mounts a registered model at .../azureml-models/<name>/<version>/, with the
    # registered folder's own layout below it.
    directory = tmp_path / "azureml-models" / "income-classifier" / "7"
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "portable_model.json").write_text(json.dumps(lr_document()))
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(directory))
    monkeypatch.setenv("MLRELEASE_RELEASE_ID", "rel-7")
    monkeypatch.setenv("MLRELEASE_ENDPOINT", "test")
    return directory


@pytest.fixture
def prediction_log(model_dir) -> ListLog:
    log = ListLog()
    azureml_score.init(prediction_log=log)
    return log


def http(
    body: bytes | str = b"",
    *,
    method: str = "POST",
    content_type: str | None = "application/json",
    request_id: str | None = None,
    headers: dict[str, str] | None = None,
    drop_content_length: bool = False,
    content_length: str | None = None,
) -> Request:
    """The werkzeug request the inference server would hand ``run``."""
    all_headers = dict(headers or {})
    if request_id is not None:
        all_headers["x-request-id"] = request_id
    builder = EnvironBuilder(
        path="/score",
        method=method,
        data=body.encode() if isinstance(body, str) else body,
        headers=all_headers,
        content_type=content_type,
    )
    environ = builder.get_environ()
    if content_type is None:
        environ.pop("CONTENT_TYPE", None)
    if drop_content_length:  # a chunked upload: the server has the whole stream but no length
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    return Request(environ)


def score_json(records: list[dict[str, Any]], **kwargs: Any) -> FakeAMLResponse:
    return azureml_score.run(http(json.dumps({"data": records}), **kwargs))


# ---------------------------------------------------------------------------------------- HTTP mode


def test_scores_with_the_hand_computed_probability_and_names_the_model(prediction_log):
    records = [record(), record(native_country="Atlantis")]
    answer = score_json(records)
    assert answer.status_code == 200
    body = answer.body
    assert set(body) == {"request_id", "model", "release_id", "predictions"}
    assert body["model"] == {"name": "income-classifier", "version": "7"}
    assert body["release_id"] == "rel-7"
    assert [p["probability"] for p in body["predictions"]] == pytest.approx(
        [expected_probability(lr_document(), r) for r in records]
    )
    assert body["predictions"][1]["unseen_categories"] == ["native_country"]
    assert answer.headers["x-request-id"] == body["request_id"]


def test_the_prediction_is_recorded_before_it_is_answered(prediction_log):
    answer = score_json([record()], request_id="req-1")
    assert EVENTS == ["record", "answer"]
    stored = prediction_log.records["req-1"]
    assert (stored.status, stored.endpoint, stored.model_name, stored.model_version, stored.release_id) == (
        200,
        "test",
        "income-classifier",
        "7",
        "rel-7",
    )
    assert stored.outputs == answer.body["predictions"]
    assert stored.inputs[0]["age"] == record()["age"]
    assert stored.error is None and stored.latency_ms >= 0


def test_a_prediction_log_that_fails_means_503_and_no_prediction(model_dir, caplog):
    azureml_score.init(prediction_log=BrokenLog())
    with caplog.at_level(logging.ERROR):
        answer = score_json([record()], request_id="req-2")
    assert EVENTS == ["record failed", "answer"]
    assert answer.status_code == 503
    assert answer.body["error"] == "prediction log unavailable"
    assert answer.body["details"][0]["field"] == "prediction_log"
    assert "predictions" not in answer.body and answer.body["request_id"] == "req-2"
    assert "PREDICTION LOG WRITE FAILED for request_id=req-2" in caplog.text


def test_refused_requests_are_recorded_too(prediction_log):
    answer = score_json([{"age": -1}], request_id="bad-1")
    assert answer.status_code == 422
    stored = prediction_log.records["bad-1"]
    assert stored.status == 422 and stored.outputs is None and stored.error == answer.body
    assert stored.inputs == {"data": [{"age": -1}]}


@pytest.mark.parametrize(
    ("request_kwargs", "status", "field", "message"),
    [
        ({"body": '{"data": [{"age": -1}]}'}, 422, "data[0].age", "must be >= 0"),
        ({"body": '{"data": [{"age": -1}]}'}, 422, "data[0].workclass", "missing"),
        ({"body": '{"data": []}'}, 422, "data", "at least one record"),
        ({"body": '{"data": [], "extra": 1}'}, 422, "extra", "unknown top-level key"),
        ({"body": "not json"}, 400, "body", "not valid JSON"),
        ({"body": b"\xff"}, 400, "body", "not UTF-8"),
        ({"body": ""}, 400, "body", "is empty"),
        ({"body": "{}", "content_type": "text/plain"}, 415, "Content-Type", "must be application/json"),
        ({"body": "{}", "content_length": "abc"}, 400, "Content-Length", "not a number"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_field(prediction_log, request_kwargs, status, field, message):
    answer = azureml_score.run(http(**request_kwargs))
    assert answer.status_code == status
    assert answer.body["error"] == "invalid request"
    details = {d["field"]: d["error"] for d in answer.body["details"]}
    assert message in details[field]
    assert "predictions" not in answer.body
    assert prediction_log.records[answer.body["request_id"]].status == status


def test_no_content_type_is_accepted(prediction_log):
    answer = azureml_score.run(http(json.dumps({"data": [record()]}), content_type=None))
    assert answer.status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_a_413_and_is_not_kept(prediction_log, chunked):
    answer = azureml_score.run(http(b" " * (MAX_BODY_BYTES + 1), drop_content_length=chunked))
    assert answer.status_code == 413
    assert answer.body["details"][0]["field"] == "body"
    assert "too large" in answer.body["details"][0]["error"]
    stored = prediction_log.records[answer.body["request_id"]]
    assert stored.status == 413 and stored.inputs is None


def test_a_chunked_body_under_the_limit_is_read_whole(prediction_log):
    answer = azureml_score.run(http(json.dumps({"data": [record()] * 50}), drop_content_length=True))
    assert answer.status_code == 200 and len(answer.body["predictions"]) == 50


def test_a_sane_client_request_id_is_used_and_others_are_replaced(prediction_log):
    assert score_json([record()], request_id="client.id-42").body["request_id"] == "client.id-42"
    for bad in ("has space", "x" * 65, "semi;colon"):
        answer = score_json([record()], request_id=bad)
        assert answer.body["request_id"] != bad
        assert answer.headers["x-request-id"] == answer.body["request_id"]
        assert answer.body["request_id"] in prediction_log.records


def test_a_reused_request_id_is_recorded_and_answered_under_a_fresh_one(prediction_log):
    first = score_json([record()], request_id="same")
    second = score_json([record(age=60)], request_id="same")
    assert first.body["request_id"] == "same"
    new_id = second.body["request_id"]
    assert new_id != "same" and second.headers["x-request-id"] == new_id
    assert prediction_log.records["same"].inputs[0]["age"] == record()["age"]
    assert prediction_log.records[new_id].inputs[0]["age"] == 60


def test_every_answered_prediction_has_its_record(prediction_log):
    answers = [score_json([record(age=20 + i)]) for i in range(5)]
    for answer in answers:
        stored = prediction_log.records[answer.body["request_id"]]
        assert stored.outputs == answer.body["predictions"]


def test_wrong_method_is_a_405_and_not_a_prediction(prediction_log):
    answer = azureml_score.run(http(method="GET", content_type=None))
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "POST"
    assert answer.body["request_id"] and answer.body["error"] == "Method Not Allowed"
    assert prediction_log.records == {}


def test_an_internal_error_is_a_recorded_500_naming_the_request(prediction_log, monkeypatch, caplog):
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(azureml_score, "score_raw", explode)
    with caplog.at_level(logging.ERROR):
        answer = score_json([record()], request_id="boom")
    assert answer.status_code == 500
    assert "boom" in answer.body["details"][0]["error"]
    assert prediction_log.records["boom"].status == 500
    assert "Internal error scoring request_id=boom" in caplog.text


def test_run_before_init_is_a_503(model_dir):
    answer = score_json([record()])
    assert answer.status_code == 503 and answer.body["error"] == "no model loaded"


def test_an_http_request_without_the_inference_server_is_a_clear_error(prediction_log, monkeypatch):
    monkeypatch.setattr(azureml_score, "AMLResponse", None)
    with pytest.raises(RuntimeError, match="under azureml-inference-server-http"):
        azureml_score.run(http(json.dumps({"data": [record()]})))


# ------------------------------------------------------------------------ the same answers as /score

SAME_REQUESTS = [
    pytest.param({"data": [record(), record(native_country="Atlantis", sex="Female")]}, None, id="scored"),
    pytest.param({"data": [record(age=-1), {"age": "x"}]}, None, id="invalid-records"),
    pytest.param({"data": [record()], "label": ">50K"}, None, id="unknown-key"),
    pytest.param(b"{not json", None, id="not-json"),
    pytest.param(b"", None, id="empty"),
    pytest.param({"data": [record()]}, "text/csv", id="content-type"),
    pytest.param(b" " * (MAX_BODY_BYTES + 1), None, id="too-large"),
]


@pytest.mark.parametrize(("payload", "content_type"), SAME_REQUESTS)
def test_answers_are_those_of_the_local_service(tmp_path, model_dir, payload, content_type):
    """Status, body and request-id header are the local service's, for the same model and request."""
    state_dir = tmp_path / "local" / "endpoints" / "test"
    write_deploy(state_dir, lr_document(), version="7", release_id="rel-7")
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    headers = {"x-request-id": "same-id", "content-type": content_type or "application/json"}
    app = create_app("test", state_dir, SqliteAuditLog(tmp_path / "local-audit.db"))
    with TestClient(app, client=("127.0.0.1", 50000)) as client:
        local = client.post("/score", content=data, headers=headers)

    azure_log = SqliteAuditLog(tmp_path / "azure-audit.db")
    azureml_score.init(prediction_log=azure_log)
    answer = azureml_score.run(
        http(data, request_id="same-id", content_type=content_type or "application/json")
    )

    assert (answer.status_code, answer.body) == (local.status_code, local.json())
    assert answer.headers["x-request-id"] == local.headers["x-request-id"] == "same-id"
    stored = azure_log.get_prediction("same-id")
    assert stored is not None and stored.status == local.status_code


# ---------------------------------------------------------------------------------------- plain mode


def test_plain_mode_scores_a_raw_body(prediction_log):
    answer = azureml_score.run(json.dumps({"data": [record()]}))
    assert set(answer) == {"request_id", "model", "release_id", "predictions"}
    assert prediction_log.records[answer["request_id"]].outputs == answer["predictions"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ('{"data": [{"age": -1}]}', "data[0].age"),
        ("not json", "body"),
        (b"\xff", "body"),
        ('{"data": []}', "data"),
        (" " * (MAX_BODY_BYTES + 1), "body"),
    ],
)
def test_plain_mode_answers_bad_input_with_the_error_body(prediction_log, raw, field):
    answer = azureml_score.run(raw)
    assert answer["error"] == "invalid request"
    assert field in [d["field"] for d in answer["details"]]
    assert "predictions" not in answer
    assert prediction_log.records[answer["request_id"]].status in (400, 413, 422)


def test_plain_mode_raises_rather_than_answer_a_5xx_as_200(model_dir):
    azureml_score.init(prediction_log=BrokenLog())
    with pytest.raises(azureml_score.ScoringUnavailableError) as raised:
        azureml_score.run(json.dumps({"data": [record()]}))
    assert raised.value.status == 503 and "predictions" not in raised.value.body
    azureml_score._serving = None
    with pytest.raises(azureml_score.ScoringUnavailableError, match="no model loaded"):
        azureml_score.run(json.dumps({"data": [record()]}))


# ----------------------------------------------------------------------------------------------- init


def test_environment_names_the_model_when_the_path_does_not(model_dir, monkeypatch):
    monkeypatch.setenv("MLRELEASE_MODEL_NAME", "income")
    monkeypatch.setenv("MLRELEASE_MODEL_VERSION", "8")
    azureml_score.init(prediction_log=ListLog())
    assert azureml_score.run(json.dumps({"data": [record()]}))["model"] == {"name": "income", "version": "8"}


def test_init_without_the_artifact_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "azureml-models" / "income-classifier" / "1"
    empty.mkdir(parents=True)
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(empty))
    with pytest.raises(FileNotFoundError, match="no portable_model.json under AZUREML_MODEL_DIR="):
        azureml_score.init(prediction_log=ListLog())
    monkeypatch.delenv("AZUREML_MODEL_DIR")
    with pytest.raises(RuntimeError, match="AZUREML_MODEL_DIR is not set"):
        azureml_score.init(prediction_log=ListLog())


def test_init_refuses_an_artifact_that_fails_to_load(model_dir):
    (model_dir / "model" / "portable_model.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        azureml_score.init(prediction_log=ListLog())
    assert azureml_score._serving is None


def test_init_refuses_a_model_that_fails_its_self_test(model_dir, monkeypatch):
    from mlrelease.serving.portable import PortableModel, Scored

    monkeypatch.setattr(PortableModel, "score", lambda self, records: [Scored(math.nan, ">50K", ())])
    with pytest.raises(ModelLoadError, match="self-test failed"):
        azureml_score.init(prediction_log=ListLog())
    assert azureml_score._serving is None


def test_init_needs_the_endpoint_name(model_dir, monkeypatch):
    monkeypatch.delenv("MLRELEASE_ENDPOINT")
    with pytest.raises(RuntimeError, match="MLRELEASE_ENDPOINT is not set"):
        azureml_score.init(prediction_log=ListLog())


def test_init_refuses_an_unset_prediction_log(model_dir):
    with pytest.raises(RuntimeError, match="MLRELEASE_PREDICTION_LOG='\\(unset\\)' is not one of blob, none"):
        azureml_score.init()
    assert azureml_score._serving is None


def test_none_must_be_explicit_and_is_warned_at_every_init(model_dir, monkeypatch, caplog):
    monkeypatch.setenv("MLRELEASE_PREDICTION_LOG", "none")
    with caplog.at_level(logging.WARNING):
        azureml_score.init()
        azureml_score.init()
    assert caplog.text.count("records NO predictions") == 2
    assert isinstance(azureml_score._serving.prediction_log, azureml_score.NoPredictionLog)
    assert azureml_score.run(json.dumps({"data": [record()]}))["predictions"]


class FakeBlobAuditLog:
    calls: list[tuple[Any, ...]] = []

    @classmethod
    def from_connection_string(cls, conn_str: str, container: str, client_options: dict) -> FakeBlobAuditLog:
        cls.calls.append(("connection_string", conn_str, container))
        cls.client_options = client_options
        return cls()

    @classmethod
    def from_account_url(
        cls, account_url: str, credential: Any, container: str, client_options: dict
    ) -> FakeBlobAuditLog:
        cls.calls.append(("account_url", account_url, type(credential).__name__, container))
        cls.client_options = client_options
        return cls()

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        return record


@pytest.fixture
def fake_blob_module(monkeypatch):
    FakeBlobAuditLog.calls = []
    module = types.ModuleType("mlrelease.backends.azure.blob_audit")
    module.BlobAuditLog = FakeBlobAuditLog
    monkeypatch.setitem(sys.modules, "mlrelease.backends.azure.blob_audit", module)
    return FakeBlobAuditLog


def test_blob_log_with_a_connection_string(model_dir, monkeypatch, fake_blob_module, caplog):
    monkeypatch.setenv("MLRELEASE_PREDICTION_LOG", "blob")
    monkeypatch.setenv("MLRELEASE_AUDIT_CONTAINER", "audit")
    secret = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=c2VjcmV0;"
    monkeypatch.setenv("MLRELEASE_AUDIT_BLOB_CONNECTION_STRING", secret)
    with caplog.at_level(logging.INFO):
        azureml_score.init()
    assert fake_blob_module.calls == [("connection_string", secret, "audit")]
    assert "c2VjcmV0" not in caplog.text
    # A store that is down must give a prompt 503, not minutes of azure-core retries per request.
    assert fake_blob_module.client_options["retry_total"] <= 1
    assert fake_blob_module.client_options["read_timeout"] <= 10


def test_blob_log_with_managed_identity(model_dir, monkeypatch, fake_blob_module):
    monkeypatch.setenv("MLRELEASE_PREDICTION_LOG", "blob")
    monkeypatch.setenv("MLRELEASE_AUDIT_CONTAINER", "audit")
    monkeypatch.setenv("MLRELEASE_AUDIT_BLOB_ACCOUNT_URL", "https://acct.blob.core.windows.net")
    azureml_score.init()
    assert fake_blob_module.calls == [
        ("account_url", "https://acct.blob.core.windows.net", "DefaultAzureCredential", "audit")
    ]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"MLRELEASE_PREDICTION_LOG": "sqlite"}, "'sqlite' is not one of blob, none"),
        ({"MLRELEASE_PREDICTION_LOG": "blob"}, "MLRELEASE_AUDIT_CONTAINER is not set"),
        (
            {"MLRELEASE_PREDICTION_LOG": "blob", "MLRELEASE_AUDIT_CONTAINER": "audit"},
            "exactly one of .* got neither",
        ),
        (
            {
                "MLRELEASE_PREDICTION_LOG": "blob",
                "MLRELEASE_AUDIT_CONTAINER": "audit",
                "MLRELEASE_AUDIT_BLOB_ACCOUNT_URL": "https://a",
                "MLRELEASE_AUDIT_BLOB_CONNECTION_STRING": "x",
            },
            "exactly one of .* got both",
        ),
    ],
)
def test_an_incomplete_prediction_log_setting_names_the_variable(fake_blob_module, environ, message):
    with pytest.raises(RuntimeError, match=message):
        azureml_score.prediction_log_from_env(environ)


def test_a_code_package_without_the_blob_store_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlrelease.backends.azure.blob_audit", None)
    environ = {
        "MLRELEASE_PREDICTION_LOG": "blob",
        "MLRELEASE_AUDIT_CONTAINER": "audit",
        "MLRELEASE_AUDIT_BLOB_CONNECTION_STRING": "x",
    }
    with pytest.raises(
        RuntimeError, match="code package must contain mlrelease/backends/azure/blob_audit.py"
    ):
        azureml_score.prediction_log_from_env(environ)
