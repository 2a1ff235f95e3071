from __future__ import annotations

import sqlite3

import pytest

from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.domain.records import PredictionRecord


def test_append_is_idempotent_per_key(tmp_path):
    audit = SqliteAuditLog(tmp_path / "audit.db")
    first = audit.append("alias:m:prod:2:run1", "alias_moved", "m:prod", {"version": "2"})
    again = audit.append("alias:m:prod:2:run1", "alias_moved", "m:prod", {"version": "999"})
    assert again == first and again.payload == {"version": "2"}
    audit.append("alias:m:prod:3:run2", "alias_moved", "m:prod", {"version": "3"})
    assert [e.payload["version"] for e in audit.events(kind="alias_moved")] == ["2", "3"]
    assert audit.events(subject="other") == []


@pytest.mark.parametrize(
    "statement",
    ["UPDATE events SET payload = '{}'", "DELETE FROM events", "UPDATE events SET kind = 'x' WHERE seq = 1"],
)
def test_history_cannot_be_rewritten(tmp_path, statement):
    audit = SqliteAuditLog(tmp_path / "audit.db")
    audit.append("k1", "gate_decision", "run", {"approved": False})
    with (
        sqlite3.connect(tmp_path / "audit.db") as connection,
        pytest.raises(sqlite3.DatabaseError, match="append-only"),
    ):
        connection.execute(statement)
    assert audit.events()[0].payload == {"approved": False}


def _prediction(request_id: str = "req-1", **changes) -> PredictionRecord:
    fields = dict(
        request_id=request_id,
        received_at="2026-11-26T10:00:00+00:00",
        endpoint="prod",
        model_name="income-classifier",
        model_version="3",
        release_id="income-classifier-v3-abcd1234",
        status=200,
        latency_ms=4.2,
        inputs=[{"age": 39}],
        outputs=[{"label": ">50K", "probability": 0.9}],
    )
    return PredictionRecord(**{**fields, **changes})


def test_prediction_log_keeps_the_first_record_of_a_request(tmp_path):
    audit = SqliteAuditLog(tmp_path / "audit.db")
    first = audit.append_prediction(_prediction())
    # The same request id written again (a retried write, or a bug) does not replace what was served.
    again = audit.append_prediction(_prediction(outputs=[{"label": "<=50K", "probability": 0.1}], status=500))
    assert again == first and again.outputs == [{"label": ">50K", "probability": 0.9}]
    audit.append_prediction(_prediction("req-2", release_id="other"))
    assert audit.get_prediction("missing") is None
    assert [p.request_id for p in audit.predictions()] == ["req-2", "req-1"]
    assert [p.request_id for p in audit.predictions(release_id="other")] == ["req-2"]


def test_release_records_are_only_appended_by_the_release_code_path(tmp_path):
    """The code path that writes a release (append with the release's key) cannot overwrite it."""
    audit = SqliteAuditLog(tmp_path / "audit.db")
    record = {"outcome": "promoted", "version": "3", "previous_prod_version": "2"}
    audit.append("release:r1", "release", "r1", record)
    audit.append(
        "release:r1", "release", "r1", {**record, "previous_prod_version": "1", "outcome": "rolled back"}
    )
    assert [e.payload for e in audit.events(kind="release")] == [record]


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE predictions SET outputs = '[]'",
        "DELETE FROM predictions",
        "UPDATE predictions SET status = 500",
    ],
)
def test_predictions_cannot_be_rewritten(tmp_path, statement):
    audit = SqliteAuditLog(tmp_path / "audit.db")
    audit.append_prediction(_prediction())
    with (
        sqlite3.connect(tmp_path / "audit.db") as connection,
        pytest.raises(sqlite3.DatabaseError, match="append-only"),
    ):
        connection.execute(statement)
    assert audit.get_prediction("req-1") == _prediction()
