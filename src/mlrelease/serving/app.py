"""The local scoring service: one FastAPI app per endpoint (``test``, ``prod``), fed by the deployer.

The deployer never talks to the process directly: it writes ``<state_dir>/desired.json`` (which model,
which artifact and its sha256, which release) and calls ``POST /admin/reload``. The service verifies the
artifact, loads it, scores a known-good record, and only then swaps it in with a single reference
assignment: requests already running finish on the model they started with, and there is no moment
when ``/score`` has no model. A reload that fails leaves the previous model serving (409), so a broken
artifact can never take an endpoint down. ``<state_dir>/serving.json`` records what is actually loaded.

Every ``/score`` request, accepted or refused, is written to the prediction log *before* it is
answered; if that write fails the answer is 503, because a prediction that cannot be audited must not be
served. Request bodies are read and validated here (no pydantic models for records) so that size limits
are enforced while reading and every error message is ours.

HTTP contract of ``POST /score`` (bodies are JSON; every response carries ``X-Request-ID``):

* 200 ``{"request_id", "model": {"name", "version"}, "release_id", "predictions": [...]}``
* 400 body not UTF-8, not JSON, or a malformed ``Content-Length``
* 413 body over ``MAX_BODY_BYTES`` (by ``Content-Length`` before reading, or by the bytes read)
* 415 a ``Content-Type`` that is present and not JSON (``application/json`` or ``*/*+json``); an absent
  one is accepted, since the body is parsed as JSON either way
* 422 the JSON does not validate (every problem listed)
* 503 no model loaded, or the prediction log could not be written
* 500 a bug; logged with its request id, and recorded in the prediction log when possible

All error bodies are ``{"request_id", "error", "details": [{"field", "error"}, ...]}``.

``/admin/reload`` answers only loopback clients: it is how the local deployer drives the service, and a
remote caller has no business making it re-read its state. Behind a reverse proxy on the same host,
uvicorn's proxy-header handling makes the forwarded client address the one checked.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlrelease.domain.payload import MAX_BODY_BYTES, MAX_RECORDS
from mlrelease.domain.records import PredictionRecord
from mlrelease.domain.served import ServedModelRef
from mlrelease.serving.core import (
    INVALID_REQUEST,
    ModelLoadError,
    Outcome,
    error_body,
    error_outcome,
    internal_error,
    load_model,
    model_ref,
    record_then_answer,
    refuse_headers,
    score_raw,
    too_large,
)
from mlrelease.serving.portable import PortableModel

log = logging.getLogger(__name__)

DESIRED_FILE = "desired.json"
SERVING_FILE = "serving.json"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Status recorded for a client that hung up before its body was read (nginx's convention); it is
# never sent, there is nobody to send it to.
CLIENT_CLOSED_REQUEST = 499


class PredictionLog(Protocol):
    def append_prediction(self, record: PredictionRecord) -> Any: ...


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


def request_id_from(header_value: str | None) -> str:
    """The client's ``X-Request-ID`` when it is a sane token (<= 64 of ``[A-Za-z0-9._-]``), else a new one."""
    if header_value and _REQUEST_ID_PATTERN.fullmatch(header_value):
        return header_value
    return uuid.uuid4().hex


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


class RequestIdMiddleware:
    """Give every HTTP request an id (``scope["state"]["request_id"]``) and echo it as ``X-Request-ID``.

    Pure ASGI rather than ``@app.middleware("http")`` so it adds nothing between the client and the
    streamed request body that ``/score`` reads with its own size limit.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["request_id"] = request_id_from(Headers(scope=scope).get(REQUEST_ID_HEADER))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Read at send time: /score may have had to replace a client id that was already used.
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = state["request_id"]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


@dataclass(frozen=True)
class ServedModel:
    """A loaded model together with the deploy record (desired.json) it was loaded from."""

    model: PortableModel
    desired: dict[str, Any]
    loaded_at: str

    @property
    def ref(self) -> ServedModelRef:
        return model_ref(self.desired.get("model"), self.desired.get("release_id"), self.sha256)

    @property
    def sha256(self) -> str:
        return str(self.desired.get("artifact_sha256", "")).lower()

    def summary(self) -> dict[str, Any]:
        ref = self.ref
        return {"model": ref.model_dict(), "release_id": ref.release_id}

    def metadata(self, endpoint: str) -> dict[str, Any]:
        ref = self.ref
        return {
            "endpoint": endpoint,
            "stage": self.desired.get("stage"),
            "model": ref.model_dict(),
            "release_id": ref.release_id,
            "algorithm": self.model.algorithm,
            "spark_version": self.model.spark_version,
            "artifact_sha256": self.sha256,
            "lineage": self.desired.get("lineage"),
            "deployed_at": self.desired.get("deployed_at"),
            "loaded_at": self.loaded_at,
            "limits": {"max_records": MAX_RECORDS, "max_body_bytes": MAX_BODY_BYTES},
        }


class ReloadError(RuntimeError):
    """desired.json or the artifact it names cannot be served; the previous model keeps serving."""


def _read_desired(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ReloadError(
            f"{path} does not exist: nothing has been deployed to this endpoint yet; deploy a model"
        )
    try:
        desired = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ReloadError(
            f"{path} is not readable JSON ({error}); re-run the deploy to rewrite it"
        ) from error
    if not isinstance(desired, dict):
        raise ReloadError(f"{path} holds {type(desired).__name__}, not an object; re-run the deploy")
    model = desired.get("model")
    problems = []
    if not isinstance(model, dict) or not model.get("name") or model.get("version") in (None, ""):
        problems.append('"model": {"name", "version"}')
    for key in ("release_id", "artifact", "artifact_sha256"):
        if not desired.get(key):
            problems.append(f'"{key}"')
    if problems:
        raise ReloadError(f"{path} lacks {', '.join(problems)}; re-run the deploy to rewrite it")
    if not Path(desired["artifact"]).is_absolute():
        raise ReloadError(
            f"{path} names artifact {desired['artifact']!r}, which is not an absolute path; the deployer must "
            "write absolute paths (the service's working directory is not the deployer's)"
        )
    return desired


def _write_atomically(path: Path, document: dict[str, Any]) -> None:
    descriptor, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ModelHolder:
    """The served model of one endpoint: read lock-free, replaced only by :meth:`reload` under a lock."""

    def __init__(self, endpoint: str, state_dir: Path) -> None:
        self.endpoint = endpoint
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self.current: ServedModel | None = None
        self.last_error: str | None = None

    @property
    def desired_path(self) -> Path:
        return self.state_dir / DESIRED_FILE

    @property
    def serving_path(self) -> Path:
        return self.state_dir / SERVING_FILE

    def not_ready_reason(self) -> str:
        if self.last_error:
            return f"no model loaded: {self.last_error}"
        return f"no model loaded: waiting for a deploy to write {self.desired_path} and POST /admin/reload"

    def reload(self) -> tuple[int, dict[str, Any]]:
        """Load what desired.json names and swap it in: (200, metadata) or (409, error + what still serves)."""
        with self._lock:  # one reload at a time; /score never takes this lock
            previous = self.current
            try:
                desired = _read_desired(self.desired_path)
                if previous is not None and self._same_deploy(previous, desired):
                    log.info(
                        "Reload on endpoint %s: version %s (sha256 %s, release %s) is already serving; nothing to do",
                        self.endpoint,
                        previous.ref.version,
                        previous.sha256[:12],
                        previous.ref.release_id,
                    )
                    return 200, {"status": "unchanged", **previous.metadata(self.endpoint)}
                model = load_model(Path(desired["artifact"]), str(desired["artifact_sha256"]))
                served = ServedModel(model, desired, utc_now())
                # serving.json first: if it cannot be written the swap does not happen, so the file
                # never claims a model that is not serving for longer than one assignment.
                _write_atomically(self.serving_path, {**desired, "loaded_at": served.loaded_at})
            except (ReloadError, ModelLoadError, OSError) as error:
                if previous is None:  # with a model serving, /health stays ready; the 409 says why
                    self.last_error = str(error)
                log.error(
                    "Reload on endpoint %s failed, still serving %s: %s",
                    self.endpoint,
                    previous.summary() if previous else "nothing",
                    error,
                )
                return 409, {
                    "error": str(error),
                    "still_serving": {**previous.ref.model_dict(), "release_id": previous.ref.release_id}
                    if previous
                    else None,
                }
            self.current = served
            self.last_error = None
        log.info(
            "Endpoint %s now serves %s version %s (release %s, %s, sha256 %s); was %s",
            self.endpoint,
            served.ref.name,
            served.ref.version,
            served.ref.release_id,
            served.model.algorithm,
            served.sha256[:12],
            previous.ref.version if previous else "nothing",
        )
        return 200, {"status": "loaded", **served.metadata(self.endpoint)}

    @staticmethod
    def _same_deploy(served: ServedModel, desired: dict[str, Any]) -> bool:
        # Re-reading the file would change nothing. A new release id for the same model is reloaded,
        # so predictions are logged under it.
        return served.ref.same_as(ServedModelRef.from_document(desired))


async def _read_body(request: Request, request_id: str) -> bytes | Outcome:
    """The body, or the 400/413/415 Outcome refusing it. Never reads more than MAX_BODY_BYTES + one chunk."""
    if refused := refuse_headers(
        request.headers.get("content-type"), request.headers.get("content-length"), request_id
    ):
        return refused
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return too_large(request_id, f"more than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(endpoint: str, state_dir: Path, prediction_log: PredictionLog) -> FastAPI:
    """The scoring service for one endpoint, serving what the deployer wrote to ``state_dir``.

    ``prediction_log`` is anything with ``append_prediction(PredictionRecord)`` (the audit store).
    """
    state_dir = Path(state_dir)
    holder = ModelHolder(endpoint, state_dir)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if holder.desired_path.is_file():
            status, body = await anyio.to_thread.run_sync(holder.reload)
            if status != 200:
                # Start anyway: /health says why it is not ready, and a fixed deploy can POST /admin/reload.
                log.error("Endpoint %s started without a model: %s", endpoint, body["error"])
        else:
            log.warning("Endpoint %s started without a model: %s", endpoint, holder.not_ready_reason())
        yield
        log.info("Endpoint %s shutting down", endpoint)

    app = FastAPI(
        title=f"mlrelease scoring service ({endpoint})",
        summary="Adult income model: POST /score",
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.add_middleware(RequestIdMiddleware)

    def log_request(
        request_id: str, status: int, n_records: int, version: str | None, latency_ms: float
    ) -> None:
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        log.log(
            level,
            "score request_id=%s status=%d records=%d model_version=%s latency_ms=%.1f",
            request_id,
            status,
            n_records,
            version,
            latency_ms,
        )

    def record_and_answer(
        scope_state: dict[str, Any],
        outcome: Outcome,
        served: ServedModel | None,
        received_at: str,
        started: float,
    ) -> Outcome:
        """Write the prediction log, then return what to answer: the outcome, or 503 if it was not logged."""
        ref = served.ref if served else ServedModelRef(None, None, None)
        answer, latency_ms = record_then_answer(
            prediction_log.append_prediction,
            endpoint,
            ref,
            outcome,
            received_at,
            started,
            str(getattr(prediction_log, "path", type(prediction_log).__name__)),
        )
        scope_state["request_id"] = answer.body["request_id"]  # the response header names the logged id
        log_request(answer.body["request_id"], answer.status, outcome.n_records, ref.version, latency_ms)
        return answer

    def finish(
        scope_state: dict[str, Any],
        raw: bytes | Outcome,
        served: ServedModel | None,
        request_id: str,
        received_at: str,
        started: float,
    ) -> Outcome:
        try:
            if isinstance(raw, Outcome):
                outcome = raw
            else:
                outcome = score_raw(
                    raw, served.model if served else None, served.ref if served else None, request_id
                )
        except Exception:
            log.exception("Internal error scoring request_id=%s on endpoint %s", request_id, endpoint)
            outcome = internal_error(request_id)
        return record_and_answer(scope_state, outcome, served, received_at, started)

    @app.post("/score")
    async def score(request: Request) -> JSONResponse:
        started = time.perf_counter()
        received_at = utc_now()
        request_id = _request_id(request)
        served = holder.current  # one snapshot: this request is scored, and logged, by this model
        try:
            raw = await _read_body(request, request_id)
        except ClientDisconnect:
            raw = error_outcome(
                CLIENT_CLOSED_REQUEST,
                request_id,
                INVALID_REQUEST,
                [{"field": "body", "error": "the client disconnected before sending the whole body"}],
            )
        # Scoring, JSON parsing and the SQLite write are blocking: keep them off the event loop.
        outcome = await anyio.to_thread.run_sync(
            functools.partial(finish, request.scope["state"], raw, served, request_id, received_at, started)
        )
        return JSONResponse(outcome.body, status_code=outcome.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        served = holder.current
        if served is None:
            return JSONResponse({"status": "not ready", "reason": holder.not_ready_reason()}, status_code=503)
        return JSONResponse({"status": "ready", **served.summary()})

    @app.get("/metadata")
    async def metadata() -> JSONResponse:
        served = holder.current
        if served is None:
            return JSONResponse({"status": "not ready", "reason": holder.not_ready_reason()}, status_code=503)
        return JSONResponse(served.metadata(endpoint))

    @app.post("/admin/reload")
    async def reload(request: Request) -> JSONResponse:
        client = request.client.host if request.client else None
        if not is_loopback(client):
            log.warning(
                "Refused POST /admin/reload from non-loopback client %s on endpoint %s", client, endpoint
            )
            return JSONResponse(
                {
                    "error": f"/admin/reload is only served to loopback clients; {client} is not one. "
                    "Run the deploy on this host."
                },
                status_code=403,
            )
        status, body = await anyio.to_thread.run_sync(holder.reload)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {
                "field": ".".join(str(part) for part in item.get("loc", ())) or "body",
                "error": str(item.get("msg")),
            }
            for item in error.errors()
        ]
        return JSONResponse(error_body(_request_id(request), INVALID_REQUEST, details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            error_body(_request_id(request), str(error.detail)),
            status_code=error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
        request_id = _request_id(request)
        log.error(
            "Internal error on %s %s, request_id=%s",
            request.method,
            request.url.path,
            request_id,
            exc_info=error,
        )
        body = error_body(
            request_id,
            "internal error",
            [
                {
                    "field": "server",
                    "error": f"unexpected error; the server log has the details under request id {request_id}",
                }
            ],
        )
        return JSONResponse(body, status_code=500, headers={REQUEST_ID_HEADER: request_id})

    return app
