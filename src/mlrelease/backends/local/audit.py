"""An append-only audit log in SQLite under ``MLRELEASE_HOME``.

The registry keeps only *current* aliases; this log keeps what happened and when: gate decisions,
registrations, deployments, releases, alias moves (so "which version was prod from when to when" can be
answered), and every prediction a scoring endpoint served. Rows can only be inserted: triggers make
UPDATE and DELETE fail inside the database itself, so no code path (ours or a careless script) can
silently rewrite history. Each event has a deterministic key and each prediction its request id, so a
retried task or a re-sent write appends nothing new and leaves the first record as it was.

Several processes write here at once (Airflow tasks, the test and prod endpoints): WAL mode lets
readers run beside one writer, and the busy timeout makes writers queue instead of failing.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlrelease.domain.records import AuditEvent, PredictionRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE is not allowed'); END;
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    model_name TEXT,
    model_version TEXT,
    release_id TEXT,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    inputs TEXT,
    outputs TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS predictions_release ON predictions (release_id);
CREATE TRIGGER IF NOT EXISTS predictions_no_update BEFORE UPDATE ON predictions
BEGIN SELECT RAISE(ABORT, 'the prediction log is append-only: UPDATE is not allowed'); END;
CREATE TRIGGER IF NOT EXISTS predictions_no_delete BEFORE DELETE ON predictions
BEGIN SELECT RAISE(ABORT, 'the prediction log is append-only: DELETE is not allowed'); END;
"""

_PREDICTION_COLUMNS = (
    "request_id, received_at, endpoint, model_name, model_version, release_id, status, latency_ms, "
    "inputs, outputs, error"
)


class SqliteAuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA busy_timeout=30000")
        connection.executescript(_SCHEMA)
        return connection

    def append(self, event_key: str, kind: str, subject: str, payload: dict[str, Any]) -> AuditEvent:
        """Append an event once; appending the same key again returns the stored event unchanged."""
        with closing(self._connect()) as connection, connection:
            connection.execute(
                "INSERT OR IGNORE INTO events (event_key, kind, subject, recorded_at, payload) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    event_key,
                    kind,
                    subject,
                    datetime.now(UTC).isoformat(timespec="seconds"),
                    json.dumps(payload, sort_keys=True, default=str),
                ),
            )
            row = connection.execute(
                "SELECT seq, event_key, kind, subject, recorded_at, payload FROM events WHERE event_key = ?",
                (event_key,),
            ).fetchone()
        return AuditEvent(*row[:5], json.loads(row[5]))

    def events(self, kind: str | None = None, subject: str | None = None) -> list[AuditEvent]:
        query = "SELECT seq, event_key, kind, subject, recorded_at, payload FROM events WHERE 1=1"
        args: list[str] = []
        if kind:
            query, args = query + " AND kind = ?", [*args, kind]
        if subject:
            query, args = query + " AND subject = ?", [*args, subject]
        with closing(self._connect()) as connection:
            rows = connection.execute(query + " ORDER BY seq", args).fetchall()
        return [AuditEvent(*row[:5], json.loads(row[5])) for row in rows]

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        """Append one request's record; a second write of the same request id keeps the first."""

        def dump(value: Any) -> str | None:
            return None if value is None else json.dumps(value, sort_keys=True, default=str)

        with closing(self._connect()) as connection, connection:
            connection.execute(
                f"INSERT OR IGNORE INTO predictions ({_PREDICTION_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.request_id,
                    record.received_at,
                    record.endpoint,
                    record.model_name,
                    record.model_version,
                    record.release_id,
                    int(record.status),
                    float(record.latency_ms),
                    dump(record.inputs),
                    dump(record.outputs),
                    dump(record.error),
                ),
            )
        stored = self.get_prediction(record.request_id)
        assert stored is not None
        return stored

    def get_prediction(self, request_id: str) -> PredictionRecord | None:
        with closing(self._connect()) as connection:
            row = connection.execute(
                f"SELECT {_PREDICTION_COLUMNS} FROM predictions WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        *head, inputs, outputs, error = row
        return PredictionRecord(
            *head,
            inputs=json.loads(inputs) if inputs is not None else None,
            outputs=json.loads(outputs) if outputs is not None else None,
            error=json.loads(error) if error is not None else None,
        )

    def predictions(self, release_id: str | None = None, limit: int = 100) -> list[PredictionRecord]:
        """The latest predictions (newest first), optionally only those served under one release."""
        query = f"SELECT request_id FROM predictions {'WHERE release_id = ?' if release_id else ''} "
        args: list[Any] = [release_id] if release_id else []
        with closing(self._connect()) as connection:
            ids = connection.execute(query + "ORDER BY seq DESC LIMIT ?", [*args, limit]).fetchall()
        return [record for (request_id,) in ids if (record := self.get_prediction(request_id))]
