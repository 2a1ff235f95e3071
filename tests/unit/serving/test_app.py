"""The HTTP contract of the scoring service, against a real SQLite prediction log and a hand-built model."""

from __future__ import annotations

import json
import math
import threading

import pytest
from fastapi.testclient import TestClient

from mlrelease.domain.payload import MAX_BODY_BYTES, MAX_RECORDS
from mlrelease.domain.records import PredictionRecord
from mlrelease.domain.schema import NEGATIVE_LABEL, POSITIVE_LABEL
from mlrelease.serving.app import create_app

from .conftest import expected_probability, lr_document, record

LOOPBACK = ("127.0.0.1", 50000)


@pytest.fixture
def make_client(state_dir, audit):
    clients = []

    def _make(prediction_log=None, client=LOOPBACK, **kwargs):
        app = create_app("test", state_dir, prediction_log or audit)
        test_client = TestClient(app, client=client, **kwargs)
        test_client.__enter__()  # runs the lifespan (loads desired.json)
        clients.append(test_client)
        return test_client

    yield _make
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def client(deploy, make_client):
    deploy()
    return make_client()


def logged(audit, response) -> PredictionRecord:
    request_id = response.headers["x-request-id"]
    stored = audit.get_prediction(request_id)
    assert stored is not None, f"request {request_id} is not in the prediction log"
    return stored


# ------------------------------------------------------------------ scoring


def test_scores_each_record_in_order_with_the_hand_computed_probability(client, audit):
    document = lr_document()
    records = [
        record(),
        record(
            marital_status="Married-civ-spouse", occupation="Exec-managerial", education="Masters", age=52
        ),
        record(age=20, hours_per_week=10, capital_gain=0, sex="Female"),
    ]
    response = client.post("/score", json={"data": records})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": "income-classifier", "version": "1"}
    assert body["release_id"] == "rel-1"
    assert body["request_id"] == response.headers["x-request-id"]
    predictions = body["predictions"]
    assert len(predictions) == 3
    for got, sent in zip(predictions, records, strict=True):
        want = expected_probability(document, sent)
        assert got["probability"] == pytest.approx(want, abs=1e-12)
        assert got["label"] == (POSITIVE_LABEL if want > 0.5 else NEGATIVE_LABEL)
        assert got["unseen_categories"] == []
    assert [p["label"] for p in predictions] == [NEGATIVE_LABEL, POSITIVE_LABEL, NEGATIVE_LABEL]

    stored = logged(audit, response)
    assert (stored.status, stored.endpoint, stored.model_name, stored.model_version, stored.release_id) == (
        200,
        "test",
        "income-classifier",
        "1",
        "rel-1",
    )
    assert stored.outputs == predictions
    assert [r["age"] for r in stored.inputs] == [39, 52, 20]
    assert stored.error is None and stored.latency_ms > 0


def test_a_batch_of_1000_records_is_accepted(client, audit):
    records = [record(age=17 + i % 70, hours_per_week=i % 99) for i in range(1000)]
    response = client.post("/score", json={"data": records})
    assert response.status_code == 200
    assert len(response.json()["predictions"]) == 1000
    assert len(logged(audit, response).outputs) == 1000


def test_unseen_category_is_scored_as_unknown_and_flagged(client):
    response = client.post(
        "/score", json={"data": [record(native_country="Atlantis", workclass="Freelance")]}
    )
    assert response.status_code == 200
    [prediction] = response.json()["predictions"]
    assert sorted(prediction["unseen_categories"]) == ["native_country", "workclass"]
    # An unseen value contributes nothing (all-zero block): same as a value whose weight is 0.
    known = client.post("/score", json={"data": [record(native_country="Mexico", workclass="State-gov")]})
    assert prediction["probability"] == pytest.approx(known.json()["predictions"][0]["probability"])


def test_client_request_id_is_used_when_sane_and_replaced_otherwise(client, audit):
    sane = client.post("/score", json={"data": [record()]}, headers={"X-Request-ID": "batch-42.a_b"})
    assert sane.headers["x-request-id"] == "batch-42.a_b" == sane.json()["request_id"]
    for bad in ("has space", "x" * 65, "semi;colon"):
        response = client.post("/score", json={"data": [record()]}, headers={"X-Request-ID": bad})
        assert response.headers["x-request-id"] != bad
        assert len(response.headers["x-request-id"]) == 32
        assert audit.get_prediction(response.headers["x-request-id"]) is not None


def test_a_reused_request_id_is_recorded_under_a_fresh_one(client, audit):
    first = client.post("/score", json={"data": [record(age=30)]}, headers={"X-Request-ID": "same"})
    second = client.post("/score", json={"data": [record(age=60)]}, headers={"X-Request-ID": "same"})
    assert first.headers["x-request-id"] == "same"
    assert second.status_code == 200 and second.headers["x-request-id"] != "same"
    assert second.json()["request_id"] == second.headers["x-request-id"]
    assert audit.get_prediction("same").inputs[0]["age"] == 30
    assert logged(audit, second).inputs[0]["age"] == 60


# ------------------------------------------------------------------ bad input: 4xx, named field, logged

MISSING_SEX = {k: v for k, v in record().items() if k != "sex"}


@pytest.mark.parametrize(
    ("body", "status", "field", "message"),
    [
        ({"data": [MISSING_SEX]}, 422, "data[0].sex", "missing"),
        (
            {"data": [record(), record(age="39")]},
            422,
            "data[1].age",
            "must be a JSON number, got string '39'",
        ),
        ({"data": [record(age=-4)]}, 422, "data[0].age", "must be >= 0, got -4"),
        ({"data": []}, 422, "data", "at least one record"),
        ({"data": [record(workclass=None)]}, 422, "data[0].workclass", 'got null; send "?"'),
        ([record()], 422, "body", "must be a JSON object"),
        ({"records": [record()]}, 422, "data", "missing"),
        ({"data": [record(hours_per_week=169)]}, 422, "data[0].hours_per_week", "must be <= 168"),
    ],
)
def test_invalid_json_body_is_refused_naming_the_field(client, audit, body, status, field, message):
    response = client.post("/score", json=body)
    assert response.status_code == status
    answer = response.json()
    assert answer["error"] == "invalid request"
    assert answer["request_id"] == response.headers["x-request-id"]
    by_field = {d["field"]: d["error"] for d in answer["details"]}
    assert message in by_field[field]
    stored = logged(audit, response)
    assert stored.status == status and stored.outputs is None
    assert stored.error == answer
    assert stored.inputs == body


def test_too_many_records_is_refused(client, audit):
    response = client.post("/score", json={"data": [record()] * (MAX_RECORDS + 1)})
    assert response.status_code == 422
    assert response.json()["details"][0]["field"] == "data"
    assert "too many records" in response.json()["details"][0]["error"]
    assert logged(audit, response).status == 422


def test_every_problem_of_a_batch_is_listed(client):
    response = client.post("/score", json={"data": [record(age=-1), MISSING_SEX, record(race=3)]})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["details"]] == ["data[0].age", "data[1].sex", "data[2].race"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"data": [', "is not valid JSON"),
        (b"", "is empty"),
        (b"\xff\xfe{}", "is not UTF-8"),
        (b'{"data": [{"age": NaN}]}', "NaN is not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON"),
    ],
)
def test_body_that_is_not_json_is_a_400(client, audit, content, message):
    response = client.post("/score", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    [detail] = response.json()["details"]
    assert detail["field"] == "body" and message in detail["error"]
    stored = logged(audit, response)
    assert stored.status == 400 and stored.inputs is None and stored.error == response.json()


def test_body_larger_than_the_limit_is_a_413_by_content_length(client, audit):
    content = b'{"data": [' + b" " * MAX_BODY_BYTES + b"]}"
    response = client.post("/score", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    [detail] = response.json()["details"]
    assert detail["field"] == "body" and f"Content-Length {len(content)}" in detail["error"]
    stored = logged(audit, response)
    assert (
        stored.status == 413
        and stored.inputs is None
        and "without its inputs" in stored.error["details"][0]["error"]
    )


def test_body_larger_than_the_limit_is_a_413_when_streamed_without_length(client, audit):
    def chunks():
        for _ in range(9):
            yield b" " * (1024 * 1024)

    response = client.post("/score", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.request.headers.get("content-length") is None
    assert response.status_code == 413
    assert f"more than {MAX_BODY_BYTES} bytes" in response.json()["details"][0]["error"]
    assert logged(audit, response).status == 413


def test_non_json_content_type_is_a_415_and_absent_is_accepted(client, audit):
    body = json.dumps({"data": [record()]}).encode()
    refused = client.post("/score", content=body, headers={"Content-Type": "text/csv"})
    assert refused.status_code == 415
    assert refused.json()["details"][0]["field"] == "Content-Type"
    assert logged(audit, refused).status == 415
    accepted = client.post("/score", content=body)
    assert accepted.request.headers.get("content-type") is None
    assert accepted.status_code == 200
    charset = client.post("/score", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert charset.status_code == 200


def test_malformed_content_length_is_a_400(client, audit):
    request = client.build_request(
        "POST", "/score", content=b"{}", headers={"Content-Type": "application/json"}
    )
    request.headers["Content-Length"] = "lots"
    response = client.send(request)
    assert response.status_code == 400
    assert response.json()["details"][0]["field"] == "Content-Length"


def test_absurd_numbers_are_a_422_not_a_nan(client):
    response = client.post(
        "/score", json={"data": [record(capital_gain=1e308, capital_loss=1e308, fnlwgt=1e308)]}
    )
    # The weights are all positive, so this overflows to P=1 rather than NaN: a valid answer.
    assert response.status_code == 200
    assert response.json()["predictions"][0]["probability"] == 1.0


def test_a_non_finite_model_output_is_a_422_naming_the_record(client, monkeypatch):
    from mlrelease.serving import core

    real = core.predictions_for

    def with_overflow(model, records):
        predictions = real(model, records)
        predictions[1]["probability"] = math.nan
        return predictions

    monkeypatch.setattr(core, "predictions_for", with_overflow)
    response = client.post("/score", json={"data": [record(), record(capital_gain=1e308)]})
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["details"]] == ["data[1]"]


def test_framework_validation_errors_use_the_same_error_shape(client):
    @client.app.get("/typed")
    def typed(n: int) -> dict:
        return {"n": n}

    response = client.get("/typed", params={"n": "abc"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid request" and body["request_id"] == response.headers["x-request-id"]
    assert body["details"][0]["field"] == "query.n"


def test_wrong_method_and_unknown_path_answer_json_with_a_request_id(client):
    response = client.get("/score")
    assert response.status_code == 405
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert client.get("/nope").status_code == 404


# ------------------------------------------------------------------ readiness and reloads


def test_not_ready_without_a_deploy_then_ready_after_reload(deploy, make_client, audit, state_dir):
    client = make_client()
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "not ready"
    assert health.json()["reason"].startswith("no model loaded: ")
    assert client.get("/metadata").status_code == 503

    refused = client.post("/score", json={"data": [record()]})
    assert refused.status_code == 503
    stored = logged(audit, refused)
    assert stored.status == 503 and stored.model_version is None and stored.inputs[0]["age"] == 39
    # Invalid input is still a 422 on a cold endpoint.
    assert client.post("/score", json={"data": []}).status_code == 422

    missing = client.post("/admin/reload")
    assert missing.status_code == 409
    assert missing.json()["still_serving"] is None and "desired.json" in missing.json()["error"]

    deploy()
    reloaded = client.post("/admin/reload")
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["status"] == "loaded"
    assert client.get("/health").json() == {
        "status": "ready",
        "model": {"name": "income-classifier", "version": "1"},
        "release_id": "rel-1",
    }
    serving = json.loads((state_dir / "serving.json").read_text())
    desired = json.loads((state_dir / "desired.json").read_text())
    assert serving == {**desired, "loaded_at": serving["loaded_at"]}


def test_metadata_describes_the_served_model(client, state_dir):
    metadata = client.get("/metadata").json()
    desired = json.loads((state_dir / "desired.json").read_text())
    assert metadata == {
        "endpoint": "test",
        "stage": "test",
        "model": {"name": "income-classifier", "version": "1"},
        "release_id": "rel-1",
        "algorithm": "LogisticRegression",
        "spark_version": "4.3.0",
        "artifact_sha256": desired["artifact_sha256"],
        "lineage": desired["lineage"],
        "deployed_at": desired["deployed_at"],
        "loaded_at": metadata["loaded_at"],
        "limits": {"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY_BYTES},
    }


def test_reload_swaps_the_version_and_the_log_follows(client, deploy, audit):
    before = client.post("/score", json={"data": [record()]})
    deploy(lr_document(intercept=-1.0), version="2", release_id="rel-2")
    response = client.post("/admin/reload")
    assert response.status_code == 200 and response.json()["model"]["version"] == "2"
    after = client.post("/score", json={"data": [record()]})
    assert after.json()["model"] == {"name": "income-classifier", "version": "2"}
    assert after.json()["predictions"][0]["probability"] == pytest.approx(
        expected_probability(lr_document(intercept=-1.0), record())
    )
    assert (logged(audit, before).model_version, logged(audit, before).release_id) == ("1", "rel-1")
    assert (logged(audit, after).model_version, logged(audit, after).release_id) == ("2", "rel-2")


def test_reload_of_what_already_serves_is_a_no_op(client):
    loaded_at = client.get("/metadata").json()["loaded_at"]
    response = client.post("/admin/reload")
    assert response.status_code == 200
    assert response.json()["status"] == "unchanged"
    assert client.get("/metadata").json()["loaded_at"] == loaded_at


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ({"sha256": "0" * 64}, "has sha256"),
        ({"document": b"{not json"}, "could not be loaded"),
        ({"document": {"format": "something-else"}}, "could not be loaded"),
        ({"document": lr_document(numeric_weights={"age": math.nan})}, "must be a finite number"),
    ],
)
def test_a_broken_artifact_is_refused_and_the_old_model_keeps_serving(
    client, deploy, state_dir, broken, message
):
    serving_before = (state_dir / "serving.json").read_text()
    kwargs = {"version": "2", "release_id": "rel-2"}
    if "sha256" in broken:
        kwargs["sha256"] = broken["sha256"]
    deploy(broken.get("document", lr_document()), **kwargs)
    response = client.post("/admin/reload")
    assert response.status_code == 409
    assert message in response.json()["error"]
    assert response.json()["still_serving"] == {
        "name": "income-classifier",
        "version": "1",
        "release_id": "rel-1",
    }
    assert client.get("/health").status_code == 200
    score = client.post("/score", json={"data": [record()]})
    assert score.status_code == 200 and score.json()["model"]["version"] == "1"
    assert (state_dir / "serving.json").read_text() == serving_before


def test_a_model_that_fails_its_self_test_is_refused(client, deploy, monkeypatch):
    from mlrelease.serving.portable import PortableModel, Scored

    deploy(lr_document(intercept=3.0), version="2", release_id="rel-2")
    monkeypatch.setattr(PortableModel, "score", lambda self, records: [Scored(math.nan, POSITIVE_LABEL, ())])
    response = client.post("/admin/reload")
    assert response.status_code == 409
    assert "self-test failed: a known-good record scored P(>50K)=nan" in response.json()["error"]
    assert response.json()["still_serving"]["version"] == "1"


def test_a_broken_desired_json_is_refused(client, state_dir):
    (state_dir / "desired.json").write_text('{"model": {"name": "m"}}')
    response = client.post("/admin/reload")
    assert response.status_code == 409
    assert '"model": {"name", "version"}' in response.json()["error"]
    assert client.get("/health").status_code == 200


def test_a_broken_deploy_at_startup_leaves_the_endpoint_not_ready_with_the_reason(deploy, make_client):
    deploy(sha256="f" * 64)
    client = make_client()
    health = client.get("/health")
    assert health.status_code == 503 and "has sha256" in health.json()["reason"]


def test_reload_is_refused_to_non_loopback_clients(deploy, make_client):
    deploy()
    client = make_client(client=("10.1.2.3", 40000))
    response = client.post("/admin/reload")
    assert response.status_code == 403
    assert "loopback" in response.json()["error"]
    assert make_client(client=("::1", 40000)).post("/admin/reload").status_code == 200


def test_scoring_never_fails_while_reloads_swap_models(client, deploy):
    failures, stop = [], threading.Event()

    def reloader():
        version = 2
        while not stop.is_set():
            deploy(
                lr_document(intercept=-float(version % 5)), version=str(version), release_id=f"rel-{version}"
            )
            if client.post("/admin/reload").status_code != 200:
                failures.append("reload")
            version += 1

    thread = threading.Thread(target=reloader)
    thread.start()
    try:
        for _ in range(60):
            response = client.post("/score", json={"data": [record()] * 5})
            if response.status_code != 200 or len(response.json()["predictions"]) != 5:
                failures.append(response.text)
    finally:
        stop.set()
        thread.join()
    assert failures == []


# ------------------------------------------------------------------ the log is a precondition of serving


class BrokenLog:
    def append_prediction(self, record):
        raise OSError("disk full")


def test_an_unwritable_prediction_log_means_503_not_an_unlogged_prediction(deploy, make_client, caplog):
    deploy()
    client = make_client(prediction_log=BrokenLog())
    response = client.post("/score", json={"data": [record()]})
    assert response.status_code == 503
    assert response.json()["error"] == "prediction log unavailable"
    assert "predictions" not in response.json()
    assert "PREDICTION LOG WRITE FAILED" in caplog.text


def test_an_internal_error_is_a_500_with_the_request_id_and_is_logged(client, audit, monkeypatch, caplog):
    from mlrelease.serving import core

    def explode(model, records):
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(core, "predictions_for", explode)
    response = client.post("/score", json={"data": [record()]})
    assert response.status_code == 500
    request_id = response.headers["x-request-id"]
    assert response.json()["request_id"] == request_id and "bug" not in response.text
    assert request_id in caplog.text
    assert logged(audit, response).status == 500


def test_one_log_line_per_request(client, caplog):
    caplog.set_level("INFO", logger="mlrelease.serving.app")
    response = client.post("/score", json={"data": [record(), record()]})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("score ")]
    assert len(lines) == 1
    assert f"request_id={response.headers['x-request-id']} status=200 records=2 model_version=1" in lines[0]
