"""Azure ML scoring script (``init()`` / ``run(raw_data)``) over the same core as the local service.

Azure ML online endpoints import this file and call :func:`init` once, then :func:`run` per request
with the raw body. Validation, scoring and the response shape are those of ``POST /score``
(``serving.core``), so a client and the endpoint checks cannot tell the two apart by their bodies.

Differences from the local service, on purpose:

* There is no prediction log here. On Azure ML, request/response capture is the platform's data
  collector, configured with the deployment (the cloud backend's job), not this script's.
* ``run`` cannot choose the HTTP status without Azure-specific response classes, so bad input is
  answered with ``{"request_id", "error", "details": [...]}`` (the same body the local service sends
  with its 4xx) rather than raised. Bugs still raise, so Azure ML answers them with a 5xx and logs them.
* Which model answers comes from the deployment: ``AZUREML_MODEL_DIR`` is
  ``.../azureml-models/<name>/<version>``; ``MLRELEASE_MODEL_NAME``, ``MLRELEASE_MODEL_VERSION`` and
  ``MLRELEASE_RELEASE_ID`` (set by the deployer as environment variables) take precedence.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

from mlrelease.domain.payload import MAX_BODY_BYTES
from mlrelease.serving.core import INVALID_REQUEST, ModelRef, error_body, load_model, score_raw
from mlrelease.serving.portable import PortableModel
from mlrelease.tags import PORTABLE_MODEL_FILE

log = logging.getLogger(__name__)

_model: PortableModel | None = None
_ref: ModelRef | None = None


def find_artifact(model_dir: Path) -> Path:
    """The one ``portable_model.json`` under ``model_dir`` (searched recursively)."""
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"AZUREML_MODEL_DIR={model_dir} is not a directory; the deployment must reference the registered "
            f"model that holds {PORTABLE_MODEL_FILE}"
        )
    found = sorted(model_dir.rglob(PORTABLE_MODEL_FILE))
    if not found:
        raise FileNotFoundError(
            f"no {PORTABLE_MODEL_FILE} under AZUREML_MODEL_DIR={model_dir}; register the exported portable model "
            "(not the Spark model directory) and redeploy"
        )
    if len(found) > 1:
        raise RuntimeError(
            f"{len(found)} copies of {PORTABLE_MODEL_FILE} under AZUREML_MODEL_DIR={model_dir} ({', '.join(map(str, found))}); "
            "deploy exactly one model version per deployment"
        )
    return found[0]


def _model_ref(model_dir: Path) -> ModelRef:
    name = version = None
    if model_dir.parent.parent.name == "azureml-models":
        name, version = model_dir.parent.name, model_dir.name
    return ModelRef(
        name=os.environ.get("MLRELEASE_MODEL_NAME") or name,
        version=os.environ.get("MLRELEASE_MODEL_VERSION") or version,
        release_id=os.environ.get("MLRELEASE_RELEASE_ID") or None,
    )


def init() -> None:
    """Load and self-test the model; raise (Azure ML then marks the deployment failed) if it cannot serve."""
    global _model, _ref
    model_dir = os.environ.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError(
            "AZUREML_MODEL_DIR is not set; init() runs inside an Azure ML deployment (or set it to test)"
        )
    artifact = find_artifact(Path(model_dir))
    model = load_model(artifact)
    ref = _model_ref(Path(model_dir))
    _model, _ref = model, ref
    log.info(
        "Loaded %s version %s (release %s, %s) from %s",
        ref.name,
        ref.version,
        ref.release_id,
        model.algorithm,
        artifact,
    )


def run(raw_data: str | bytes) -> dict[str, Any]:
    """Score a request body; the answer has the shape of ``POST /score``'s (an error body for bad input)."""
    request_id = uuid.uuid4().hex
    if _model is None:
        return error_body(
            request_id,
            "no model loaded",
            [{"field": "model", "error": "init() has not loaded a model; check the deployment log"}],
        )
    size = len(raw_data) if isinstance(raw_data, bytes) else len(raw_data.encode("utf-8", "replace"))
    if size > MAX_BODY_BYTES:
        return error_body(
            request_id,
            INVALID_REQUEST,
            [
                {
                    "field": "body",
                    "error": f"too large: {size} bytes exceeds the limit of {MAX_BODY_BYTES}; split the batch",
                }
            ],
        )
    outcome = score_raw(raw_data, _model, _ref, request_id)
    log.info(
        "score request_id=%s status=%d records=%d model_version=%s",
        request_id,
        outcome.status,
        outcome.n_records,
        _ref.version if _ref else None,
    )
    return outcome.body
