"""The records every audit store keeps, beside the contract (``backends.base.AuditLog``) that stores them.

They sit in ``domain`` because three layers share them without depending on each other: the scoring
services write :class:`PredictionRecord` (the local FastAPI service and the Azure ML score script), the
release code appends and reads :class:`AuditEvent`, and each audit backend (SQLite, Azure Blob) stores
both. Plain dataclasses with JSON-ready fields, so a store can keep them in any format.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PredictionRecord:
    """One request to a scoring endpoint, as kept in the prediction log (accepted or rejected).

    ``inputs``/``outputs`` are the records and predictions in request order; a rejected request has
    ``status`` 4xx, ``outputs`` None and ``error`` the JSON body it was answered with.
    """

    request_id: str
    received_at: str
    endpoint: str
    model_name: str | None
    model_version: str | None
    release_id: str | None
    status: int
    latency_ms: float
    inputs: Any
    outputs: Any
    error: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PredictionRecord:
        return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AuditEvent:
    """One append-only event: a gate decision, a registration, a deployment, a release, a rollback.

    ``event_key`` is deterministic (derived from the DAG run, never a clock), so a retried task appends
    nothing new; ``seq`` orders the events of one store.
    """

    seq: int
    event_key: str
    kind: str
    subject: str
    recorded_at: str
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditEvent:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__})
