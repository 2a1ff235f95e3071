"""The scoring core shared by the local HTTP service (``app.py``) and the Azure ML script.

Both front ends must answer the same request with the same JSON, so everything between "here are the
bytes the client sent" and "here is the body to answer with" lives here once: JSON decoding, payload
validation, scoring and the response shape. The front ends add only what is specific to them (HTTP
status handling, size limits and the prediction log locally; ``init()``/``run()`` on Azure ML).

Loading is here too: an artifact is verified against its sha256 and must score a known-good record to a
finite probability before it may serve, whichever front end loads it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlrelease.domain.payload import EXAMPLE_RECORD, MAX_BODY_BYTES, MAX_RECORDS, FieldError, validate_payload
from mlrelease.domain.records import PredictionRecord
from mlrelease.domain.served import ServedModelRef
from mlrelease.hashing import sha256_file
from mlrelease.serving.portable import PortableModel

INVALID_REQUEST = "invalid request"
RECORD_ATTEMPTS = 3

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """An artifact could not be made to serve (missing, wrong checksum, unreadable, failed self-test)."""


@dataclass(frozen=True)
class Outcome:
    """The answer to one scoring request, plus what the prediction log needs to record about it."""

    status: int
    body: dict[str, Any]
    inputs: Any = None
    outputs: list[dict[str, Any]] | None = None
    n_records: int = 0

    @property
    def error(self) -> dict[str, Any] | None:
        return None if self.status == 200 else self.body

    def with_request_id(self, request_id: str) -> Outcome:
        """The same answer under another request id (used when a client's id was already taken)."""
        return Outcome(
            self.status, {**self.body, "request_id": request_id}, self.inputs, self.outputs, self.n_records
        )


def error_body(request_id: str, error: str, details: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """The one error shape every front end answers with."""
    return {"request_id": request_id, "error": error, "details": details or []}


def error_outcome(
    status: int, request_id: str, error: str, details: list[dict[str, str]], inputs: Any = None
) -> Outcome:
    return Outcome(status, error_body(request_id, error, details), inputs=inputs)


def internal_error(request_id: str) -> Outcome:
    """The 500 both front ends answer for a bug while scoring (the details stay in the server log)."""
    return error_outcome(
        500,
        request_id,
        "internal error",
        [
            {
                "field": "server",
                "error": f"unexpected error; the server log has the details under request id {request_id}",
            }
        ],
    )


def is_json_media_type(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def too_large(request_id: str, what: str) -> Outcome:
    """The 413 both front ends answer for a body over the limit."""
    return error_outcome(
        413,
        request_id,
        INVALID_REQUEST,
        [
            {
                "field": "body",
                "error": f"too large: {what} exceeds the limit of {MAX_BODY_BYTES} bytes "
                f"(at most {MAX_RECORDS} records per request); split the batch. "
                "The body is not kept: the prediction log records this request without its inputs.",
            }
        ],
    )


def refuse_headers(content_type: str | None, content_length: str | None, request_id: str) -> Outcome | None:
    """The 415/400/413 for a request whose headers already say it cannot be scored, else None.

    Checked before the body is read, so an oversized or non-JSON body is never read into memory.
    """
    if content_type is not None and not is_json_media_type(content_type):
        return error_outcome(
            415,
            request_id,
            INVALID_REQUEST,
            [
                {
                    "field": "Content-Type",
                    "error": f"must be application/json, got {content_type[:100]!r}; "
                    "send the header 'Content-Type: application/json' (curl: -H, or use --json)",
                }
            ],
        )
    if content_length is not None:
        try:
            declared_bytes = int(content_length)
        except ValueError:
            return error_outcome(
                400,
                request_id,
                INVALID_REQUEST,
                [{"field": "Content-Length", "error": f"is not a number: {content_length[:40]!r}"}],
            )
        if declared_bytes > MAX_BODY_BYTES:
            return too_large(request_id, f"Content-Length {declared_bytes}")
    return None


class BodyDecodeError(ValueError):
    """The request body is not UTF-8 JSON; ``detail`` is the ``{"field", "error"}`` to answer with."""

    def __init__(self, detail: FieldError) -> None:
        super().__init__(detail.error)
        self.detail = detail


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity, which are not JSON and would reach the model as non-finite.
    raise ValueError(f"{name} is not valid JSON (send a finite number)")


def decode_json(raw: bytes | str) -> Any:
    """Parse a request body as strict UTF-8 JSON, or raise :class:`BodyDecodeError` saying why not."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise BodyDecodeError(
                FieldError("body", f"is not UTF-8 text (byte {error.start}: {error.reason}); send UTF-8 JSON")
            ) from None
    else:
        text = raw
    if not text.strip():
        raise BodyDecodeError(FieldError("body", 'is empty; send a JSON object {"data": [record, ...]}'))
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BodyDecodeError(FieldError("body", "is not valid JSON: nested too deeply")) from None
    except ValueError as error:  # JSONDecodeError, NaN/Infinity, integers over Python's digit limit
        raise BodyDecodeError(FieldError("body", f"is not valid JSON: {error}")) from None


def predictions_for(model: PortableModel, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``{"label", "probability", "unseen_categories"}`` per record, in request order."""
    return [
        {
            "label": scored.label,
            "probability": float(scored.probability),
            "unseen_categories": list(scored.unseen),
        }
        for scored in model.score(records)
    ]


def score_body(
    body: Any, model: PortableModel | None, ref: ServedModelRef | None, request_id: str
) -> Outcome:
    """Validate a parsed body and score it: 200 with predictions, 422 with every problem, 503 if no model.

    Input is validated before the model is looked at, so a client gets the same 422 from a cold endpoint
    as from a warm one, and the log keeps the inputs of a request refused for want of a model.
    """
    payload = validate_payload(body)
    if not payload.ok:
        return error_outcome(422, request_id, INVALID_REQUEST, payload.error_details(), inputs=body)
    records = payload.records
    if model is None or ref is None:
        return Outcome(
            503,
            error_body(
                request_id,
                "no model loaded",
                [{"field": "model", "error": "this endpoint has no model loaded yet; see GET /health"}],
            ),
            inputs=records,
            n_records=len(records),
        )
    predictions = predictions_for(model, records)
    # Extreme (but non-negative, finite) inputs can overflow the linear score; that is the client's
    # value, so it is a 422 naming the record, never a 500 or a NaN in the response.
    bad = [
        i
        for i, p in enumerate(predictions)
        if not (math.isfinite(p["probability"]) and 0 <= p["probability"] <= 1)
    ]
    if bad:
        details = [
            {
                "field": f"data[{i}]",
                "error": "the model produced no finite probability for this record; its numeric values are "
                "far outside the range the model was trained on",
            }
            for i in bad
        ]
        return error_outcome(422, request_id, INVALID_REQUEST, details, inputs=records)
    body_out = {
        "request_id": request_id,
        "model": ref.model_dict(),
        "release_id": ref.release_id,
        "predictions": predictions,
    }
    return Outcome(200, body_out, inputs=records, outputs=predictions, n_records=len(records))


def score_raw(
    raw: bytes | str, model: PortableModel | None, ref: ServedModelRef | None, request_id: str
) -> Outcome:
    """:func:`decode_json` then :func:`score_body`; an undecodable body is a 400."""
    try:
        body = decode_json(raw)
    except BodyDecodeError as error:
        return error_outcome(400, request_id, INVALID_REQUEST, [error.detail.as_dict()])
    return score_body(body, model, ref, request_id)


def self_test(model: PortableModel) -> float:
    """Score :data:`EXAMPLE_RECORD`; raise :class:`ModelLoadError` unless P(>50K) is finite in [0, 1]."""
    try:
        # Through the validator, like a request: the model sees exactly what it would see serving.
        [prediction] = predictions_for(model, validate_payload({"data": [EXAMPLE_RECORD]}).records)
    except Exception as error:
        raise ModelLoadError(f"self-test failed: scoring a known-good record raised {error!r}") from error
    probability = prediction["probability"]
    if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
        raise ModelLoadError(
            f"self-test failed: a known-good record scored P(>50K)={probability!r}, not in [0, 1]"
        )
    return probability


def load_model(artifact: Path, expected_sha256: str | None = None) -> PortableModel:
    """Load an exported model, checking its sha256 (when given) and that it scores a known-good record.

    Raises :class:`ModelLoadError` naming the artifact, what is wrong with it and what to do.
    """
    if not artifact.is_file():
        raise ModelLoadError(f"model artifact {artifact} does not exist; re-run the deploy that exported it")
    if expected_sha256 is not None:
        actual = sha256_file(artifact)
        if actual.lower() != expected_sha256.strip().lower():
            raise ModelLoadError(
                f"model artifact {artifact} has sha256 {actual}, but the deploy recorded {expected_sha256}: "
                "the file changed after it was deployed; re-run the deploy instead of editing the file"
            )
    try:
        model = PortableModel.load(artifact)
    except Exception as error:  # PortableModelError, JSON errors, I/O errors: all mean "cannot serve this"
        raise ModelLoadError(f"model artifact {artifact} could not be loaded: {error}") from error
    self_test(model)
    return model


def model_ref(
    model: Mapping[str, Any] | None, release_id: Any, artifact_sha256: str | None = None
) -> ServedModelRef:
    """A :class:`ServedModelRef` from ``{"name", "version"}``; versions are strings, as in the registries."""
    model = model or {}
    return ServedModelRef(model.get("name"), model.get("version"), release_id, artifact_sha256)


def record_then_answer(
    append_prediction: Callable[[PredictionRecord], Any],
    endpoint: str,
    ref: ServedModelRef,
    outcome: Outcome,
    received_at: str,
    started: float,
    store: str,
) -> tuple[Outcome, float]:
    """Record the request in the prediction log, then say what to answer: ``(answer, latency_ms)``.

    The rule of both front ends: nothing is answered that is not recorded. If the append fails the
    answer is a 503 (and no prediction). The log keeps the first record per request id; if the stored
    one is not ours, the client reused an id and this request would go unrecorded, so it is recorded
    and answered under a fresh id instead. ``store`` names the log in the error line.
    """
    latency_ms = (time.perf_counter() - started) * 1000
    request_id = outcome.body["request_id"]
    for _attempt in range(RECORD_ATTEMPTS):
        record = PredictionRecord(
            request_id=request_id,
            received_at=received_at,
            endpoint=endpoint,
            model_name=ref.name,
            model_version=ref.version,
            release_id=ref.release_id,
            status=outcome.status,
            latency_ms=latency_ms,
            inputs=outcome.inputs,
            outputs=outcome.outputs,
            error=outcome.error,
        )
        try:
            stored = append_prediction(record)
        except Exception:
            log.exception(
                "PREDICTION LOG WRITE FAILED for request_id=%s on endpoint %s: answering 503 instead of %d; "
                "check the audit store (%s)",
                request_id,
                endpoint,
                outcome.status,
                store,
            )
            unavailable = error_outcome(
                503,
                request_id,
                "prediction log unavailable",
                [
                    {
                        "field": "prediction_log",
                        "error": "this request could not be recorded, so it was not served; retry later",
                    }
                ],
            )
            return unavailable, latency_ms
        if not isinstance(stored, PredictionRecord) or (
            stored.received_at == received_at and math.isclose(stored.latency_ms, latency_ms)
        ):
            return outcome, latency_ms
        new_id = uuid.uuid4().hex
        log.warning(
            "request_id=%s is already in the prediction log; recording this request as %s", request_id, new_id
        )
        request_id = new_id
        outcome = outcome.with_request_id(new_id)
    raise RuntimeError(
        f"could not find an unused request id for the prediction log after {RECORD_ATTEMPTS} tries ({request_id})"
    )
