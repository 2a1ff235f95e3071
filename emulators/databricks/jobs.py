"""Jobs API runs (``runs/submit``, ``runs/get``, ``runs/get-output``, ``runs/cancel``) run for real.

A submitted ``spark_python_task`` becomes a local ``spark-submit`` child process in its own session,
with /Volumes and /Workspace paths mapped to the emulator's trees the way a cluster's FUSE mounts
show them. The life cycle follows the service: PENDING (cluster start, about a second) -> RUNNING
(while the process lives) -> TERMINATED with SUCCESS / FAILED / CANCELED, or INTERNAL_ERROR for setup
problems (file or library missing), so the provider's polling, failure reporting and cancellation paths
see what they would see on Databricks. Runs are persisted as ``runs/<run_id>/run.json`` so ids keep
increasing across restarts of the emulator.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from emulators._process import kill_group, spawn_in_session
from emulators.databricks.paths import PathError, WorkspaceTree
from emulators.databricks.wire import ApiError

log = logging.getLogger(__name__)

TERMINAL_LIFE_CYCLES = ("TERMINATED", "INTERNAL_ERROR", "SKIPPED")
PENDING_SECONDS = 1.0
FORCED_RUNNING_SECONDS = 2.0
CANCEL_GRACE_SECONDS = 10.0
LOG_TAIL_BYTES = 5 * 1024 * 1024
MAX_IDEMPOTENCY_TOKEN = 64
WORKSPACE_ORG_ID = "1234567890"
CREATOR = "emulator@databricks.local"
FIRST_RUN_ID = 1001
FIRST_JOB_ID = 7001
SUPPORTED_TASK_TYPES = ("spark_python_task",)
OTHER_TASK_TYPES = (
    "notebook_task",
    "spark_jar_task",
    "python_wheel_task",
    "spark_submit_task",
    "pipeline_task",
    "sql_task",
    "dbt_task",
    "run_job_task",
    "condition_task",
    "for_each_task",
)
FORCEABLE_RESULTS = ("FAILED", "INTERNAL_ERROR")


def spark_submit_executable() -> str:
    """The spark-submit that ships with the pyspark installed next to this interpreter."""
    beside = Path(sys.executable).with_name("spark-submit")
    if beside.exists():
        return str(beside)
    found = shutil.which("spark-submit")
    if not found:
        raise FileNotFoundError("spark-submit not found next to the Python interpreter or on PATH")
    return found


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Faults:
    """Faults the control route ``/emulator/faults`` sets; see the server module."""

    submit_503: int = 0
    lose_submit_response: int = 0
    next_run_result: str | None = None
    next_run_message: str | None = None
    stuck_pending: bool = False


@dataclass
class Run:
    run_id: int
    task_run_id: int
    job_id: int
    run_name: str
    task_key: str
    idempotency_token: str | None
    spark_python_task: dict[str, Any]
    cluster_spec: dict[str, Any]
    libraries: list[dict[str, Any]]
    start_time: int
    timeout_seconds: int = 0
    life_cycle_state: str = "PENDING"
    result_state: str | None = None
    state_message: str = "Waiting for cluster"
    user_cancelled_or_timedout: bool = False
    termination_code: str | None = None
    execution_start: int | None = None
    end_time: int | None = None
    pid: int | None = None
    exit_code: int | None = None
    command: list[str] = field(default_factory=list)
    held: bool = False
    forced_result: str | None = None
    forced_message: str | None = None
    cancel_requested: bool = False

    @property
    def terminal(self) -> bool:
        return self.life_cycle_state in TERMINAL_LIFE_CYCLES


class SetupError(Exception):
    """A run that cannot start (file or library missing): it ends INTERNAL_ERROR with this message."""

    def __init__(self, message: str, code: str = "INTERNAL_ERROR") -> None:
        super().__init__(message)
        self.code = code


class RunRegistry:
    """Every run of this emulator home, its worker thread and its spark-submit process."""

    def __init__(
        self,
        state_dir: Path,
        tree: WorkspaceTree,
        base_url: str,
        token: str,
        spark_master: str,
        faults: Faults,
    ) -> None:
        self.runs_dir = state_dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.tree = tree
        self.base_url = base_url
        self.token = token
        self.spark_master = spark_master
        self.faults = faults
        self.cond = threading.Condition()
        self._runs: dict[int, Run] = {}
        self._task_to_run: dict[int, int] = {}
        self._by_token: dict[str, int] = {}
        self._procs: dict[int, subprocess.Popen] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._next_run_id = FIRST_RUN_ID
        self._next_job_id = FIRST_JOB_ID
        self._load()

    # ---- persistence ---------------------------------------------------------------------------

    def _load(self) -> None:
        names = {f.name for f in fields(Run)}
        for run_file in sorted(self.runs_dir.glob("*/run.json")):
            try:
                data = json.loads(run_file.read_text())
                run = Run(**{k: v for k, v in data.items() if k in names})
            except (OSError, ValueError, TypeError) as e:
                log.warning("Skipping unreadable run record %s: %s", run_file, e)
                continue
            if not run.terminal:
                run.life_cycle_state = "INTERNAL_ERROR"
                run.result_state = "FAILED"
                run.termination_code = "INTERNAL_ERROR"
                run.state_message = "The emulator stopped while this run was active; submit it again."
                run.end_time = run.end_time or now_ms()
                self._save(run)
            self._index(run)
        if self._runs:
            log.info("Loaded %s earlier runs; next run id %s", len(self._runs), self._next_run_id)

    def _index(self, run: Run) -> None:
        self._runs[run.run_id] = run
        self._task_to_run[run.task_run_id] = run.run_id
        if run.idempotency_token:
            self._by_token[run.idempotency_token] = run.run_id
        self._next_run_id = max(self._next_run_id, run.run_id + 2, run.task_run_id + 1)
        self._next_job_id = max(self._next_job_id, run.job_id + 1)

    def run_dir(self, run: Run) -> Path:
        return self.runs_dir / str(run.run_id)

    def driver_log(self, run: Run) -> Path:
        return self.run_dir(run) / "driver.log"

    def _save(self, run: Run) -> None:
        directory = self.run_dir(run)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "run.json.tmp"
        tmp.write_text(json.dumps(asdict(run), indent=1))
        os.replace(tmp, directory / "run.json")

    # ---- submit --------------------------------------------------------------------------------

    def submit(self, body: dict[str, Any]) -> tuple[Run, bool]:
        """The run for this request and whether it was created (False: repeated idempotency_token)."""
        token = body.get("idempotency_token")
        if token is not None:
            token = str(token)
            if len(token) > MAX_IDEMPOTENCY_TOKEN:
                raise ApiError(
                    400,
                    "INVALID_PARAMETER_VALUE",
                    f"idempotency_token must be at most {MAX_IDEMPOTENCY_TOKEN} characters, got {len(token)}",
                )
        run_name = str(body.get("run_name") or "Untitled")
        task_key, task, cluster_spec = _single_task(body)
        spark_python_task = task["spark_python_task"]
        libraries = task.get("libraries") or []
        if not isinstance(libraries, list):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "libraries must be a list of library objects")
        try:
            timeout_seconds = int(task.get("timeout_seconds") or body.get("timeout_seconds") or 0)
        except (TypeError, ValueError) as e:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"timeout_seconds must be a number: {e}") from e
        with self.cond:
            if token and token in self._by_token:
                existing = self._runs[self._by_token[token]]
                log.info(
                    "Submit with idempotency_token %s: returning existing run %s", token, existing.run_id
                )
                return existing, False
            run = Run(
                run_id=self._next_run_id,
                task_run_id=self._next_run_id + 1,
                job_id=self._next_job_id,
                run_name=run_name,
                task_key=task_key,
                idempotency_token=token,
                spark_python_task=spark_python_task,
                cluster_spec=cluster_spec,
                libraries=libraries,
                start_time=now_ms(),
                timeout_seconds=timeout_seconds,
                held=self.faults.stuck_pending,
                forced_result=self.faults.next_run_result,
                forced_message=self.faults.next_run_message,
            )
            self.faults.next_run_result = None
            self.faults.next_run_message = None
            self._next_run_id += 2
            self._next_job_id += 1
            self._index(run)
            self._save(run)
            thread = threading.Thread(
                target=self._execute, args=(run,), name=f"run-{run.run_id}", daemon=True
            )
            self._threads[run.run_id] = thread
            thread.start()
        log.info(
            "Run %s (job %s, %r) submitted: %s",
            run.run_id,
            run.job_id,
            run.run_name,
            spark_python_task.get("python_file"),
        )
        return run, True

    # ---- lookups -------------------------------------------------------------------------------

    def lookup(self, raw_id: Any) -> tuple[Run, bool]:
        """The run for a run id or a task run id, and whether the id was the task's."""
        if raw_id is None or raw_id == "":
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Missing required field: run_id")
        try:
            run_id = int(raw_id)
        except (TypeError, ValueError) as e:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Invalid run_id {raw_id!r}: not a number") from e
        with self.cond:
            if run_id in self._runs:
                return self._runs[run_id], False
            if run_id in self._task_to_run:
                return self._runs[self._task_to_run[run_id]], True
        # What the service answers (databricks-sdk maps it to ResourceDoesNotExist).
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Run {run_id} does not exist.")

    def all_runs(self) -> list[Run]:
        with self.cond:
            return [self._runs[k] for k in sorted(self._runs)]

    # ---- views ---------------------------------------------------------------------------------

    def state_of(self, run: Run) -> dict[str, Any]:
        state: dict[str, Any] = {
            "life_cycle_state": run.life_cycle_state,
            "state_message": run.state_message,
            "user_cancelled_or_timedout": run.user_cancelled_or_timedout,
        }
        if run.result_state:
            state["result_state"] = run.result_state
        return state

    def status_of(self, run: Run) -> dict[str, Any]:
        """The newer ``status`` object beside the deprecated ``state``."""
        status: dict[str, Any] = {"state": run.life_cycle_state}
        if run.life_cycle_state == "INTERNAL_ERROR":
            status["state"] = "TERMINATED"
        if run.terminal:
            kind = {
                "SUCCESS": "SUCCESS",
                "CANCELED": "CLIENT_ERROR",
                "RUN_EXECUTION_ERROR": "CLIENT_ERROR",
                "LIBRARY_INSTALLATION_ERROR": "CLIENT_ERROR",
            }.get(run.termination_code or "", "INTERNAL_ERROR")
            status["termination_details"] = {
                "code": run.termination_code or "INTERNAL_ERROR",
                "type": kind,
                "message": run.state_message,
            }
        return status

    def page_url(self, run: Run, run_id: int | None = None) -> str:
        return f"{self.base_url}/?o={WORKSPACE_ORG_ID}#job/{run.job_id}/run/{run_id or run.run_id}"

    def _timings(self, run: Run) -> dict[str, int]:
        end = run.end_time or 0
        setup_end = run.execution_start or (run.end_time if run.terminal else None) or now_ms()
        execution = (end or now_ms()) - run.execution_start if run.execution_start else 0
        return {
            "start_time": run.start_time,
            "end_time": end,
            "setup_duration": max(setup_end - run.start_time, 0),
            "execution_duration": max(execution, 0),
            "cleanup_duration": 0,
            "run_duration": max((end or now_ms()) - run.start_time, 0),
        }

    def _cluster_instance(self, run: Run) -> dict[str, Any]:
        if run.execution_start is None:
            return {}
        cluster_id = run.cluster_spec.get("existing_cluster_id") or f"emulator-cluster-{run.run_id}"
        return {"cluster_instance": {"cluster_id": cluster_id, "spark_context_id": str(run.task_run_id)}}

    def task_view(self, run: Run) -> dict[str, Any]:
        task: dict[str, Any] = {
            "run_id": run.task_run_id,
            "task_key": run.task_key,
            "state": self.state_of(run),
            "status": self.status_of(run),
            "spark_python_task": run.spark_python_task,
            "run_page_url": self.page_url(run, run.task_run_id),
            "attempt_number": 0,
            "libraries": run.libraries,
            **run.cluster_spec,
            **self._cluster_instance(run),
            **self._timings(run),
        }
        return task

    def run_view(self, run: Run) -> dict[str, Any]:
        return {
            "job_id": run.job_id,
            "run_id": run.run_id,
            "number_in_job": run.run_id,
            "original_attempt_run_id": run.run_id,
            "creator_user_name": CREATOR,
            "run_name": run.run_name,
            "run_page_url": self.page_url(run),
            "run_type": "SUBMIT_RUN",
            "format": "MULTI_TASK",
            "trigger": "ONE_TIME",
            "attempt_number": 0,
            "state": self.state_of(run),
            "status": self.status_of(run),
            "cluster_spec": run.cluster_spec,
            **self._cluster_instance(run),
            "tasks": [self.task_view(run)],
            **self._timings(run),
        }

    def task_run_view(self, run: Run) -> dict[str, Any]:
        """``runs/get`` / ``get-output`` metadata for a task run id."""
        view = self.run_view(run)
        view.pop("tasks")
        view.update(self.task_view(run))
        view["parent_run_id"] = run.run_id
        return view

    def output(self, run: Run, by_task_id: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {"metadata": self.task_run_view(run) if by_task_id else self.run_view(run)}
        logs, truncated = self._log_tail(run)
        if logs is not None:
            answer["logs"] = logs
            answer["logs_truncated"] = truncated
        if run.life_cycle_state == "INTERNAL_ERROR":
            answer["error"] = run.state_message
        elif run.result_state == "FAILED":
            if run.forced_result:
                answer["error"] = run.state_message
            else:
                error, trace = python_error(logs or "")
                answer["error"] = (
                    error or f"Process exited with code {run.exit_code} (no traceback in the log)"
                )
                if trace:
                    answer["error_trace"] = trace
        return answer

    def _log_tail(self, run: Run) -> tuple[str | None, bool]:
        path = self.driver_log(run)
        if not path.is_file():
            return None, False
        size = path.stat().st_size
        with path.open("rb") as f:
            if size > LOG_TAIL_BYTES:
                f.seek(size - LOG_TAIL_BYTES)
            data = f.read()
        return data.decode("utf-8", errors="replace"), size > LOG_TAIL_BYTES

    def control_view(self, run: Run) -> dict[str, Any]:
        return {
            "run_id": run.run_id,
            "task_run_id": run.task_run_id,
            "job_id": run.job_id,
            "run_name": run.run_name,
            "idempotency_token": run.idempotency_token,
            "state": self.state_of(run),
            "pid": run.pid,
            "exit_code": run.exit_code,
            "python_file": run.spark_python_task.get("python_file"),
            "parameters": run.spark_python_task.get("parameters") or [],
            "command": run.command,
            "driver_log": str(self.driver_log(run)),
        }

    # ---- cancel / faults -----------------------------------------------------------------------

    def cancel(self, raw_id: Any) -> None:
        run, _ = self.lookup(raw_id)
        with self.cond:
            if run.terminal or run.cancel_requested:
                return
            run.cancel_requested = True
            run.user_cancelled_or_timedout = True
            proc = self._procs.get(run.run_id)
            if proc is not None:
                run.life_cycle_state = "TERMINATING"
                run.state_message = "Cancelling the run"
                self._save(run)
                threading.Thread(target=self._kill, args=(run, proc), daemon=True).start()
            self.cond.notify_all()
        log.info("Run %s: cancel requested", run.run_id)

    def release_held(self) -> None:
        with self.cond:
            for run in self._runs.values():
                run.held = False
            self.cond.notify_all()

    def _kill(self, run: Run, proc: subprocess.Popen) -> None:
        kill_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=CANCEL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            log.warning("Run %s: process %s ignored SIGTERM for %ss, killing", run.run_id, proc.pid, 10)
            kill_group(proc.pid, signal.SIGKILL)

    def shutdown(self, timeout: float = CANCEL_GRACE_SECONDS + 5) -> None:
        """Cancel every active run and wait for the processes to end (emulator stop)."""
        for run in self.all_runs():
            if not run.terminal:
                self.cancel(run.run_id)
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(deadline - time.monotonic(), 0.1))
        with self.cond:
            for proc in self._procs.values():
                kill_group(proc.pid, signal.SIGKILL)

    # ---- execution -----------------------------------------------------------------------------

    def _set(self, run: Run, **changes: Any) -> None:
        with self.cond:
            for key, value in changes.items():
                setattr(run, key, value)
            self._save(run)
            self.cond.notify_all()

    def _finish(self, run: Run, life_cycle: str, result: str | None, message: str, code: str) -> None:
        self._set(
            run,
            life_cycle_state=life_cycle,
            result_state=result,
            state_message=message,
            termination_code=code,
            end_time=now_ms(),
        )
        log.info("Run %s: %s %s %s", run.run_id, life_cycle, result or "", message)

    def _cancelled(self, run: Run) -> None:
        self._finish(run, "TERMINATED", "CANCELED", "Run cancelled.", "CANCELED")

    def _wait(self, run: Run, seconds: float) -> bool:
        """Sleep up to ``seconds`` (longer while held); True if the run was cancelled meanwhile."""
        deadline = time.monotonic() + seconds
        with self.cond:
            while not run.cancel_requested:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not run.held:
                    break
                self.cond.wait(timeout=max(remaining, 0.05) if not run.held else 1.0)
            return run.cancel_requested

    def _execute(self, run: Run) -> None:
        try:
            if self._wait(run, PENDING_SECONDS):
                self._cancelled(run)
                return
            if run.forced_result:
                self._run_forced(run)
                return
            try:
                command, env = self._prepare(run)
            except SetupError as e:
                self._finish(run, "INTERNAL_ERROR", "FAILED", str(e), e.code)
                return
            self._launch(run, command, env)
        except Exception as e:  # the run must end even if the emulator has a bug
            log.exception("Run %s: emulator error", run.run_id)
            self._finish(run, "INTERNAL_ERROR", "FAILED", f"Emulator error: {e}", "INTERNAL_ERROR")

    def _run_forced(self, run: Run) -> None:
        self._set(run, life_cycle_state="RUNNING", state_message="", execution_start=now_ms())
        if self._wait(run, FORCED_RUNNING_SECONDS):
            self._cancelled(run)
            return
        message = run.forced_message or f"Fault injected by the emulator: {run.forced_result}"
        if run.forced_result == "INTERNAL_ERROR":
            self._finish(run, "INTERNAL_ERROR", "FAILED", message, "INTERNAL_ERROR")
        else:
            self._finish(run, "TERMINATED", "FAILED", message, "RUN_EXECUTION_ERROR")

    def _prepare(self, run: Run) -> tuple[list[str], dict[str, str]]:
        task = run.spark_python_task
        source = str(task.get("source") or "WORKSPACE").upper()
        if source == "GIT":
            raise SetupError(
                "spark_python_task source GIT is not emulated: put the file on a volume or under "
                "/Workspace and submit its absolute path"
            )
        python_file = str(task["python_file"])
        try:
            local_file = self.tree.to_disk(python_file)
        except PathError as e:
            raise SetupError(
                f"Cannot read the python file {python_file}: the emulator maps only /Volumes/..., "
                f"dbfs:/Volumes/... and /Workspace/... paths ({e})"
            ) from e
        if not local_file.is_file():
            raise SetupError(
                f"Cannot read the python file {python_file}: it does not exist. Upload it (Files API) "
                "before submitting the run."
            )
        notes: list[str] = []
        py_files = self._libraries(run, notes)
        cluster = run.cluster_spec.get("new_cluster") or {}
        spark_conf = cluster.get("spark_conf") or {}
        command = [
            spark_submit_executable(),
            "--master",
            self.spark_master,
            "--name",
            run.run_name,
            "--conf",
            "spark.ui.enabled=false",
        ]
        for key, value in spark_conf.items():
            command += ["--conf", f"{key}={value}"]
        if py_files:
            command += ["--py-files", ",".join(py_files)]
        parameters = [self.tree.map_parameter(str(p)) for p in task.get("parameters") or []]
        command += [str(local_file), *parameters]
        env = self._job_env(cluster.get("spark_env_vars") or {})
        run_dir = self.run_dir(run)
        run_dir.mkdir(parents=True, exist_ok=True)
        with self.driver_log(run).open("a") as out:
            for note in notes:
                out.write(f"emulator: {note}\n")
            out.write(f"emulator: spark-submit {' '.join(command[1:])}\n")
        return command, env

    def _libraries(self, run: Run, notes: list[str]) -> list[str]:
        py_files: list[str] = []
        for library in run.libraries:
            if not isinstance(library, dict):
                raise SetupError(f"Library {library!r} is not an object like {{'whl': '/Volumes/...'}}")
            if "whl" in library:
                wheel = str(library["whl"])
                try:
                    local = self.tree.to_disk(wheel)
                except PathError as e:
                    raise SetupError(
                        f"Library installation failed for library due to user error: {wheel} is not a "
                        f"/Volumes or /Workspace path ({e})",
                        "LIBRARY_INSTALLATION_ERROR",
                    ) from e
                if not local.is_file():
                    raise SetupError(
                        f"Library installation failed for library due to user error: wheel {wheel} not "
                        "found. Upload it before submitting the run.",
                        "LIBRARY_INSTALLATION_ERROR",
                    )
                py_files.append(str(local))
                notes.append(f"library whl {wheel} -> --py-files {local}")
            elif "pypi" in library:
                notes.append(_check_pypi(library["pypi"]))
            else:
                notes.append(f"WARNING: library {library} is not emulated and was ignored")
        return py_files

    def _job_env(self, spark_env_vars: dict[str, Any]) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DATABRICKS_") and k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
        }
        env.update({str(k): str(v) for k, v in spark_env_vars.items()})
        env.update(
            {
                # A cluster can reach its own workspace, MLflow included.
                "DATABRICKS_HOST": self.base_url,
                "DATABRICKS_TOKEN": self.token,
                "MLFLOW_TRACKING_URI": "databricks",
                "PYSPARK_PYTHON": sys.executable,
                "PYSPARK_DRIVER_PYTHON": sys.executable,
                "SPARK_LOCAL_IP": "127.0.0.1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _launch(self, run: Run, command: list[str], env: dict[str, str]) -> None:
        with self.cond:
            if run.cancel_requested:
                self._cancelled(run)
                return
            proc = spawn_in_session(command, self.driver_log(run), cwd=self.run_dir(run), env=env)
            self._procs[run.run_id] = proc
            run.pid = proc.pid
            run.command = command
            run.life_cycle_state = "RUNNING"
            run.state_message = ""
            run.execution_start = now_ms()
            self._save(run)
            self.cond.notify_all()
        log.info("Run %s: spark-submit pid %s", run.run_id, proc.pid)
        timed_out = False
        try:
            code = proc.wait(timeout=run.timeout_seconds or None)
        except subprocess.TimeoutExpired:
            timed_out = True
            log.info("Run %s: timeout_seconds=%s reached, stopping it", run.run_id, run.timeout_seconds)
            self._set(run, life_cycle_state="TERMINATING", user_cancelled_or_timedout=True)
            self._kill(run, proc)
            code = proc.wait()
        # The driver's Python child shares the session: make sure nothing of the run outlives it.
        kill_group(proc.pid, signal.SIGKILL)
        with self.cond:
            self._procs.pop(run.run_id, None)
            run.exit_code = code
        if run.cancel_requested:
            self._cancelled(run)
        elif timed_out:
            self._finish(
                run,
                "TERMINATED",
                "TIMEDOUT",
                f"Run timed out after {run.timeout_seconds} seconds.",
                "RUN_EXECUTION_ERROR",
            )
        elif code == 0:
            self._finish(run, "TERMINATED", "SUCCESS", "", "SUCCESS")
        else:
            self._finish(
                run,
                "TERMINATED",
                "FAILED",
                "Workload failed, see run output for details",
                "RUN_EXECUTION_ERROR",
            )


def _single_task(body: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(task_key, task, cluster_spec) of a submit body, in the single-task or the ``tasks`` form."""
    tasks = body.get("tasks")
    if tasks is not None:
        if not isinstance(tasks, list) or not tasks:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "tasks must be a non-empty list")
        if len(tasks) > 1:
            keys = [t.get("task_key") for t in tasks if isinstance(t, dict)]
            raise ApiError(
                400,
                "INVALID_PARAMETER_VALUE",
                f"The emulator runs one task per submitted run; got {len(tasks)} tasks {keys}. "
                "Submit each task as its own run.",
            )
        task = tasks[0]
        if not isinstance(task, dict):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "tasks[0] must be an object")
        task_key = str(task.get("task_key") or "")
        if not task_key:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Missing required field: tasks[0].task_key")
    else:
        task = body
        task_key = str(body.get("task_key") or "spark_python_task")
    spark_python_task = task.get("spark_python_task")
    if not isinstance(spark_python_task, dict):
        other = [t for t in OTHER_TASK_TYPES if t in task]
        raise ApiError(
            400,
            "INVALID_PARAMETER_VALUE",
            f"The emulator runs spark_python_task only; this request has {other or 'no task'}",
        )
    if not spark_python_task.get("python_file"):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", "Missing required field: spark_python_task.python_file"
        )
    parameters = spark_python_task.get("parameters")
    if parameters is not None and not isinstance(parameters, list):
        raise ApiError(
            400, "INVALID_PARAMETER_VALUE", "spark_python_task.parameters must be a list of strings"
        )
    return task_key, task, _cluster_spec(body, task)


def _cluster_spec(body: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    if isinstance(task.get("new_cluster"), dict):
        return {"new_cluster": task["new_cluster"]}
    if task.get("existing_cluster_id"):
        return {"existing_cluster_id": str(task["existing_cluster_id"])}
    key = task.get("job_cluster_key")
    if key:
        for cluster in body.get("job_clusters") or []:
            if isinstance(cluster, dict) and cluster.get("job_cluster_key") == key:
                return {"new_cluster": cluster.get("new_cluster") or {}}
        raise ApiError(400, "INVALID_PARAMETER_VALUE", f"job_cluster_key {key!r} is not in job_clusters")
    if task.get("environment_key"):
        return {"environment_key": str(task["environment_key"])}
    raise ApiError(
        400,
        "INVALID_PARAMETER_VALUE",
        "One of job_cluster_key, new_cluster, existing_cluster_id or environment_key must be specified.",
    )


def _check_pypi(spec: Any) -> str:
    package = spec.get("package") if isinstance(spec, dict) else None
    if not package:
        return f"WARNING: pypi library {spec!r} has no 'package'"
    try:
        requirement = Requirement(str(package))
    except InvalidRequirement as e:
        return f"WARNING: pypi library {package!r} is not a valid requirement: {e}"
    try:
        installed = importlib.metadata.version(requirement.name)
    except importlib.metadata.PackageNotFoundError:
        return f"WARNING: pypi library {package} is not installed in the emulator's environment"
    if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
        return f"WARNING: pypi library {package} requested, {requirement.name} {installed} installed"
    return f"library pypi {package}: {requirement.name} {installed} installed"


def python_error(log_text: str) -> tuple[str | None, str | None]:
    """The last Python exception in a driver log: ("ValueError: ...", traceback text)."""
    lines = log_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last):")]
    if not starts:
        return None, None
    start = starts[-1]
    for i in range(start + 1, len(lines)):
        line = lines[i]
        if line and not line[0].isspace():
            return line.strip(), "\n".join(lines[start : i + 1])
    return None, "\n".join(lines[start:])
