from __future__ import annotations

import sqlite3

import pytest

from mlrelease.backends.local.audit import SqliteAuditLog


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
