"""Databricks compute: what the training job needs on the workspace, and the run it is submitted as.

The Airflow task submits the run with the provider's ``DatabricksSubmitRunOperator`` (see
``mlrelease.airflow.operators``); this module only decides *what* is submitted, so the payload is a
pure function of the settings and the training request, unit-testable without a workspace:

* a ``spark_python_task`` on the unchanged ``jobs/train_income.py`` with the same parameters as the
  local ``spark-submit`` (``TrainingRequest.job_arguments``), the training data and the job file on a
  Unity Catalog volume (or the job file from a workspace path or a git repository);
* a new job cluster (Spark version, node type, workers or autoscale, Spark conf) or an existing cluster;
* libraries: this package's wheel (the job imports ``mlrelease.training``) and the pinned MLflow.

Files are staged content-addressed (``.../<sha256 prefix>/<name>``) through the Databricks SDK's Files
API, so staging again is a no-op and a cluster never picks up a stale copy. No hand-written REST.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mlrelease.backends.base import (
    JobHandle,
    JobLifeCycle,
    JobResult,
    JobState,
    TrainingJobError,
    TrainingJobResult,
    TrainingRequest,
)
from mlrelease.hashing import sha256_file
from mlrelease.settings import DatabricksSettings, project_root

log = logging.getLogger(__name__)

JOB_FILE_NAME = "train_income.py"
# What the cluster installs besides this package's wheel: the job's own imports, pinned to what the
# orchestrator runs (requirements.txt pins them here), so both sides log and read the same MLflow.
CLUSTER_PACKAGES = ("mlflow",)


@dataclass(frozen=True)
class StagedFile:
    local: Path
    remote: str  # /Volumes/... path


def _content_path(root: str, local: Path, name: str | None = None) -> str:
    return f"{root}/{sha256_file(local)[:16]}/{name or local.name}"


WHEEL_SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest time a zip file can record


def build_wheel(root: Path, out_dir: Path) -> Path:
    """Build this package's wheel from a checkout (no network: the venv has setuptools)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("mlrelease-*.whl"):
        old.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out_dir)]
        + [str(root)],
        capture_output=True,
        text=True,
        # Fixed zip timestamps: the same source gives the same bytes, so the same content-addressed
        # path on the volume, and an unchanged package is not uploaded again on every run.
        env={**os.environ, "SOURCE_DATE_EPOCH": WHEEL_SOURCE_DATE_EPOCH},
    )
    wheels = sorted(out_dir.glob("mlrelease-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"could not build the mlrelease wheel from {root} (exit {result.returncode}): "
            f"{result.stderr[-2000:]}. Build it yourself (make wheel) and set MLRELEASE_DATABRICKS_WHEEL."
        )
    return wheels[-1]


class DatabricksCompute:
    """Compute backend for Databricks: payload, staging, and run state through the provider's hook."""

    name = "databricks"

    def __init__(self, settings: DatabricksSettings, jobs_dir: Path, home: Path) -> None:
        self.settings = settings
        self.jobs_dir = jobs_dir
        self.home = home

    # ----- what goes where -------------------------------------------------------------------------

    def local_wheel(self) -> Path:
        if self.settings.wheel:
            wheel = Path(self.settings.wheel).expanduser()
            if not wheel.is_file():
                raise FileNotFoundError(
                    f"MLRELEASE_DATABRICKS_WHEEL={wheel} does not exist; build it with `make wheel`"
                )
            return wheel
        root = project_root()
        if root is None:
            raise FileNotFoundError(
                "this mlrelease is not an editable install from a checkout, so no wheel can be built for the "
                "cluster; set MLRELEASE_DATABRICKS_WHEEL to the path of mlrelease-<version>-py3-none-any.whl"
            )
        return build_wheel(root, self.home / "dist")

    def staging_plan(self, request: TrainingRequest) -> dict[str, StagedFile]:
        """Local files and where they go on the volume: data, job file (volume mode) and wheel."""
        volume = self.settings.volume
        plan = {
            role: StagedFile(Path(local), _content_path(f"{volume}/data", Path(local), f"{role}.parquet"))
            for role, local in (("train", request.train_path), ("holdout", request.holdout_path))
        }
        if self.settings.job_source == "volume":
            job = self.jobs_dir / JOB_FILE_NAME
            if not job.is_file():
                raise FileNotFoundError(f"{job} not found; set MLRELEASE_JOBS_DIR to the jobs/ folder")
            plan["job"] = StagedFile(job, _content_path(f"{volume}/jobs", job))
        wheel = self.local_wheel()
        plan["wheel"] = StagedFile(wheel, _content_path(f"{volume}/wheels", wheel))
        return plan

    def stage(self, request: TrainingRequest) -> dict[str, StagedFile]:
        """Upload what the run needs to the volume (skipping what is already there) and return the plan."""
        from databricks.sdk import WorkspaceClient
        from databricks.sdk.errors import NotFound

        # Host and token come from DATABRICKS_HOST/DATABRICKS_TOKEN, set by the Airflow task from the
        # connection; the SDK never sees them in code or logs.
        files = WorkspaceClient().files
        plan = self.staging_plan(request)
        for role, staged in plan.items():
            try:
                remote = files.get_metadata(staged.remote)
                if int(remote.content_length or -1) == staged.local.stat().st_size:
                    log.info("Staged %s already on the volume: %s", role, staged.remote)
                    continue
            except NotFound:
                pass
            with staged.local.open("rb") as handle:
                files.upload(staged.remote, handle, overwrite=True)
            log.info(
                "Uploaded %s (%s, %d bytes) to %s",
                role,
                staged.local,
                staged.local.stat().st_size,
                staged.remote,
            )
        return plan

    def python_file(self, plan: dict[str, StagedFile]) -> str:
        if self.settings.job_source == "volume":
            return plan["job"].remote
        return str(self.settings.job_file)

    def cluster(self) -> dict[str, Any]:
        if self.settings.existing_cluster_id:
            return {"existing_cluster_id": self.settings.existing_cluster_id}
        cluster: dict[str, Any] = {
            "spark_version": self.settings.spark_version,
            "node_type_id": self.settings.node_type_id,
            "data_security_mode": self.settings.data_security_mode,
            "spark_conf": dict(self.settings.spark_conf),
            "custom_tags": {"project": "mlrelease"},
        }
        if self.settings.autoscale:
            low, high = self.settings.autoscale
            cluster["autoscale"] = {"min_workers": low, "max_workers": high}
        else:
            cluster["num_workers"] = self.settings.num_workers
        return {"new_cluster": cluster}

    def libraries(self, plan: dict[str, StagedFile]) -> list[dict[str, Any]]:
        libraries: list[dict[str, Any]] = [{"whl": plan["wheel"].remote}]
        for package in CLUSTER_PACKAGES:
            libraries.append({"pypi": {"package": f"{package}=={metadata.version(package)}"}})
        return libraries

    def submit_payload(
        self, request: TrainingRequest, plan: dict[str, StagedFile], run_name: str, idempotency_token: str
    ) -> dict[str, Any]:
        """The ``runs/submit`` body: the same job and parameters as the local spark-submit."""
        if len(idempotency_token) > 64:
            raise ValueError(f"idempotency_token {idempotency_token!r} is over Databricks' 64 characters")
        remote = TrainingRequest(
            **{
                **request.__dict__,
                "train_path": plan["train"].remote,
                "holdout_path": plan["holdout"].remote,
            }
        )
        task: dict[str, Any] = {
            "python_file": self.python_file(plan),
            "parameters": remote.job_arguments(),
        }
        payload: dict[str, Any] = {
            "run_name": run_name,
            "idempotency_token": idempotency_token,
            "timeout_seconds": self.settings.run_timeout_seconds,
            "spark_python_task": task,
            "libraries": self.libraries(plan),
            **self.cluster(),
        }
        if self.settings.job_source == "git":
            task["source"] = "GIT"
            git: dict[str, Any] = {
                "git_url": self.settings.git_url,
                "git_provider": self.settings.git_provider,
            }
            if self.settings.git_commit:
                git["git_commit"] = self.settings.git_commit
            else:
                git["git_branch"] = self.settings.git_branch or "main"
            payload["git_source"] = git
        return payload

    # ----- the ComputeBackend contract, through the provider's hook ------------------------------------

    def _hook(self):
        from airflow.providers.databricks.hooks.databricks import DatabricksHook

        return DatabricksHook(self.settings.conn_id)

    def submit(self, request: TrainingRequest, submission_key: str) -> JobHandle:
        plan = self.stage(request)
        hook = self._hook()
        run_id = hook.submit_run(self.submit_payload(request, plan, request.run_label, submission_key))
        return JobHandle(str(run_id), hook.get_run_page_url(int(run_id)))

    def state(self, run_id: str) -> JobState:
        state = self._hook().get_run_state(int(run_id))
        return to_job_state(state.life_cycle_state, state.result_state, state.state_message)

    def result(self, run_id: str) -> TrainingJobResult:
        hook = self._hook()
        run = hook.get_run(int(run_id))
        state = run["state"]
        job_state = to_job_state(
            state["life_cycle_state"], state.get("result_state"), state.get("state_message")
        )
        if not job_state.is_successful:
            raise TrainingJobError(
                f"Databricks run {run_id} ended {job_state}; see {run.get('run_page_url')}"
            )
        seconds = (run.get("end_time", 0) - run.get("start_time", 0)) / 1000
        return TrainingJobResult(None, run.get("run_page_url", ""), {"run": run_id}, seconds)

    def cancel(self, run_id: str) -> None:
        self._hook().cancel_run(int(run_id))

    def url(self, run_id: str) -> str:
        return self._hook().get_run_page_url(int(run_id))


def to_job_state(life_cycle: str, result: str | None, message: str | None) -> JobState:
    """Databricks' run state in our terms; states Databricks may add later count as still running."""
    try:
        cycle = JobLifeCycle(life_cycle)
    except ValueError:
        cycle = (
            JobLifeCycle.RUNNING
            if life_cycle in ("QUEUED", "BLOCKED", "WAITING_FOR_RETRY")
            else (JobLifeCycle.INTERNAL_ERROR if life_cycle == "SKIPPED" else JobLifeCycle.RUNNING)
        )
    outcome = None
    if result:
        outcome = (
            JobResult.SUCCESS
            if result == "SUCCESS"
            else (JobResult.CANCELED if result in ("CANCELED", "TIMEDOUT") else JobResult.FAILED)
        )
    if cycle is JobLifeCycle.INTERNAL_ERROR and outcome is None:
        outcome = JobResult.FAILED
    return JobState(cycle, outcome, message or "")
