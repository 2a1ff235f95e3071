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

from mlrelease.domain.endpoint_checks import CheckReport, Expectation
from mlrelease.domain.records import AuditEvent, PredictionRecord
from mlrelease.domain.selection import CandidateResult
from mlrelease.domain.served import ServedModelRef


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
    """What an endpoint should serve: one registered version, in one release.

    Registry-neutral: each endpoint backend stages what it needs from ``model`` itself (the local one
    fetches the portable model file, Azure ML references the registered model asset).
    """

    model: ModelVersionRef
    release_id: str
    lineage: dict[str, Any]
    stage: str

    @property
    def served(self) -> ServedModelRef:
        return ServedModelRef(self.model.name, self.model.version, self.release_id)


@dataclass(frozen=True)
class Rollout:
    """One deployment made by :meth:`EndpointBackend.deploy`, as the later steps of a release need it.

    ``deployment`` is the platform's name for it (Azure ML: the deployment that checks reach with the
    ``azureml-model-deployment`` header before it takes traffic); ``live`` says it already takes the
    endpoint's traffic (the local service swaps in place), so a cut-over has nothing left to move.
    """

    endpoint: str
    served: ServedModelRef
    deployment: str | None = None
    live: bool = False
    replacing: ServedModelRef | None = None  # what served the endpoint when the deployment began


@dataclass(frozen=True)
class DeploymentState:
    """Where a submitted deployment is: Azure ML's provisioning states (Creating, Updating, Succeeded,
    Failed, ...); ``message`` says why it failed (the deployment log's tail)."""

    state: str
    message: str = ""

    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def done(self) -> bool:
        return self.state in (self.SUCCEEDED, self.FAILED)


class EndpointError(RuntimeError):
    """An endpoint could not be started, reached or updated; the message says what still serves."""


class EndpointBackend(Protocol):
    """Test and prod endpoints. A release is deploy → check → cut over → retire, or roll back.

    Each step keeps the rule that an endpoint is never left without a serving model: the new version
    is loaded beside the one serving; traffic moves only after its checks passed; the old one goes only
    after the new one served. Every step is idempotent, so a retried task converges.
    """

    def url(self, endpoint: str) -> str:
        """The base URL that ``/score`` is appended to (never with a key in it)."""
        ...

    def serving(self, endpoint: str) -> ServedModelRef | None:
        """The model that takes the endpoint's traffic, or None when it serves nothing."""
        ...

    def restore_point(self, endpoint: str) -> dict[str, Any] | None:
        """A JSON document of what the endpoint serves now, which :meth:`roll_back` can return to."""
        ...

    def start_deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        """Submit ``spec`` to be loaded beside what serves; EndpointError (the previous model still
        serving) if it is refused. Does not wait for provisioning (:meth:`deployment_state` does).

        Idempotent: a version already deployed in that release is found, not deployed again.
        """
        ...

    def deployment_state(self, rollout: Rollout) -> DeploymentState: ...

    def finish_deploy(self, rollout: Rollout, state: DeploymentState) -> Rollout:
        """The provisioned rollout, or EndpointError (a failed deployment removed, traffic unchanged)."""
        ...

    def deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        """:meth:`start_deploy`, wait, :meth:`finish_deploy`: for callers that may block."""
        ...

    def find(self, endpoint: str, served: ServedModelRef) -> Rollout | None:
        """The rollout that put ``served`` on ``endpoint`` (for the checks of a later task)."""
        ...

    def check(self, endpoint: str, expect: Expectation, rollout: Rollout) -> CheckReport:
        """The contract checks against the rollout's deployment, plus this platform's checks."""
        ...

    def cut_over(self, rollout: Rollout) -> ServedModelRef:
        """Move all the endpoint's traffic to the rollout and verify it serves; EndpointError (traffic back
        where it was) otherwise."""
        ...

    def retire(self, rollout: Rollout) -> list[str]:
        """Remove what no longer serves after a cut-over that passed; the names removed."""
        ...

    def roll_back(self, rollout: Rollout, restore_point: dict[str, Any] | None) -> ServedModelRef | None:
        """Traffic back to ``restore_point`` (serving nothing when None) and the rollout removed."""
        ...

    def stop(self, endpoint: str) -> bool: ...

    def status(self) -> dict[str, dict[str, Any]]: ...


class AuditLog(Protocol):
    """Append-only record of what the pipeline decided and did, and of every prediction served.

    The local implementation is backends.local.audit.SqliteAuditLog; the cloud backend backs the same
    methods with an Azure store.
    """

    def append(self, event_key: str, kind: str, subject: str, payload: dict[str, Any]) -> AuditEvent:
        """Append once per ``event_key``; a repeated key returns the first event unchanged."""
        ...

    def events(self, kind: str | None = None, subject: str | None = None) -> list[AuditEvent]:
        """Events in the order they were appended, optionally of one kind and/or one subject."""
        ...

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        """Durably store one request's record before it is answered; a repeated id keeps the first."""
        ...

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
