"""Operators for the training step, which runs on (possibly remote) compute, addressed by run id.

Both operators share one preparation (the MLflow parent run keyed by ``<dag_id>/<run_id>``, the
champion, the training request) and one completion check (every candidate has a finished child run).
In between, each one submits and waits through Airflow's resumable-job contract: the compute run id
goes to the task's state store before polling, so a retry after the worker died *reattaches* to the
run instead of submitting another; a retry after a failed run submits a fresh one (its idempotency key
carries the try number); killing the task or marking it failed cancels the run (``on_kill``).

* :class:`TrainCandidatesOperator`: local ``spark-submit`` through the ``ComputeBackend`` contract.
* ``mlrelease.airflow.databricks.DatabricksTrainCandidatesOperator``: a subclass of the provider's
  ``DatabricksSubmitRunOperator``, so submission, polling, the run page link and cancellation are the
  provider's own.

:func:`train_candidates_operator` picks one by ``MLRELEASE_COMPUTE`` (read once, in settings).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator, ResumableJobMixin

from mlrelease.airflow.links import MLFLOW_RUN_URL_KEY, MlflowRunLink
from mlrelease.tags import (
    TAG_CANDIDATES,
    TAG_COMPUTE_RUN_BACKEND,
    TAG_COMPUTE_RUN_ID,
    TAG_COMPUTE_RUN_URL,
    TAG_SPARK_APPLICATION_ID,
)

log = logging.getLogger(__name__)

RUN_ID_STATE_KEY = "mlrelease_training_run_id"  # renaming it breaks reattaching in-flight retries


@dataclass
class PreparedTraining:
    parent_run_id: str
    names: list[str]
    request: Any  # TrainingRequest
    submission_key: str
    reused: dict | None = None  # set when the training already finished: nothing to submit


class TrainingTaskMixin:
    """Preparation and completion shared by the local and the Databricks training operators."""

    fingerprint: Any
    candidates: Any
    validation_fraction: float
    seed: int

    @cached_property
    def settings(self):
        from mlrelease.settings import load_settings

        return load_settings()

    @cached_property
    def backends(self):
        from mlrelease.airflow.connections import task_backends

        return task_backends(self.settings)

    def _candidate_names(self) -> list[str]:
        value = self.candidates
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        return list(value or [])

    def prepare_training(self, context: Any) -> PreparedTraining:
        from mlrelease.airflow.context import run_info
        from mlrelease.backends.base import TrainingRequest, submission_key
        from mlrelease.domain.candidates import resolve_candidates
        from mlrelease.domain.gate import PROD_ALIAS
        from mlrelease.domain.lineage import dataset_tags, run_context_tags
        from mlrelease.gitinfo import git_info
        from mlrelease.settings import project_root

        settings, backends = self.settings, self.backends
        candidates = resolve_candidates(self._candidate_names())
        names = [c.name for c in candidates]
        info = run_info(context)
        tracker = backends.tracker
        experiment_id = tracker.experiment_id(settings.experiment_name)
        parent = tracker.find_parent_run(experiment_id, info.training_key)
        key = submission_key(info.dag_id, info.run_id, context["ti"].task_id, info.try_number)
        if parent is not None and parent.status == "FINISHED":
            done = {child.candidate for child in tracker.finished_children(parent.run_id)}
            if set(names) <= done:
                log.info(
                    "Training for %s already finished in MLflow run %s (task retried or cleared): "
                    "not submitting again. %s",
                    info.training_key,
                    parent.run_id,
                    tracker.run_url(parent),
                )
                context["ti"].xcom_push(key=MLFLOW_RUN_URL_KEY, value=tracker.run_url(parent))
                return PreparedTraining(
                    parent.run_id, names, None, key, reused=self.training_result(parent.run_id, names, True)
                )
        if parent is None:
            git = git_info(project_root())
            tags = {
                **dataset_tags(self.fingerprint),
                **run_context_tags(info, git),
                TAG_CANDIDATES: json.dumps(names),
                # Already here, not only in finish_training: a training that fails still says where it ran.
                TAG_COMPUTE_RUN_BACKEND: backends.compute.name,
            }
            parent = tracker.create_parent_run(
                experiment_id, f"{info.dag_id} {info.run_id}", tags, self.fingerprint
            )
            log.info("Created MLflow parent run %s for %s", parent.run_id, info.training_key)
        else:
            log.info(
                "Resuming MLflow parent run %s (status %s) for %s: finished candidates are reused",
                parent.run_id,
                parent.status,
                info.training_key,
            )
        log.info("MLflow parent run: %s", tracker.run_url(parent))
        context["ti"].xcom_push(key="parent_run_id", value=parent.run_id)
        context["ti"].xcom_push(key=MLFLOW_RUN_URL_KEY, value=tracker.run_url(parent))

        champion = backends.registry.get_by_alias(settings.model_name, PROD_ALIAS)
        if champion:
            log.info(
                "Champion: %s version %s (alias prod, %s) will be re-scored on this run's held-out data",
                settings.model_name,
                champion.version,
                champion.source,
            )
        else:
            log.info(
                "No model is aliased prod in %s yet: no champion to compare against", settings.model_name
            )
        request = TrainingRequest(
            train_path=self.fingerprint["prepared"]["train_path"],
            holdout_path=self.fingerprint["prepared"]["holdout_path"],
            candidates=[c.to_dict() for c in candidates],
            tracking_uri=tracker.tracking_uri,
            parent_run_id=parent.run_id,
            run_label=f"{info.dag_id}-{info.run_id}-try{info.try_number}",
            validation_fraction=self.validation_fraction,
            seed=self.seed,
            # The version's storage location, not models:/<name>/<version>: the job then needs no
            # registry (on Databricks, MLflow would resolve models:/ in Unity Catalog by default).
            champion_model_uri=champion.source if champion else None,
            champion_version=champion.version if champion else None,
        )
        log.info("Training %d candidate(s) on %s: %s", len(names), backends.compute.name, ", ".join(names))
        return PreparedTraining(parent.run_id, names, request, key)

    def finish_training(self, prepared: PreparedTraining, compute_run_id: str, compute_run_url: str) -> dict:
        """Check every candidate has a finished child run; record the compute run on the parent run."""
        from mlrelease.domain.report import candidates_table

        tracker = self.backends.tracker
        tracker.set_tags(
            prepared.parent_run_id,
            {
                TAG_COMPUTE_RUN_BACKEND: self.backends.compute.name,
                TAG_COMPUTE_RUN_ID: str(compute_run_id),
                TAG_COMPUTE_RUN_URL: compute_run_url,
            },
        )
        children = tracker.finished_children(prepared.parent_run_id)
        missing = sorted(set(prepared.names) - {child.candidate for child in children})
        if missing:
            raise RuntimeError(
                f"Training run {prepared.parent_run_id} finished without child runs for {missing}; see the "
                f"compute run {compute_run_id} ({compute_run_url}). Retrying the task refits only the "
                "missing candidates."
            )
        log.info("Candidates:\n%s", candidates_table([c for c in children if c.candidate in prepared.names]))
        return self.training_result(prepared.parent_run_id, prepared.names, False)

    def training_result(self, parent_run_id: str, names: list[str], reused: bool) -> dict:
        parent = self.backends.tracker.get_run(parent_run_id)
        return {
            "parent_run_id": parent_run_id,
            "experiment_id": parent.experiment_id,
            "run_url": self.backends.tracker.run_url(parent),
            "candidates": names,
            "reused": reused,
            "compute_backend": parent.tags.get(TAG_COMPUTE_RUN_BACKEND),
            "compute_run_id": parent.tags.get(TAG_COMPUTE_RUN_ID),
            "compute_run_url": parent.tags.get(TAG_COMPUTE_RUN_URL),
            "application_id": parent.tags.get(TAG_SPARK_APPLICATION_ID),
        }


class TrainCandidatesOperator(TrainingTaskMixin, ResumableJobMixin, BaseOperator):
    """Fit every selected candidate in one local Spark application, each as an MLflow child run.

    Idempotent per DAG run: the parent MLflow run is keyed by ``<dag_id>/<run_id>``. A retry reuses it;
    the job then reuses finished child runs and refits only the missing ones, and a parent that already
    finished with every candidate is not submitted again at all. A retry after the worker died waits
    for the Spark run it had started (its run id is in the task's state store).

    :param fingerprint: the dataset fingerprint from ``validate_data`` (an XComArg).
    :param candidates: candidate names; empty means the defaults in ``mlrelease.domain.candidates``.
    """

    template_fields = ("fingerprint", "candidates")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#f4a460"
    external_id_key = RUN_ID_STATE_KEY

    def __init__(
        self,
        *,
        fingerprint: Any,
        candidates: Any = None,
        validation_fraction: float = 0.2,
        seed: int = 42,
        polling_seconds: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fingerprint = fingerprint
        self.candidates = candidates
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.polling_seconds = polling_seconds
        self.compute_run_id: str | None = None

    def execute(self, context: Any) -> dict:
        self.prepared = self.prepare_training(context)
        if self.prepared.reused:
            return self.prepared.reused
        self.execute_resumable(context)
        compute = self.backends.compute
        return self.finish_training(self.prepared, self.compute_run_id, compute.url(self.compute_run_id))

    # ----- the resumable-job contract ------------------------------------------------------------------

    def submit_job(self, context: Any) -> str:
        handle = self.backends.compute.submit(self.prepared.request, self.prepared.submission_key)
        self.compute_run_id = handle.run_id
        log.info("Training run submitted with run_id: %s; driver log: %s", handle.run_id, handle.url)
        return handle.run_id

    def get_job_status(self, external_id: Any, context: Any) -> str:
        from mlrelease.backends.base import TrainingJobError

        try:
            return self.backends.compute.state(str(external_id)).encode()
        except (TrainingJobError, ValueError):
            return "NOT_FOUND:"  # neither active nor succeeded: the mixin submits a fresh run

    def is_job_active(self, status: str) -> bool:
        return status.split(":", 1)[0] in ("PENDING", "RUNNING", "TERMINATING")

    def is_job_succeeded(self, status: str) -> bool:
        return status == "TERMINATED:SUCCESS"

    def poll_until_complete(self, external_id: Any, context: Any) -> None:
        from mlrelease.backends.local.spark import ECHO_LINE

        compute = self.backends.compute
        run_id = self.compute_run_id = str(external_id)
        log_path = compute.url(run_id)
        offset, last = 0, None
        while True:
            state = compute.state(run_id)
            if str(state) != last:
                log.info("Training run %s is %s", run_id, state)
                last = str(state)
            offset = self._echo(log_path, offset, ECHO_LINE)
            if not state.is_active:
                break
            time.sleep(self.polling_seconds)
        self._echo(log_path, offset, ECHO_LINE)
        job = compute.result(run_id)  # raises TrainingJobError with the log's last lines
        log.info(
            "Spark application %s finished in %.0fs; driver log: %s",
            job.application_id,
            job.seconds,
            log_path,
        )

    @staticmethod
    def _echo(log_path: str, offset: int, pattern) -> int:
        """Copy the job's own lines (not Spark's chatter) from the driver log into the task log."""
        try:
            with open(log_path, errors="replace") as handle:
                handle.seek(offset)
                for line in handle:
                    if pattern.search(line):
                        log.info("[spark] %s", line.rstrip()[:2000])
                return handle.tell()
        except FileNotFoundError:
            return offset

    def get_job_result(self, external_id: Any, context: Any) -> None:
        self.compute_run_id = str(external_id)

    def on_kill(self) -> None:
        if self.compute_run_id:
            self.backends.compute.cancel(self.compute_run_id)
            log.warning("Training run %s was cancelled (task killed or marked failed)", self.compute_run_id)


def train_candidates_operator(**kwargs: Any) -> BaseOperator:
    """The training operator for the configured compute (``MLRELEASE_COMPUTE``)."""
    from mlrelease.settings import load_settings

    settings = load_settings()
    if settings.compute == "databricks":
        from mlrelease.airflow.databricks import DatabricksTrainCandidatesOperator

        return DatabricksTrainCandidatesOperator(
            databricks_conn_id=settings.databricks.conn_id,
            polling_period_seconds=settings.databricks.polling_seconds,
            **kwargs,
        )
    return TrainCandidatesOperator(**kwargs)
