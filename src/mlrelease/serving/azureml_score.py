"""Azure ML scoring script (``init()`` / ``run(request)``) that answers exactly like the local ``POST /score``.

Azure ML online deployments run this file under Azure ML's inference server
(``azureml-inference-server-http``, ``azmlinfsrv --entry_script azureml_score.py``): :func:`init` once
per worker, then :func:`run` per request. A client, the endpoint checks and the prediction log must not
be able to tell this endpoint from the local service (``serving/app.py``), so:

* ``run`` is decorated with the server's ``@rawhttp``: it receives the HTTP request itself and returns
  an ``AMLResponse``, which is the only way to choose the status code. Bad input is a 4xx JSON body
  naming every bad field (400 not JSON, 413 too large, 415 not a JSON content type, 422 invalid),
  never a 5xx and never a 200 with an error inside. Validation, scoring and the body shapes are
  ``serving.core``'s, shared with the local service; the limits are ``domain.payload``'s.
* The request id is the client's ``x-request-id`` when it is a sane token (the local service's rule),
  otherwise the server's own; the body and the ``x-request-id`` response header always agree (the
  server rewrites that header after ``run`` returns, so ``run`` tells the server which id it used).
* Every answered scoring request, accepted or refused, is appended to the prediction log *before* it is
  answered. If the append fails the answer is 503 and carries no prediction: a prediction that cannot be
  audited is not served. The log is built once in :func:`init` from the deployment's environment
  (:func:`prediction_log_from_env`): the Azure Blob audit store, or nothing only when
  ``MLRELEASE_PREDICTION_LOG=none`` says so explicitly.
* :func:`init` loads the model and scores a known-good record; any problem raises, which makes the
  server exit and Azure ML mark the deployment failed instead of routing traffic to it.

Which model answers comes from the deployment: ``AZUREML_MODEL_DIR`` is
``.../azureml-models/<name>/<version>``; ``MLRELEASE_MODEL_NAME``, ``MLRELEASE_MODEL_VERSION`` and
``MLRELEASE_RELEASE_ID`` (set by the deployer) take precedence, and ``MLRELEASE_ENDPOINT`` (``test`` or
``prod``) is the endpoint the prediction log files the requests under.

Without the inference server installed (the main venv, where the unit tests import this module),
``@rawhttp`` is a no-op and ``run`` also accepts the raw body (``str``/``bytes``): it then returns the
response body as a dict for a 200 or a 4xx, and raises :class:`ScoringUnavailableError` for a 5xx, so a
host that cannot set a status still never answers "200" to a request that was not served.

This file is copied to the top of the deployment's code package (``serving.code_package``) and
imported there as a plain script, so it must only import what that package contains.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mlrelease.domain.payload import MAX_BODY_BYTES
from mlrelease.domain.records import PredictionRecord
from mlrelease.domain.served import ServedModelRef
from mlrelease.serving.core import (
    INVALID_REQUEST,
    Outcome,
    error_body,
    error_outcome,
    internal_error,
    load_model,
    record_then_answer,
    refuse_headers,
    score_raw,
    too_large,
)
from mlrelease.serving.portable import PortableModel
from mlrelease.tags import PORTABLE_MODEL_FILE

# The inference server registers its api modules under the historical azureml.contrib.services names
# before it loads a score script; outside the server (a plain interpreter in the scoring venv) they
# are importable under the package's own name; in the main venv they do not exist at all.
try:
    from azureml.contrib.services.aml_request import rawhttp
    from azureml.contrib.services.aml_response import AMLResponse
except ImportError:
    try:
        from azureml_inference_server_http.api.aml_request import rawhttp
        from azureml_inference_server_http.api.aml_response import AMLResponse
    except ImportError:
        AMLResponse = None

        def rawhttp(func: Callable[..., Any]) -> Callable[..., Any]:
            return func


# A fixed name: under the inference server this file is the module "entry_module". The code package's
# logging.json sends the "mlrelease" loggers to the server's log (serving.code_package).
log = logging.getLogger("mlrelease.serving.azureml_score")

ENV_MODEL_DIR = "AZUREML_MODEL_DIR"
ENV_MODEL_NAME = "MLRELEASE_MODEL_NAME"
ENV_MODEL_VERSION = "MLRELEASE_MODEL_VERSION"
ENV_RELEASE_ID = "MLRELEASE_RELEASE_ID"
ENV_ENDPOINT = "MLRELEASE_ENDPOINT"
ENV_PREDICTION_LOG = "MLRELEASE_PREDICTION_LOG"
ENV_AUDIT_CONTAINER = "MLRELEASE_AUDIT_CONTAINER"
ENV_AUDIT_ACCOUNT_URL = "MLRELEASE_AUDIT_BLOB_ACCOUNT_URL"
ENV_AUDIT_CONNECTION_STRING = "MLRELEASE_AUDIT_BLOB_CONNECTION_STRING"
PREDICTION_LOG_CHOICES = ("blob", "none")

REQUEST_ID_HEADER = "x-request-id"
# The local service's rule (serving/app.py), repeated because that module needs FastAPI, which the
# scoring environment does not have.
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Status recorded for a client that hung up before its body was read (nginx's convention, as locally).
CLIENT_CLOSED_REQUEST = 499
_READ_CHUNK = 64 * 1024


class PredictionLog(Protocol):
    """Anything that durably stores a :class:`PredictionRecord` (the audit store's ``append_prediction``)."""

    def append_prediction(self, record: PredictionRecord) -> Any: ...


class NoPredictionLog:
    """``MLRELEASE_PREDICTION_LOG=none``: records nothing (a deployer's explicit choice, warned at init)."""

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        return record

    def __repr__(self) -> str:
        return "NoPredictionLog()"


class ScoringUnavailableError(RuntimeError):
    """A 5xx answer in plain mode (no inference server to set the status): raised so the host answers 5xx."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status} {body.get('error')}: {body.get('details')}")
        self.status = status
        self.body = body


class Serving:
    """What :func:`init` prepared for :func:`run`: one object, assigned once, so ``run`` sees all or nothing."""

    # Not a dataclass: the inference server executes this file as a module it never registers in
    # sys.modules, and @dataclass looks its module up there (AttributeError at import).
    __slots__ = ("endpoint", "model", "prediction_log", "ref")

    def __init__(
        self, model: PortableModel, ref: ServedModelRef, endpoint: str, prediction_log: PredictionLog
    ) -> None:
        self.model = model
        self.ref = ref
        self.endpoint = endpoint
        self.prediction_log = prediction_log


_serving: Serving | None = None


def utc_now() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------------------------------------- init


def find_artifact(model_dir: Path) -> Path:
    """The one ``portable_model.json`` under ``model_dir`` (searched recursively)."""
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"{ENV_MODEL_DIR}={model_dir} is not a directory; the deployment must reference the registered "
            f"model that holds {PORTABLE_MODEL_FILE}"
        )
    found = sorted(model_dir.rglob(PORTABLE_MODEL_FILE))
    if not found:
        raise FileNotFoundError(
            f"no {PORTABLE_MODEL_FILE} under {ENV_MODEL_DIR}={model_dir}; register the exported portable model "
            "(not the Spark model directory) and redeploy"
        )
    if len(found) > 1:
        raise RuntimeError(
            f"{len(found)} copies of {PORTABLE_MODEL_FILE} under {ENV_MODEL_DIR}={model_dir} "
            f"({', '.join(map(str, found))}); deploy exactly one model version per deployment"
        )
    return found[0]


def model_ref_from_env(model_dir: Path, environ: Mapping[str, str]) -> ServedModelRef:
    """Name and version from the deployer's variables, else from Azure ML's ``<name>/<version>`` mount path."""
    name = version = None
    if model_dir.parent.parent.name == "azureml-models":
        name, version = model_dir.parent.name, model_dir.name
    return ServedModelRef(
        name=environ.get(ENV_MODEL_NAME) or name,
        version=environ.get(ENV_MODEL_VERSION) or version,
        release_id=environ.get(ENV_RELEASE_ID) or None,
    )


def prediction_log_from_env(environ: Mapping[str, str] | None = None) -> PredictionLog:
    """The prediction log the deployer configured; raises naming the variable to set when it is incomplete.

    ``MLRELEASE_PREDICTION_LOG=blob`` with ``MLRELEASE_AUDIT_CONTAINER`` and exactly one of
    ``MLRELEASE_AUDIT_BLOB_ACCOUNT_URL`` (managed identity through ``DefaultAzureCredential``: the
    production path) or ``MLRELEASE_AUDIT_BLOB_CONNECTION_STRING`` (emulators). ``none`` disables the
    log and is never a default: an unset variable is an error.
    """
    environ = os.environ if environ is None else environ
    choice = (environ.get(ENV_PREDICTION_LOG) or "").strip().lower()
    if choice == "none":
        log.warning(
            "%s=none: this deployment records NO predictions; its answers cannot be audited. "
            "Set %s=blob (with %s and %s) for any endpoint that serves real traffic",
            ENV_PREDICTION_LOG,
            ENV_PREDICTION_LOG,
            ENV_AUDIT_CONTAINER,
            ENV_AUDIT_ACCOUNT_URL,
        )
        return NoPredictionLog()
    if choice != "blob":
        raise RuntimeError(
            f"{ENV_PREDICTION_LOG}={environ.get(ENV_PREDICTION_LOG, '(unset)')!r} is not one of "
            f"{', '.join(PREDICTION_LOG_CHOICES)}; the deployer must set it in the deployment's environment "
            f"variables: 'blob' (with {ENV_AUDIT_CONTAINER} and {ENV_AUDIT_ACCOUNT_URL}) or, explicitly, 'none'"
        )
    container = (environ.get(ENV_AUDIT_CONTAINER) or "").strip()
    account_url = (environ.get(ENV_AUDIT_ACCOUNT_URL) or "").strip()
    connection_string = (environ.get(ENV_AUDIT_CONNECTION_STRING) or "").strip()
    if not container:
        raise RuntimeError(
            f"{ENV_PREDICTION_LOG}=blob but {ENV_AUDIT_CONTAINER} is not set; the deployer must name the "
            "audit container in the deployment's environment variables"
        )
    if bool(account_url) == bool(connection_string):
        raise RuntimeError(
            f"{ENV_PREDICTION_LOG}=blob needs exactly one of {ENV_AUDIT_ACCOUNT_URL} (managed identity) or "
            f"{ENV_AUDIT_CONNECTION_STRING} (emulators), got "
            f"{'both' if account_url else 'neither'}; fix the deployment's environment variables"
        )
    try:
        from mlrelease.backends.azure.blob_audit import BlobAuditLog
    except ImportError as error:
        raise RuntimeError(
            f"{ENV_PREDICTION_LOG}=blob but the Blob audit store cannot be imported ({error}); the code "
            "package must contain mlrelease/backends/azure/blob_audit.py (serving.code_package) and the "
            "environment azure-storage-blob and azure-identity (serving/azureml-requirements.txt)"
        ) from error
    # Every answer waits for its record: a store that is down must turn into a prompt 503, not into
    # azure-core's default retries (about 84 s per request).
    client_options = {"retry_total": 1, "connection_timeout": 3, "read_timeout": 10}
    if account_url:
        from azure.identity import DefaultAzureCredential

        prediction_log = BlobAuditLog.from_account_url(
            account_url, DefaultAzureCredential(), container, client_options=client_options
        )
        log.info("Prediction log: Blob container %s at %s (managed identity)", container, account_url)
    else:
        prediction_log = BlobAuditLog.from_connection_string(
            connection_string, container, client_options=client_options
        )
        # Never log the connection string: it holds the account key.
        log.info(
            "Prediction log: Blob container %s (connection string from %s)",
            container,
            ENV_AUDIT_CONNECTION_STRING,
        )
    return prediction_log


def init(prediction_log: PredictionLog | None = None) -> None:
    """Load and self-test the model and open the prediction log; raise if the deployment cannot serve.

    The inference server calls this with no argument (the log then comes from the environment, see
    :func:`prediction_log_from_env`); tests pass their own ``prediction_log``.
    """
    global _serving
    model_dir = os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise RuntimeError(
            f"{ENV_MODEL_DIR} is not set; init() runs inside an Azure ML deployment (or set it to test)"
        )
    artifact = find_artifact(Path(model_dir))
    model = load_model(artifact)  # verifies that a known-good record scores to a finite probability
    ref = model_ref_from_env(Path(model_dir), os.environ)
    endpoint = (os.environ.get(ENV_ENDPOINT) or "").strip()
    if not endpoint:
        raise RuntimeError(
            f"{ENV_ENDPOINT} is not set; the deployer must set it to the endpoint's stage (test or prod), "
            "which the prediction log files every request under"
        )
    if prediction_log is None:
        prediction_log = prediction_log_from_env(os.environ)
    _serving = Serving(model=model, ref=ref, endpoint=endpoint, prediction_log=prediction_log)
    log.info(
        "Loaded %s version %s (release %s, %s) from %s for endpoint %s; prediction log %r",
        ref.name,
        ref.version,
        ref.release_id,
        model.algorithm,
        artifact,
        endpoint,
        prediction_log,
    )


# ----------------------------------------------------------------------------------------------- run


@rawhttp
def run(request: Any) -> Any:
    """Answer one scoring request like ``POST /score``.

    Under the inference server ``request`` is its Flask request and the answer an ``AMLResponse``;
    called with the raw body (``str``/``bytes``) it returns the body dict (see the module docstring).
    """
    if isinstance(request, str | bytes | bytearray):
        return _run_plain(bytes(request) if isinstance(request, bytearray) else request)
    return _run_http(request)


def _run_plain(raw: str | bytes) -> dict[str, Any]:
    started = time.perf_counter()
    received_at = utc_now()
    request_id = uuid.uuid4().hex
    serving = _serving
    if serving is None:
        raise ScoringUnavailableError(503, _not_initialized(request_id))
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode("utf-8", "replace"))
    outcome = too_large(request_id, f"{size} bytes") if size > MAX_BODY_BYTES else raw
    answer = _score_and_record(serving, outcome, request_id, received_at, started)
    if answer.status >= 500:
        raise ScoringUnavailableError(answer.status, answer.body)
    return answer.body


def _run_http(request: Any) -> Any:
    if AMLResponse is None:
        raise RuntimeError(
            f"run() got a {type(request).__name__} (an HTTP request) but the inference server's AMLResponse "
            "cannot be imported; run this script under azureml-inference-server-http "
            "(serving/azureml-requirements.txt)"
        )
    started = time.perf_counter()
    received_at = utc_now()
    request_id = _request_id_for(request)
    serving = _serving
    if request.method != "POST":
        # As the local service: not a scoring request, so nothing to record.
        body = error_body(request_id, "Method Not Allowed")
        return _http_answer(Outcome(405, body), extra_headers={"Allow": "POST"})
    if serving is None:
        return _http_answer(Outcome(503, _not_initialized(request_id)))
    answer = _score_and_record(serving, _read_body(request, request_id), request_id, received_at, started)
    return _http_answer(answer)


def _http_answer(outcome: Outcome, extra_headers: dict[str, str] | None = None) -> Any:
    request_id = outcome.body["request_id"]
    _tell_server_request_id(request_id)
    headers = {REQUEST_ID_HEADER: request_id, **(extra_headers or {})}
    return AMLResponse(outcome.body, outcome.status, headers, json_str=True)


def _request_id_for(request: Any) -> str:
    """The client's ``x-request-id`` if sane, else the id the server already gave the request, else a new one."""
    client_id = request.headers.get(REQUEST_ID_HEADER)
    if client_id and _REQUEST_ID_PATTERN.fullmatch(client_id):
        return client_id
    server_id = _server_request_id()
    if server_id and server_id != client_id and _REQUEST_ID_PATTERN.fullmatch(server_id):
        return server_id
    return uuid.uuid4().hex


def _server_request_id() -> str | None:
    # azureml-inference-server-http keeps the id it will echo in flask.g.request_id (routes.py,
    # _init_headers / populate_response_headers).
    try:
        from flask import g, has_request_context
    except ImportError:
        return None
    if not has_request_context():
        return None
    value = getattr(g, "request_id", None)
    return value if isinstance(value, str) else None


def _tell_server_request_id(request_id: str) -> None:
    # The server overwrites the x-request-id response header with flask.g.request_id after run()
    # returns; without this, a replaced client id (too long, reused) would be echoed in the header while
    # the body and the prediction log carry another.
    try:
        from flask import g, has_request_context
    except ImportError:
        return
    if has_request_context():
        g.request_id = request_id


def _disconnect_errors() -> tuple[type[BaseException], ...]:
    try:
        from werkzeug.exceptions import ClientDisconnected
    except ImportError:
        return (ConnectionError,)
    return (ClientDisconnected, ConnectionError)


def _read_body(request: Any, request_id: str) -> bytes | Outcome:
    """The body, or the 400/413/415/499 Outcome refusing it; never reads more than MAX_BODY_BYTES + a chunk."""
    if refused := refuse_headers(
        request.headers.get("Content-Type"), request.headers.get("Content-Length"), request_id
    ):
        return refused
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := request.stream.read(_READ_CHUNK):
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return too_large(request_id, f"more than {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except _disconnect_errors():
        return error_outcome(
            CLIENT_CLOSED_REQUEST,
            request_id,
            INVALID_REQUEST,
            [{"field": "body", "error": "the client disconnected before sending the whole body"}],
        )
    return b"".join(chunks)


def _not_initialized(request_id: str) -> dict[str, Any]:
    return error_body(
        request_id,
        "no model loaded",
        [{"field": "model", "error": "init() has not loaded a model; check the deployment log"}],
    )


def _score_and_record(
    serving: Serving, raw: bytes | str | Outcome, request_id: str, received_at: str, started: float
) -> Outcome:
    """Score (unless already refused), then record; what to answer is what was recorded, or a 503."""
    if isinstance(raw, Outcome):
        outcome = raw
    else:
        try:
            outcome = score_raw(raw, serving.model, serving.ref, request_id)
        except Exception:
            log.exception("Internal error scoring request_id=%s on endpoint %s", request_id, serving.endpoint)
            outcome = internal_error(request_id)
    return _record(serving, outcome, received_at, started)


def _record(serving: Serving, outcome: Outcome, received_at: str, started: float) -> Outcome:
    """Append the prediction log, then return what to answer: the outcome, or 503 if it was not recorded."""
    answer, latency_ms = record_then_answer(
        serving.prediction_log.append_prediction,
        serving.endpoint,
        serving.ref,
        outcome,
        received_at,
        started,
        repr(serving.prediction_log),
    )
    _log_request(answer.body["request_id"], answer.status, outcome.n_records, serving.ref.version, latency_ms)
    return answer


def _log_request(
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
