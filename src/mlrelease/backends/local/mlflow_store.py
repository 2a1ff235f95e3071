"""MLflow as experiment tracker and model registry (a local SQLite store by default).

The registry side is idempotent by construction: a model version is keyed by the training child run
that produced it, so a retried registration finds the version it already made.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from functools import cached_property
from pathlib import Path

from mlrelease.backends.base import ModelVersionRef, RunInfo, redact_uri
from mlrelease.domain.selection import CandidateResult
from mlrelease.tags import (
    ROLE_PARENT,
    TAG_ALGORITHM,
    TAG_CANDIDATE,
    TAG_MODEL_URI,
    TAG_PARENT_RUN_ID,
    TAG_ROLE,
    TAG_TRAINING_KEY,
)

log = logging.getLogger(__name__)


def _quote(value: str) -> str:
    """Quote a value for an MLflow search filter, which has no escape for a quote inside a literal."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"cannot search MLflow for {value!r}: it contains both quote characters")


class _MlflowStore:
    """A lazily created client for one tracking (and registry) URI, plus the UI base URL for links."""

    def __init__(self, tracking_uri: str, ui_url: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url.rstrip("/") if ui_url else None

    @cached_property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)


class MlflowTracker(_MlflowStore):
    """Parent and child runs in MLflow."""

    def __init__(self, tracking_uri: str, artifact_root: str, ui_url: str | None = None) -> None:
        super().__init__(tracking_uri, ui_url)
        self.artifact_root = artifact_root.rstrip("/")

    def artifact_location(self, experiment_name: str) -> str:
        return f"{self.artifact_root}/{experiment_name}"

    def experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_location(name)
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created concurrently by another task: use that one
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    @staticmethod
    def _info(run) -> RunInfo:
        return RunInfo(
            run_id=run.info.run_id,
            experiment_id=run.info.experiment_id,
            status=run.info.status,
            start_time_ms=run.info.start_time,
            end_time_ms=run.info.end_time,
            tags=dict(run.data.tags),
            metrics=dict(run.data.metrics),
            params=dict(run.data.params),
        )

    def find_parent_run(self, experiment_id: str, training_key: str | None = None) -> RunInfo | None:
        """The latest parent run, of one DAG run's training when ``training_key`` is given."""
        query = f"tags.`{TAG_ROLE}` = {_quote(ROLE_PARENT)}"
        if training_key is not None:
            query += f" and tags.`{TAG_TRAINING_KEY}` = {_quote(training_key)}"
        runs = self.client.search_runs(
            [experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
        )
        return self._info(runs[0]) if runs else None

    def create_parent_run(
        self, experiment_id: str, run_name: str, tags: dict[str, str], fingerprint: dict
    ) -> RunInfo:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        run = self.client.create_run(experiment_id, run_name=run_name, tags={**tags, TAG_ROLE: ROLE_PARENT})
        inputs = []
        for role, context in (("train", "training"), ("holdout", "evaluation")):
            part = fingerprint["prepared"][f"{role}_path"]
            with warnings.catch_warnings():  # "can be interpreted in multiple ways": both are local files
                warnings.simplefilter("ignore", UserWarning)
                source = resolve_dataset_source(Path(part).as_uri())
            dataset = MetaDataset(
                source=source,
                name=f"{role}:{fingerprint[role]['uri']}"[:500],
                digest=fingerprint[role]["sha256"][:32],
            )
            inputs.append(
                DatasetInput(dataset._to_mlflow_entity(), [InputTag("mlflow.data.context", context)])
            )
        self.client.log_inputs(run.info.run_id, inputs)
        self.client.log_dict(run.info.run_id, fingerprint, "dataset_fingerprint.json")
        return self.get_run(run.info.run_id)

    def get_run(self, run_id: str) -> RunInfo:
        return self._info(self.client.get_run(run_id))

    def finished_children(self, parent_run_id: str) -> list[CandidateResult]:
        parent = self.client.get_run(parent_run_id)
        runs = self.client.search_runs(
            [parent.info.experiment_id],
            f"tags.`{TAG_PARENT_RUN_ID}` = {_quote(parent_run_id)} and attributes.status = 'FINISHED'",
            max_results=1000,
        )
        results = []
        for run in runs:
            params = dict(run.data.params)
            algorithm = run.data.tags.get(TAG_ALGORITHM) or params.pop("algorithm", "?")
            params.pop("algorithm", None)
            results.append(
                CandidateResult(
                    candidate=run.data.tags.get(TAG_CANDIDATE, run.info.run_name),
                    run_id=run.info.run_id,
                    algorithm=algorithm,
                    params={k: _parse_param(v) for k, v in params.items()},
                    metrics=dict(run.data.metrics),
                    model_uri=run.data.tags.get(TAG_MODEL_URI),
                )
            )
        return results

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)

    def log_dict(self, run_id: str, data: dict, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def portable_model_uri(self, model_uri: str) -> str:
        """The model URI as the registry should store it (the local registry shares this store)."""
        return model_uri

    def download_artifact(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        """Copy one artifact of a run into ``dst_dir`` and return its local path."""
        dst_dir.mkdir(parents=True, exist_ok=True)
        return Path(self.client.download_artifacts(run_id, artifact_path, str(dst_dir)))

    def run_url(self, run: RunInfo) -> str:
        if self.ui_url:
            return f"{self.ui_url}/#/experiments/{run.experiment_id}/runs/{run.run_id}"
        return f"{redact_uri(self.tracking_uri)} run {run.run_id}"


def _parse_param(value: str):
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


class MlflowRegistry(_MlflowStore):
    """MLflow Model Registry; versions carry lineage tags and are keyed by their training child run."""

    @staticmethod
    def _ref(version) -> ModelVersionRef:
        return ModelVersionRef(
            name=version.name,
            version=str(version.version),
            run_id=version.run_id,
            source=version.source,
            tags=dict(version.tags or {}),
            aliases=tuple(getattr(version, "aliases", ()) or ()),
        )

    def find_version_for_run(self, name: str, run_id: str) -> ModelVersionRef | None:
        versions = self.client.search_model_versions(f"name = {_quote(name)} and run_id = {_quote(run_id)}")
        if not versions:
            return None
        oldest = min(versions, key=lambda v: int(v.version))
        return self._ref(self.client.get_model_version(name, oldest.version))

    def _ensure_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(
                    name,
                    description="UCI Adult income classifier (>50K), trained and released by mlrelease.",
                )
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently: fine if it exists now

    def register(self, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersionRef:
        """Create the version with all its tags in one call, then wait until it is READY.

        Tags go into ``create_model_version`` itself rather than being set afterwards, so a crash
        cannot leave a version without its lineage.
        """
        self._ensure_registered_model(name)
        source, model_id = model_uri, None
        if model_uri.startswith("models:/m-"):
            # An MLflow 3 logged model: resolve it with *this* client, not the process-global tracking
            # URI that create_model_version would otherwise use to look the model up.
            model_id = model_uri.removeprefix("models:/")
            source = self.client.get_logged_model(model_id).artifact_location
        created = self.client.create_model_version(
            name=name,
            source=source,
            run_id=run_id,
            model_id=model_id,
            tags=tags,
            description=f"Trained in MLflow run {run_id}",
            await_creation_for=0,
        )
        deadline = time.monotonic() + 300
        version = created
        while version.status != "READY":
            if version.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Model {name} version {created.version} is {version.status} "
                    f"({version.status_message}); delete it in the registry and retry the task"
                )
            time.sleep(1)
            version = self.client.get_model_version(name, created.version)
        return self._ref(self.client.get_model_version(name, created.version))

    def get_by_alias(self, name: str, alias: str) -> ModelVersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._ref(self.client.get_model_version_by_alias(name, alias))
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
                return None
            raise

    def get_version(self, name: str, version: str) -> ModelVersionRef | None:
        from mlflow.exceptions import MlflowException

        try:
            return self._ref(self.client.get_model_version(name, str(version)))
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
                return None
            raise

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def version_url(self, ref: ModelVersionRef) -> str:
        if self.ui_url:
            return f"{self.ui_url}/#/models/{ref.name}/versions/{ref.version}"
        return f"{ref.uri} in {redact_uri(self.tracking_uri)}"


def databricks_host() -> str:
    """The workspace URL the MLflow client talks to (set from the Airflow connection by the task)."""
    host = os.environ.get("DATABRICKS_HOST", "").rstrip("/")
    if not host:
        raise RuntimeError(
            "DATABRICKS_HOST is not set: the tracking store is the Databricks workspace's MLflow. Airflow "
            "tasks set it from the Databricks connection; on the command line export DATABRICKS_HOST and "
            "DATABRICKS_TOKEN (or use a Databricks CLI profile)."
        )
    return host if "://" in host else f"https://{host}"


class DatabricksMlflowTracker(MlflowTracker):
    """The workspace's MLflow (tracking URI ``databricks``), with artifacts on a Unity Catalog volume.

    Every experiment gets the same artifact location on the volume: the MLflow client then reads and
    writes artifacts through the workspace's Files API, so the registration step (outside Databricks)
    can download the portable model with the same client that the cluster used to log it.
    """

    def __init__(self, artifact_location: str) -> None:
        super().__init__("databricks", artifact_location)

    def artifact_location(self, experiment_name: str) -> str:
        return self.artifact_root

    def run_url(self, run: RunInfo) -> str:
        return f"{databricks_host()}/ml/experiments/{run.experiment_id}/runs/{run.run_id}"

    def portable_model_uri(self, model_uri: str) -> str:
        """Where the model's files are (``dbfs:/Volumes/...``), loadable by any MLflow client.

        ``runs:/`` and ``models:/m-`` only resolve against this workspace's tracking server; the
        registry (local) and a later job that re-scores the champion must not depend on that.
        """
        if model_uri.startswith("runs:/"):
            run_id, _, path = model_uri.removeprefix("runs:/").partition("/")
            return f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}"
        if model_uri.startswith("models:/m-"):
            return self.client.get_logged_model(model_uri.removeprefix("models:/")).artifact_location
        return model_uri
