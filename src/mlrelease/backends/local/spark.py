"""Run the training job as a real Spark application with local ``spark-submit``.

The job never runs inside the Airflow worker process: it is a child process with its own JVM, whose
whole output goes to a log file under ``MLRELEASE_HOME/logs/spark``. The job's own log lines and its
final ``MLRELEASE_RESULT`` line are echoed into the task log; on failure the tail of the file is too.
"""

from __future__ import annotations

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
    TrainingJobError,
    TrainingJobResult,
    TrainingRequest,
    log_file_for,
    redact_uri,
)

log = logging.getLogger(__name__)

RESULT_PREFIX = "MLRELEASE_RESULT "
_APP_ID = re.compile(r"\b(local-\d+|application_\d+_\d+)\b")
_ECHO = re.compile(r"mlrelease\.jobs\.train_income|^Traceback|^\w*(Error|Exception)\b| ERROR ")


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
    """Compute backend: ``spark-submit --master local[*]`` as a child process."""

    name = "local-spark"

    def __init__(
        self, jobs_dir: Path, logs_dir: Path, master: str = "local[*]", driver_memory: str = "2g"
    ) -> None:
        self.jobs_dir = jobs_dir
        self.logs_dir = logs_dir / "spark"
        self.master = master
        self.driver_memory = driver_memory
        self._process: subprocess.Popen | None = None

    def command(self, request: TrainingRequest, candidates_file: Path, result_path: Path) -> list[str]:
        job = self.jobs_dir / "train_income.py"
        if not job.is_file():
            raise FileNotFoundError(f"Spark job {job} not found; set MLRELEASE_JOBS_DIR to the jobs/ folder")
        events = self.logs_dir / "events"
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
            *request.job_arguments(f"@{candidates_file}", str(result_path)),
        ]

    def run_training(self, request: TrainingRequest) -> TrainingJobResult:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        log_path = log_file_for(self.logs_dir, f"{request.run_label}-{stamp}")
        candidates_file = log_path.with_suffix(".candidates.json")
        result_path = log_path.with_suffix(".result.json")
        candidates_file.write_text(json.dumps(request.candidates, indent=2))
        command = self.command(request, candidates_file, result_path)
        env = {
            **os.environ,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1"),
        }
        log.info("Submitting Spark training job (master %s); full driver log: %s", self.master, log_path)
        log.info("Command: %s", redact_uri(" ".join(command)))
        started = time.monotonic()
        application_id = None
        tail: list[str] = []
        with log_path.open("w") as log_file:
            self._process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,  # so on_kill can stop the JVM and its Python workers together
            )
            assert self._process.stdout is not None
            for line in self._process.stdout:
                log_file.write(line)
                tail = (tail + [line.rstrip()])[-60:]
                if application_id is None and (match := _APP_ID.search(line)):
                    application_id = match.group(1)
                    log.info("Spark application id: %s (driver log %s)", application_id, log_path)
                if _ECHO.search(line) and not line.startswith(RESULT_PREFIX):
                    log.info("[spark] %s", line.rstrip()[:2000])
            returncode = self._process.wait()
        self._process = None
        seconds = time.monotonic() - started
        if returncode != 0:
            raise TrainingJobError(
                f"Spark training job failed with exit code {returncode} after {seconds:.0f}s "
                f"(application {application_id or 'not started'}). Full driver log: {log_path}\n"
                "Last lines:\n" + "\n".join(tail[-25:])
            )
        if not result_path.is_file():
            raise TrainingJobError(
                f"Spark training job exited 0 but wrote no result file {result_path}; see {log_path}"
            )
        result = json.loads(result_path.read_text())
        return TrainingJobResult(
            application_id=result.get("application_id") or application_id,
            log_location=str(log_path),
            result=result,
            seconds=seconds,
        )

    def cancel(self) -> None:
        process = self._process
        if process and process.poll() is None:
            log.warning("Stopping Spark training job (pid %s) and its process group", process.pid)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
