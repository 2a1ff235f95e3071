"""Run the training job as a real Spark application with local ``spark-submit``, addressed by run id.

The job never runs inside the Airflow worker process: it is a detached process group with its own JVM,
whose whole output goes to ``driver.log`` in its run directory ``MLRELEASE_HOME/compute/runs/<run id>``.
A small shell wrapper writes the exit code beside it when the job ends, so the state of a run can be
read back by any process, at any time: a worker that was killed while the job ran is replaced by a
retry that finds the run (its id is in the task's state store), sees it RUNNING and waits for it
instead of submitting a second one. The run id is derived from the submission key, so a repeated
submit with the same key returns the same run, as Databricks does with ``idempotency_token``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlrelease.backends.base import (
    JobHandle,
    JobLifeCycle,
    JobResult,
    JobState,
    TrainingJobError,
    TrainingJobResult,
    TrainingRequest,
    redact_uri,
)
from mlrelease.processes import alive

log = logging.getLogger(__name__)

_APP_ID = re.compile(r"\b(local-\d+|application_\d+_\d+)\b")
# The job's own log lines (and errors) are worth echoing into the task log; Spark's chatter is not.
ECHO_LINE = re.compile(r"mlrelease\.(jobs|training)\b|^Traceback|^\w*(Error|Exception)\b| ERROR ")
# Runs the job, then records its exit code atomically: the state of a run survives its submitter.
_WRAPPER = (
    'cd "$1"; shift; "$@" > driver.log 2>&1; code=$?; echo $code > exit_code.tmp; mv exit_code.tmp exit_code'
)


def spark_submit_executable() -> str:
    """The spark-submit that ships with the pyspark installed next to this interpreter."""
    beside = Path(sys.executable).with_name("spark-submit")
    if beside.exists():
        return str(beside)
    found = shutil.which("spark-submit")
    if not found:
        raise FileNotFoundError(
            "spark-submit not found next to the Python interpreter or on PATH; install the pinned "
            "pyspark (pip install -r requirements.txt)"
        )
    return found


class LocalSparkCompute:
    """Compute backend: ``spark-submit --master local[*]`` as a detached process group."""

    name = "local-spark"

    def __init__(
        self,
        jobs_dir: Path,
        runs_dir: Path,
        master: str = "local[*]",
        driver_memory: str = "2g",
    ) -> None:
        self.jobs_dir = jobs_dir
        self.runs_dir = runs_dir
        self.master = master
        self.driver_memory = driver_memory
        self._children: dict[str, subprocess.Popen] = {}  # reaped by state(), so no zombie is left

    def run_dir(self, run_id: str) -> Path:
        if not re.fullmatch(r"local-[0-9a-f]{16}", run_id):
            raise ValueError(f"{run_id!r} is not a local Spark run id (local-<16 hex>)")
        return self.runs_dir / run_id

    def url(self, run_id: str) -> str:
        """Where a person watches the run: its driver log."""
        return str(self.run_dir(run_id) / "driver.log")

    def command(self, request: TrainingRequest, run_dir: Path) -> list[str]:
        job = self.jobs_dir / "train_income.py"
        if not job.is_file():
            raise FileNotFoundError(f"Spark job {job} not found; set MLRELEASE_JOBS_DIR to the jobs/ folder")
        events = self.runs_dir.parent / "spark-events"
        events.mkdir(parents=True, exist_ok=True)
        return [
            spark_submit_executable(),
            "--master",
            self.master,
            "--name",
            f"mlrelease-train {request.run_label}",
            "--driver-memory",
            self.driver_memory,
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.eventLog.enabled=true",
            "--conf",
            f"spark.eventLog.dir={events.as_uri()}",
            "--conf",
            "spark.sql.shuffle.partitions=8",
            str(job),
            *request.job_arguments(result_path=str(run_dir / "result.json")),
        ]

    def submit(self, request: TrainingRequest, submission_key: str) -> JobHandle:
        run_id = "local-" + hashlib.sha256(submission_key.encode()).hexdigest()[:16]
        run_dir = self.run_dir(run_id)
        if (run_dir / "pid").is_file():
            log.info("Run %s was already submitted for key %s: not submitting again", run_id, submission_key)
            return JobHandle(run_id, self.url(run_id))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "request.json").write_text(redact_uri(json.dumps(request.__dict__, indent=2, default=str)))
        command = self.command(request, run_dir)
        (run_dir / "command.txt").write_text(redact_uri(" ".join(command)) + "\n")
        env = {
            **os.environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        }
        process = subprocess.Popen(
            ["bash", "-c", _WRAPPER, "mlrelease-train", str(run_dir), *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # outlives the worker; cancel() stops the JVM and its Python workers
        )
        self._children[run_id] = process
        (run_dir / "pid").write_text(f"{process.pid}\n")
        (run_dir / "submitted_at").write_text(f"{time.time()}\n")
        log.info(
            "Submitted Spark training run %s (master %s, pid %s); driver log: %s",
            run_id,
            self.master,
            process.pid,
            self.url(run_id),
        )
        log.info("Command: %s", redact_uri(" ".join(command)))
        return JobHandle(run_id, self.url(run_id))

    def state(self, run_id: str) -> JobState:
        run_dir = self.run_dir(run_id)
        if run_id in self._children:
            self._children[run_id].poll()
        if not (run_dir / "pid").is_file():
            raise TrainingJobError(f"Spark run {run_id} does not exist (no {run_dir / 'pid'})")
        exit_code = run_dir / "exit_code"
        cancelled = (run_dir / "cancelled").is_file()
        if exit_code.is_file():
            code = int(exit_code.read_text().strip() or "-1")
            if code == 0:
                return JobState(JobLifeCycle.TERMINATED, JobResult.SUCCESS, "spark-submit exited 0")
            if cancelled:
                return JobState(JobLifeCycle.TERMINATED, JobResult.CANCELED, "Run cancelled.")
            return JobState(
                JobLifeCycle.TERMINATED, JobResult.FAILED, f"spark-submit exited with code {code}"
            )
        pid = int((run_dir / "pid").read_text())
        if alive(pid):
            if cancelled:
                return JobState(JobLifeCycle.TERMINATING, None, "cancel requested")
            return JobState(JobLifeCycle.RUNNING, None, f"spark-submit running (pid {pid})")
        if cancelled:
            return JobState(JobLifeCycle.TERMINATED, JobResult.CANCELED, "Run cancelled.")
        return JobState(
            JobLifeCycle.INTERNAL_ERROR,
            JobResult.FAILED,
            f"the job's process {pid} is gone without an exit code (killed from outside?)",
        )

    def application_id(self, run_id: str) -> str | None:
        log_path = self.run_dir(run_id) / "driver.log"
        if not log_path.is_file():
            return None
        with log_path.open(errors="replace") as handle:
            for line in handle:
                if match := _APP_ID.search(line):
                    return match.group(1)
        return None

    def tail(self, run_id: str, lines: int = 25) -> list[str]:
        log_path = self.run_dir(run_id) / "driver.log"
        if not log_path.is_file():
            return []
        return log_path.read_text(errors="replace").splitlines()[-lines:]

    def result(self, run_id: str) -> TrainingJobResult:
        run_dir = self.run_dir(run_id)
        state = self.state(run_id)
        seconds = 0.0
        if (run_dir / "submitted_at").is_file() and (run_dir / "exit_code").is_file():
            seconds = (run_dir / "exit_code").stat().st_mtime - float((run_dir / "submitted_at").read_text())
        application_id = self.application_id(run_id)
        if not state.is_successful:
            raise TrainingJobError(
                f"Spark training run {run_id} ended {state} after {seconds:.0f}s "
                f"(application {application_id or 'not started'}). Full driver log: {self.url(run_id)}\n"
                "Last lines:\n" + "\n".join(self.tail(run_id))
            )
        result_path = run_dir / "result.json"
        if not result_path.is_file():
            raise TrainingJobError(
                f"Spark training run {run_id} exited 0 but wrote no result file {result_path}; "
                f"see {self.url(run_id)}"
            )
        result = json.loads(result_path.read_text())
        return TrainingJobResult(
            application_id=result.get("application_id") or application_id,
            log_location=self.url(run_id),
            result=result,
            seconds=seconds,
        )

    def cancel(self, run_id: str) -> None:
        run_dir = self.run_dir(run_id)
        if not (run_dir / "pid").is_file() or (run_dir / "exit_code").is_file():
            return
        (run_dir / "cancelled").write_text(f"{time.time()}\n")
        pid = int((run_dir / "pid").read_text())
        log.warning("Cancelling Spark training run %s: stopping process group %s", run_id, pid)
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.state(run_id).is_active:
            time.sleep(0.2)
        if self.state(run_id).is_active:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
