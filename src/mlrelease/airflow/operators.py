"""Operators for the parts of the pipeline that run on (possibly remote) compute."""

from __future__ import annotations

import json
import logging
from functools import cached_property
from typing import Any

from airflow.sdk import BaseOperator

from mlrelease.airflow.links import MLFLOW_RUN_URL_KEY, MlflowRunLink

log = logging.getLogger(__name__)


class TrainCandidatesOperator(BaseOperator):
    """Fit every selected candidate in one Spark application, each as an MLflow child run.

    Idempotent per DAG run: the parent MLflow run is keyed by ``<dag_id>/<run_id>``. A retry reuses it;
    the job then reuses finished child runs and refits only the missing ones, and a parent that already
    finished with every candidate is not submitted again at all.

    :param fingerprint: the dataset fingerprint from ``validate_data`` (an XComArg).
    :param candidates: candidate names; empty means the defaults in ``mlrelease.domain.candidates``.
    """

    template_fields = ("fingerprint", "candidates")
    operator_extra_links = (MlflowRunLink(),)
    ui_color = "#f4a460"

    def __init__(
        self,
        *,
        fingerprint: Any,
        candidates: Any = None,
        validation_fraction: float = 0.2,
        seed: int = 42,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fingerprint = fingerprint
        self.candidates = candidates
        self.validation_fraction = validation_fraction
        self.seed = seed

    @cached_property
    def settings(self):
        from mlrelease.settings import load_settings

        return load_settings()

    @cached_property
    def backends(self):
        from mlrelease.backends import get_backends

        return get_backends(self.settings)

    def _candidate_names(self) -> list[str]:
        value = self.candidates
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        return list(value or [])

    def execute(self, context: Any) -> dict:
        from mlrelease.airflow.context import run_info
        from mlrelease.backends.base import TrainingRequest
        from mlrelease.domain.candidates import resolve_candidates
        from mlrelease.domain.gate import PROD_ALIAS
        from mlrelease.domain.lineage import dataset_tags, run_context_tags
        from mlrelease.domain.report import candidates_table
        from mlrelease.gitinfo import git_info
        from mlrelease.settings import project_root

        settings, backends = self.settings, self.backends
        candidates = resolve_candidates(self._candidate_names())
        names = [c.name for c in candidates]
        info = run_info(context)
        tracker = backends.tracker
        experiment_id = tracker.experiment_id(settings.experiment_name)
        parent = tracker.find_parent_run(experiment_id, info.training_key)
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
                return self._result(parent.run_id, names, reused=True)
        if parent is None:
            git = git_info(project_root())
            tags = {
                **dataset_tags(self.fingerprint),
                **run_context_tags(info, git),
                "mlrelease.candidates": json.dumps(names),
                "mlrelease.compute_backend": backends.compute.name,
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
                "Champion: %s version %s (alias prod) will be re-scored on this run's held-out data",
                settings.model_name,
                champion.version,
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
            champion_model_uri=champion.uri if champion else None,
            champion_version=champion.version if champion else None,
        )
        log.info("Submitting %d candidate(s) to %s: %s", len(names), backends.compute.name, ", ".join(names))
        job = backends.compute.run_training(request)
        log.info(
            "Spark application %s finished in %.0fs; driver log: %s",
            job.application_id,
            job.seconds,
            job.log_location,
        )
        children = tracker.finished_children(parent.run_id)
        missing = sorted(set(names) - {child.candidate for child in children})
        if missing:
            raise RuntimeError(
                f"Training run {parent.run_id} finished without child runs for {missing}; see the driver "
                f"log {job.log_location}. Retrying the task refits only the missing candidates."
            )
        log.info("Candidates:\n%s", candidates_table([c for c in children if c.candidate in names]))
        return self._result(
            parent.run_id, names, reused=False, application_id=job.application_id, log=job.log_location
        )

    def _result(self, parent_run_id: str, names: list[str], reused: bool, **extra: Any) -> dict:
        parent = self.backends.tracker.get_run(parent_run_id)
        return {
            "parent_run_id": parent_run_id,
            "experiment_id": parent.experiment_id,
            "run_url": self.backends.tracker.run_url(parent),
            "candidates": names,
            "reused": reused,
            "application_id": extra.get("application_id") or parent.tags.get("spark.application_id"),
            "spark_log": extra.get("log"),
        }

    def on_kill(self) -> None:
        self.backends.compute.cancel()
