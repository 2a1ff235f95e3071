"""An append-only audit log in SQLite under ``MLRELEASE_HOME``.

The registry keeps only *current* aliases; this log keeps what happened and when: gate decisions,
registrations, alias moves. Rows can only be inserted: triggers make UPDATE and DELETE fail inside the
database itself, so no code path (ours or a careless script) can silently rewrite history. Each event
has a deterministic key, so a retried task appends nothing new.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
"""


@dataclass(frozen=True)
class AuditEvent:
    seq: int
    event_key: str
    kind: str
    subject: str
    recorded_at: str
    payload: dict[str, Any]


class SqliteAuditLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
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
