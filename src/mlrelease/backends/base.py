"""The small interfaces the pipeline talks to, so local and cloud backends are interchangeable.

* :class:`ComputeBackend` runs the Spark training job (local ``spark-submit`` / Databricks).
* :class:`ExperimentTracker` holds parent and child runs (MLflow, local SQLite or Databricks-hosted).
* :class:`ModelRegistry` holds model versions and aliases (MLflow registry / Azure ML).
* :class:`EndpointBackend` runs the test and prod scoring endpoints (local processes / AKS via Azure ML).
* :class:`AuditLog` keeps the append-only record and the prediction log (SQLite / an Azure store).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from mlrelease.domain.selection import CandidateResult


@dataclass(frozen=True)
class TrainingRequest:
    """Everything the Spark job needs; :meth:`job_arguments` is the same on every compute backend."""

    train_path: str
    holdout_path: str
    candidates: list[dict[str, Any]]
    tracking_uri: str
    parent_run_id: str
    run_label: str
    validation_fraction: float = 0.2
    seed: int = 42
    champion_model_uri: str | None = None
    champion_version: str | None = None

    def job_arguments(self, candidates_arg: str | None = None, result_path: str | None = None) -> list[str]:
        """The job's command line, the same on every compute backend; candidates inline unless given."""
        if candidates_arg is None:
            candidates_arg = json.dumps(self.candidates, separators=(",", ":"))
        args = [
            "--train-path",
            self.train_path,
            "--test-path",
            self.holdout_path,
            "--candidates-json",
            candidates_arg,
            "--tracking-uri",
            self.tracking_uri,
            "--parent-run-id",
            self.parent_run_id,
            "--validation-fraction",
            str(self.validation_fraction),
            "--seed",
            str(self.seed),
        ]
        if self.champion_model_uri:
            args += ["--champion-model-uri", self.champion_model_uri]
            args += ["--champion-version", str(self.champion_version)]
        if result_path:
            args += ["--result-path", result_path]
        return args


@dataclass(frozen=True)
class TrainingJobResult:
    application_id: str | None
    log_location: str
    result: dict[str, Any]
    seconds: float


class TrainingJobError(RuntimeError):
    """The training job ran but failed; the message carries its log location and last lines."""


class JobLifeCycle(StrEnum):
    """Where a submitted job is: the same words as Databricks' ``life_cycle_state``."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class JobResult(StrEnum):
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


@dataclass(frozen=True)
class JobHandle:
    """A submitted training job: its run id on the compute backend and where a person can watch it."""

    run_id: str
    url: str


@dataclass(frozen=True)
class JobState:
    life_cycle: JobLifeCycle
    result: JobResult | None = None
    message: str = ""

    @property
    def is_active(self) -> bool:
        return self.life_cycle in (JobLifeCycle.PENDING, JobLifeCycle.RUNNING, JobLifeCycle.TERMINATING)

    @property
    def is_successful(self) -> bool:
        return self.life_cycle is JobLifeCycle.TERMINATED and self.result is JobResult.SUCCESS

    def encode(self) -> str:
        """``LIFE_CYCLE:RESULT``, the one-string status Airflow's ResumableJobMixin compares."""
        return f"{self.life_cycle.value}:{self.result.value if self.result else ''}"

    def __str__(self) -> str:
        text = self.life_cycle.value + (f" ({self.result.value})" if self.result else "")
        return f"{text}: {self.message}" if self.message else text


class ComputeBackend(Protocol):
    """Runs the training job, addressed by run id so that a restarted worker can find its job again.

    ``submit`` is idempotent per ``submission_key`` (the same key returns the same run, as Databricks'
    ``idempotency_token`` does); the caller keeps the run id (Airflow: the task's state store) and,
    after a crash, asks ``state`` and reattaches instead of submitting again.
    """

    name: str

    def submit(self, request: TrainingRequest, submission_key: str) -> JobHandle: ...

    def state(self, run_id: str) -> JobState: ...

    def result(self, run_id: str) -> TrainingJobResult:
        """The finished job's result; TrainingJobError naming the log when it did not succeed."""
        ...

    def cancel(self, run_id: str) -> None: ...

    def url(self, run_id: str) -> str: ...


def submission_key(*parts: object) -> str:
    """A job's idempotency key, at most 64 characters (Databricks' limit) whatever the inputs.

    Callers put the try number in: a retry after a *failed* run must get a new run, whereas a repeated
    request within one try (a lost HTTP response retried) must get the same one.
    """
    return "mlrelease-" + hashlib.sha256("|".join(str(p) for p in parts).encode()).hexdigest()[:48]


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    status: str
    start_time_ms: int | None
    end_time_ms: int | None
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


class ExperimentTracker(Protocol):
    tracking_uri: str

    def experiment_id(self, name: str) -> str: ...

    def find_parent_run(self, experiment_id: str, training_key: str | None = None) -> RunInfo | None: ...

    def create_parent_run(
        self, experiment_id: str, run_name: str, tags: dict[str, str], fingerprint: dict
    ) -> RunInfo: ...

    def get_run(self, run_id: str) -> RunInfo: ...

    def finished_children(self, parent_run_id: str) -> list[CandidateResult]: ...

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None: ...

    def download_artifact(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path: ...

    def portable_model_uri(self, model_uri: str) -> str:
        """The model's URI as another MLflow store (the registry, a job) can load it."""
        ...

    def run_url(self, run: RunInfo) -> str: ...


@dataclass(frozen=True)
class ModelVersionRef:
    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class ModelRegistry(Protocol):
    def find_version_for_run(self, name: str, run_id: str) -> ModelVersionRef | None: ...

    def register(self, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersionRef: ...

    def get_by_alias(self, name: str, alias: str) -> ModelVersionRef | None: ...

    def get_version(self, name: str, version: str) -> ModelVersionRef | None: ...

    def set_alias(self, name: str, alias: str, version: str) -> None: ...

    def version_url(self, ref: ModelVersionRef) -> str: ...


@dataclass(frozen=True)
class DeploymentSpec:
    """What an endpoint should serve: one registered version, in one release, from one artifact."""

    model_name: str
    version: str
    release_id: str
    artifact: str  # local path of the portable model document (the cloud backend: the registered asset)
    artifact_sha256: str
    lineage: dict[str, Any]
    stage: str

    def desired(self, deployed_at: str) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, "version": self.version},
            "release_id": self.release_id,
            "artifact": self.artifact,
            "artifact_sha256": self.artifact_sha256,
            "lineage": self.lineage,
            "stage": self.stage,
            "deployed_at": deployed_at,
        }

    def served_by(self, metadata: dict[str, Any] | None) -> bool:
        """Does an endpoint's ``/metadata`` say it already serves exactly this?"""
        if not metadata:
            return False
        model = metadata.get("model") or {}
        return (
            model.get("name") == self.model_name
            and str(model.get("version")) == str(self.version)
            and metadata.get("release_id") == self.release_id
            and metadata.get("artifact_sha256", self.artifact_sha256) == self.artifact_sha256
        )


class EndpointError(RuntimeError):
    """An endpoint could not be started, reached or updated; the message says what still serves."""


class EndpointBackend(Protocol):
    def url(self, endpoint: str) -> str: ...

    def current(self, endpoint: str) -> dict[str, Any] | None:
        """The endpoint's ``/metadata`` (what it serves), or None when it is down or serves nothing."""
        ...

    def desired(self, endpoint: str) -> dict[str, Any] | None:
        """The deployment the endpoint is configured to serve (a ``DeploymentSpec.desired`` document)."""
        ...

    def deploy(self, endpoint: str, spec: DeploymentSpec) -> dict[str, Any]:
        """Serve ``spec``; the previous model keeps answering until the new one is loaded and healthy.

        Idempotent: an endpoint that already serves ``spec`` is left alone. Raises EndpointError when the
        new model could not be loaded (the previous one is still serving).
        """
        ...

    def restore(self, endpoint: str, desired: dict[str, Any] | None) -> dict[str, Any] | None:
        """Roll back to a previous ``desired`` document, or to serving nothing when it is None."""
        ...

    def stop(self, endpoint: str) -> bool: ...

    def status(self) -> dict[str, dict[str, Any]]: ...


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


class AuditLog(Protocol):
    """Append-only record of what the pipeline decided and did, and of every prediction served.

    The local implementation is backends.local.audit.SqliteAuditLog; the cloud backend backs the same
    methods with an Azure store.
    """

    def append(self, event_key: str, kind: str, subject: str, payload: dict[str, Any]) -> Any: ...

    def events(self, kind: str | None = None, subject: str | None = None) -> list[Any]: ...

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord: ...

    def get_prediction(self, request_id: str) -> PredictionRecord | None: ...


def redact_uri(text: str) -> str:
    """Hide credentials in URIs (``scheme://user:pass@host`` -> ``scheme://***@host``) before logging.

    The training job (``mlrelease.training``) uses this one too, so this module must stay importable
    on a Spark cluster that has only PySpark, MLflow and this package's wheel.
    """
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", text)


def log_file_for(logs_dir: Path, label: str, suffix: str = ".log") -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    return logs_dir / f"{safe}{suffix}"
