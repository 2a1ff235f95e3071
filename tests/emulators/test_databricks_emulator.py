"""The Databricks workspace emulator, driven by the real clients: the Airflow provider's DatabricksHook,
databricks-sdk's Files API and the MLflow client in ``databricks`` mode.

One emulator (real processes: the server, an ``mlflow server``, spark-submit jobs) serves the whole
module; only loopback is used. Runs that need no Spark point at a missing file or use an injected fault,
so that only the tests marked ``spark`` start a JVM.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from airflow.providers.databricks.hooks.databricks import DatabricksHook
from databricks.sdk import WorkspaceClient

from emulators.databricks import Emulator, start, stop

CONN_ID = "databricks_emu"
FILES = "/Volumes/main/mlrelease/files"
MISSING_FILE = f"{FILES}/jobs/does_not_exist.py"
CLUSTER = {"spark_version": "15.4.x-scala2.12", "node_type_id": "emulated", "num_workers": "1"}

HELLO_JOB = """
import json, os, sys
import emuhello
from pyspark.sql import SparkSession

out_path, word = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.getOrCreate()
count = spark.range(5).count()
conf = spark.conf.get("spark.emulator.marker")
spark.stop()
print(f"hello from the emulator: {word} {count} {emuhello.GREETING}", flush=True)
with open(out_path, "w") as out:
    json.dump(
        {
            "argv": sys.argv[1:],
            "count": count,
            "conf": conf,
            "databricks_host": os.environ.get("DATABRICKS_HOST"),
            "has_token": bool(os.environ.get("DATABRICKS_TOKEN")),
            "runtime_version": os.environ.get("DATABRICKS_RUNTIME_VERSION"),
            "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        },
        out,
    )
"""

FAILING_JOB = """
import sys
print("about to fail with", sys.argv[1:], flush=True)
raise ValueError("no rows in " + sys.argv[1])
"""

SLEEP_JOB = """
import time
print("job started, sleeping", flush=True)
time.sleep(600)
"""

MLFLOW_CLIENT = """
import json, sys, tempfile
import mlflow
from mlflow import MlflowClient

experiment_name, model_name = sys.argv[1], sys.argv[2]
mlflow.set_tracking_uri("databricks")
mlflow.set_registry_uri("databricks")
experiment_id = mlflow.create_experiment(
    experiment_name, artifact_location="dbfs:/Volumes/main/mlrelease/mlflow/income-release"
)
with mlflow.start_run(experiment_id=experiment_id, run_name="release", tags={"mlrelease.kind": "release"}) as parent:
    with mlflow.start_run(experiment_id=experiment_id, run_name="candidate", nested=True) as child:
        mlflow.log_params({"reg_param": 0.1, "max_iter": 20})
        mlflow.log_metric("auc", 0.91)
        mlflow.set_tag("mlrelease.kind", "candidate")
        mlflow.log_text(json.dumps({"weights": [1, 2]}), "portable/portable_model.json")
        mlflow.log_dict({"k": "v"}, "meta/info.json")
found = mlflow.search_runs([experiment_id], filter_string="tags.mlrelease.kind = 'candidate'", output_format="list")
client = MlflowClient()
local = client.download_artifacts(child.info.run_id, "portable/portable_model.json", tempfile.mkdtemp())
client.create_registered_model(model_name)
version = client.create_model_version(
    model_name, source=child.info.artifact_uri + "/portable", run_id=child.info.run_id, tags={"candidate": "c1"}
)
registry_copy = mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version.version}", dst_path=tempfile.mkdtemp())
print(json.dumps({
    "experiment_id": experiment_id,
    "parent_run_id": parent.info.run_id,
    "child_run_id": child.info.run_id,
    "child_artifact_uri": child.info.artifact_uri,
    "found": [
        {"run_id": r.info.run_id, "parent": r.data.tags.get("mlflow.parentRunId"), "params": r.data.params,
         "metrics": r.data.metrics}
        for r in found
    ],
    "downloaded": open(local).read(),
    "model_version": version.version,
    "registry_copy": open(registry_copy + "/portable_model.json").read(),
}))
"""


def process_alive(pid: int | None) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][:1] != "Z"


def group_alive(pgid: int) -> bool:
    """True while any live process is in the process group (spark-submit's JVM and its Python driver)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    home = tmp_path_factory.mktemp("databricks-emulator-home")
    emu = start(home)
    try:
        yield emu
    finally:
        runs = []
        try:
            runs = emu.runs()
        finally:
            assert stop(home) is True
        leftovers = [
            pid for pid in [emu.pid, emu.mlflow_pid, *[r["pid"] for r in runs]] if process_alive(pid)
        ]
        assert not leftovers, f"processes left after stop: {leftovers}"
        assert not (home / "emulators" / "databricks" / "state.json").exists()


@pytest.fixture(scope="module")
def hook(emulator: Emulator) -> Iterator[DatabricksHook]:
    connection = {
        "conn_type": "databricks",
        "host": emulator.host,
        "port": emulator.port,
        "schema": "http",
        "password": emulator.token,
    }
    env_name = f"AIRFLOW_CONN_{CONN_ID.upper()}"
    os.environ[env_name] = json.dumps(connection)
    try:
        yield DatabricksHook(databricks_conn_id=CONN_ID)
    finally:
        os.environ.pop(env_name, None)


@pytest.fixture(scope="module")
def workspace(emulator: Emulator) -> WorkspaceClient:
    return WorkspaceClient(host=emulator.url, token=emulator.token)


def upload(workspace: WorkspaceClient, path: str, data: bytes) -> None:
    workspace.files.upload(path, io.BytesIO(data), overwrite=True)


def submit_body(python_file: str = MISSING_FILE, **extra: Any) -> dict[str, Any]:
    """The provider's single-task form, numbers as strings as DatabricksSubmitRunOperator sends them."""
    return {
        "run_name": "emulator-test",
        "spark_python_task": {"python_file": python_file, "parameters": []},
        "new_cluster": dict(CLUSTER),
        **extra,
    }


def wait_terminal(hook: DatabricksHook, run_id: int, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = hook.get_run(run_id)
        if run["state"]["life_cycle_state"] in ("TERMINATED", "INTERNAL_ERROR", "SKIPPED"):
            return run
        time.sleep(0.3)
    raise AssertionError(f"run {run_id} still {run['state']} after {timeout}s")


def runs_with_token(emulator: Emulator, token: str) -> list[dict[str, Any]]:
    return [r for r in emulator.runs() if r["idempotency_token"] == token]


def submits_with_token(emulator: Emulator, token: str) -> list[dict[str, Any]]:
    return [
        r
        for r in emulator.requests()
        if r["path"].endswith("/jobs/runs/submit") and (r["body"] or {}).get("idempotency_token") == token
    ]


def test_api_requires_the_workspace_token(emulator: Emulator) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = requests.get(f"{emulator.url}/api/2.2/jobs/runs/get", params={"run_id": 1}, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error_code"] == "UNAUTHENTICATED"
    assert requests.get(f"{emulator.url}/emulator/health").status_code == 200


def test_files_api_round_trip_with_databricks_sdk(emulator: Emulator, workspace: WorkspaceClient) -> None:
    path = f"{FILES}/data/sample.csv"
    upload(workspace, path, b"age,income\n39,1\n")
    assert emulator.volume_path(path).read_bytes() == b"age,income\n39,1\n"
    assert workspace.files.get_metadata(path).content_length == 16
    assert workspace.files.download(path).contents.read() == b"age,income\n39,1\n"
    workspace.files.get_directory_metadata(f"{FILES}/data")
    listed = list(workspace.files.list_directory_contents(f"{FILES}/data"))
    assert [(e.name, e.is_directory, e.file_size) for e in listed] == [("sample.csv", False, 16)]
    workspace.files.delete(path)
    assert not emulator.volume_path(path).exists()


def test_unknown_run_is_invalid_parameter_value(hook: DatabricksHook) -> None:
    with pytest.raises(Exception, match="Run 424242 does not exist") as raised:
        hook.get_run(424242)
    assert getattr(raised.value, "http_status_code", None) == 400
    assert "INVALID_PARAMETER_VALUE" in str(raised.value)


@pytest.mark.spark
def test_spark_python_task_runs_from_a_volume_to_success(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient
) -> None:
    upload(workspace, f"{FILES}/jobs/hello.py", HELLO_JOB.encode())
    wheel = io.BytesIO()
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("emuhello/__init__.py", 'GREETING = "hi from a wheel"\n')
    upload(workspace, f"{FILES}/wheels/emuhello-0.1-py3-none-any.whl", wheel.getvalue())
    workspace.files.create_directory(f"{FILES}/out")
    body = submit_body(
        f"{FILES}/jobs/hello.py",
        libraries=[
            {"whl": f"dbfs:{FILES}/wheels/emuhello-0.1-py3-none-any.whl"},
            {"pypi": {"package": "mlflow"}},
        ],
    )
    body["spark_python_task"]["parameters"] = [f"{FILES}/out/hello.json", "volumes"]
    body["new_cluster"]["spark_conf"] = {"spark.emulator.marker": "from-new-cluster"}

    run_id = hook.submit_run(body)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = hook.get_run_state(run_id)
        if not seen or seen[-1] != state.life_cycle_state:
            seen.append(state.life_cycle_state)
        if state.is_terminal:
            break
        time.sleep(0.2)
    assert seen == ["PENDING", "RUNNING", "TERMINATED"], seen
    assert state.result_state == "SUCCESS", hook.get_run_output(run_id).get("logs", "")[-3000:]

    run = hook.get_run(run_id)
    task = run["tasks"][0]
    assert task["run_id"] != run_id and task["state"]["result_state"] == "SUCCESS"
    assert run["run_page_url"] == f"{emulator.url}/?o=1234567890#job/{run['job_id']}/run/{run_id}"
    assert run["execution_duration"] > 0 and run["end_time"] >= run["start_time"]

    # The trigger sends the run id in the JSON body of a GET.
    by_body = requests.get(
        f"{emulator.url}/api/2.2/jobs/runs/get",
        json={"run_id": run_id},
        headers={"Authorization": f"Bearer {emulator.token}"},
    ).json()
    assert by_body["run_id"] == run_id and by_body["state"]["result_state"] == "SUCCESS"

    output = hook.get_run_output(task["run_id"])
    assert "hello from the emulator: volumes 5 hi from a wheel" in output["logs"]
    assert "library pypi mlflow: mlflow" in output["logs"]
    assert "error" not in output and output["metadata"]["run_id"] == task["run_id"]

    result = json.loads(emulator.volume_path(f"{FILES}/out/hello.json").read_text())
    assert result["argv"] == [str(emulator.volume_path(f"{FILES}/out/hello.json")), "volumes"]
    assert result["count"] == 5 and result["conf"] == "from-new-cluster"
    assert result["databricks_host"] == emulator.url and result["has_token"]
    assert result["runtime_version"] is None and result["tracking_uri"] == "databricks"


def test_idempotency_token_returns_the_existing_run(emulator: Emulator, hook: DatabricksHook) -> None:
    token = "idem-same-run"
    first = hook.submit_run(submit_body(idempotency_token=token))
    second = hook.submit_run(submit_body(idempotency_token=token))
    assert first == second
    assert [r["run_id"] for r in runs_with_token(emulator, token)] == [first]


def test_idempotency_token_longer_than_64_characters_is_refused(
    emulator: Emulator, hook: DatabricksHook
) -> None:
    token = "x" * 65
    with pytest.raises(Exception, match="INVALID_PARAMETER_VALUE") as raised:
        hook.submit_run(submit_body(idempotency_token=token))
    assert getattr(raised.value, "http_status_code", None) == 400
    assert runs_with_token(emulator, token) == []


def test_submit_503_is_retried_by_the_hook(emulator: Emulator, hook: DatabricksHook) -> None:
    token = "idem-after-503"
    emulator.set_faults(submit_503=1)
    run_id = hook.submit_run(submit_body(idempotency_token=token))
    assert [r["run_id"] for r in runs_with_token(emulator, token)] == [run_id]
    assert [r["status"] for r in submits_with_token(emulator, token)] == [503, 200]


def test_lost_submit_response_is_retried_without_a_second_run(
    emulator: Emulator, hook: DatabricksHook
) -> None:
    token = "idem-lost-response"
    emulator.set_faults(lose_submit_response=1)
    run_id = hook.submit_run(submit_body(idempotency_token=token))
    assert [r["run_id"] for r in runs_with_token(emulator, token)] == [run_id]
    # 0: the emulator created the run and closed the connection without answering.
    assert [r["status"] for r in submits_with_token(emulator, token)] == [0, 200]
    assert emulator.faults()["lose_submit_response"] == 0


@pytest.mark.parametrize(
    ("fault", "life_cycle", "message"),
    [
        ("FAILED", "TERMINATED", "ValueError: training data has no rows"),
        ("INTERNAL_ERROR", "INTERNAL_ERROR", "Cluster lost during setup"),
    ],
)
def test_next_run_result_fault(
    emulator: Emulator, hook: DatabricksHook, fault: str, life_cycle: str, message: str
) -> None:
    emulator.set_faults(next_run_result=fault, next_run_message=message)
    run_id = hook.submit_run(submit_body())
    time.sleep(1.3)
    assert hook.get_run_state(run_id).life_cycle_state == "RUNNING"
    run = wait_terminal(hook, run_id)
    assert run["state"]["life_cycle_state"] == life_cycle
    assert run["state"]["result_state"] == "FAILED"
    assert run["state"]["state_message"] == message
    assert hook.get_run_output(run["tasks"][0]["run_id"])["error"] == message
    assert emulator.faults()["next_run_result"] is None


@pytest.mark.parametrize(
    ("libraries", "expected"),
    [
        ([], "Cannot read the python file /Volumes/main/mlrelease/files/jobs/does_not_exist.py"),
        (
            [{"whl": f"{FILES}/wheels/missing-0.1-py3-none-any.whl"}],
            "Library installation failed for library",
        ),
    ],
)
def test_setup_problems_end_in_internal_error(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient, libraries: list, expected: str
) -> None:
    python_file = MISSING_FILE
    if libraries:
        python_file = f"{FILES}/jobs/sleep.py"
        upload(workspace, python_file, SLEEP_JOB.encode())
    run = wait_terminal(hook, hook.submit_run(submit_body(python_file, libraries=libraries)))
    assert run["state"]["life_cycle_state"] == "INTERNAL_ERROR"
    assert expected in run["state"]["state_message"]
    assert expected in hook.get_run_output(run["tasks"][0]["run_id"])["error"]


def test_stuck_pending_run_is_cancelled_and_release_lets_runs_go_on(
    emulator: Emulator, hook: DatabricksHook
) -> None:
    emulator.set_faults(stuck_pending=True)
    try:
        cancelled = hook.submit_run(submit_body())
        held = hook.submit_run(submit_body())
        time.sleep(2)
        assert hook.get_run_state(cancelled).life_cycle_state == "PENDING"
        hook.cancel_run(cancelled)
        run = wait_terminal(hook, cancelled, timeout=10)
        assert run["state"]["result_state"] == "CANCELED"
        assert run["state"]["state_message"] == "Run cancelled."
        assert run["state"]["user_cancelled_or_timedout"] is True
        assert [r["pid"] for r in emulator.runs() if r["run_id"] == cancelled] == [None]
        hook.cancel_run(cancelled)  # idempotent on a terminal run
        assert hook.get_run_state(held).life_cycle_state == "PENDING"
    finally:
        emulator.set_faults(stuck_pending=False)
    assert wait_terminal(hook, held, timeout=10)["state"]["life_cycle_state"] == "INTERNAL_ERROR"


@pytest.mark.spark
def test_cancel_kills_a_running_spark_job(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient
) -> None:
    upload(workspace, f"{FILES}/jobs/sleep.py", SLEEP_JOB.encode())
    run_id = hook.submit_run(submit_body(f"{FILES}/jobs/sleep.py"))
    deadline = time.monotonic() + 60
    while "job started, sleeping" not in hook.get_run_output(run_id).get("logs", ""):
        assert time.monotonic() < deadline, "the sleeping job's driver never started"
        time.sleep(0.3)
    pid = next(r["pid"] for r in emulator.runs() if r["run_id"] == run_id)
    assert process_alive(pid)
    hook.cancel_run(run_id)
    run = wait_terminal(hook, run_id, timeout=30)
    assert run["state"]["life_cycle_state"] == "TERMINATED"
    assert run["state"]["result_state"] == "CANCELED"
    assert not process_alive(pid)
    assert not group_alive(pid), "the Python driver outlived spark-submit"


@pytest.mark.spark
def test_a_failing_script_reports_its_exception(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient
) -> None:
    upload(workspace, f"{FILES}/jobs/failing.py", FAILING_JOB.encode())
    body = submit_body(f"{FILES}/jobs/failing.py")
    body["spark_python_task"]["parameters"] = [f"dbfs:{FILES}/data/train.csv"]
    run = wait_terminal(hook, hook.submit_run(body))
    assert (run["state"]["life_cycle_state"], run["state"]["result_state"]) == ("TERMINATED", "FAILED")
    output = hook.get_run_output(run["tasks"][0]["run_id"])
    on_disk = emulator.volume_path(f"{FILES}/data/train.csv")
    assert output["error"] == f"ValueError: no rows in {on_disk}"
    assert output["error_trace"].startswith("Traceback (most recent call last):")
    assert "about to fail with" in output["logs"]


@pytest.mark.spark
def test_timeout_seconds_ends_the_run_timed_out(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient
) -> None:
    upload(workspace, f"{FILES}/jobs/sleep.py", SLEEP_JOB.encode())
    run_id = hook.submit_run(submit_body(f"{FILES}/jobs/sleep.py", timeout_seconds="3"))
    run = wait_terminal(hook, run_id, timeout=30)
    assert run["state"]["result_state"] == "TIMEDOUT"
    assert run["state"]["user_cancelled_or_timedout"] is True
    pid = next(r["pid"] for r in emulator.runs() if r["run_id"] == run_id)
    assert not group_alive(pid)


def test_start_is_idempotent_from_python_and_the_command_line(emulator: Emulator) -> None:
    again = start(emulator.home)
    assert (again.url, again.pid) == (emulator.url, emulator.pid)
    env = {k: v for k, v in os.environ.items() if k != "DATABRICKS_EMULATOR_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "emulators.databricks", "start", "--home", str(emulator.home)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == emulator.url
    token_file = emulator.state_dir / "token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert emulator.token not in (emulator.state_dir / "state.json").read_text()


def test_mlflow_client_in_databricks_mode_round_trip(emulator: Emulator, tmp_path: Path) -> None:
    script = tmp_path / "mlflow_client.py"
    script.write_text(MLFLOW_CLIENT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DATABRICKS_"))}
    env.update({"DATABRICKS_HOST": emulator.url, "DATABRICKS_TOKEN": emulator.token})
    done = subprocess.run(
        [sys.executable, str(script), "/Shared/mlrelease/income-release", "income-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert [r["run_id"] for r in result["found"]] == [result["child_run_id"]]
    child = result["found"][0]
    assert child["parent"] == result["parent_run_id"]
    assert child["params"] == {"reg_param": "0.1", "max_iter": "20"} and child["metrics"] == {"auc": 0.91}
    assert json.loads(result["downloaded"]) == {"weights": [1, 2]}
    assert json.loads(result["registry_copy"]) == {"weights": [1, 2]}
    artifact_uri = result["child_artifact_uri"]
    assert artifact_uri.startswith("dbfs:/Volumes/main/mlrelease/mlflow/income-release/")
    on_disk = emulator.volume_path(artifact_uri + "/portable/portable_model.json")
    assert json.loads(on_disk.read_text()) == {"weights": [1, 2]}

    paths = {r["path"] for r in emulator.requests()}
    assert "/api/2.0/mlflow/runs/search" in paths
    assert any(p.startswith("/api/2.0/fs/files/Volumes/main/mlrelease/mlflow/income-release/") for p in paths)
    assert "/api/2.0/mlflow/model-versions/list-artifacts" in paths
    not_found = [(r["method"], r["path"]) for r in emulator.requests() if r["status"] == 404]
    allowed = {"/api/2.0/mlflow/experiments/get-by-name"}  # MLflow probing for a name that is not there yet
    assert [p for p in not_found if p[1] not in allowed and not p[1].startswith("/api/2.0/fs/")] == []


def test_request_log_has_bodies_and_never_the_token(
    emulator: Emulator, hook: DatabricksHook, workspace: WorkspaceClient
) -> None:
    upload(workspace, f"{FILES}/data/logged.json", json.dumps({"token": "not-masked-in-files"}).encode())
    body = submit_body(idempotency_token="idem-logged")
    body["new_cluster"]["spark_env_vars"] = {"DB_PASSWORD": "hunter2", "PLAIN": "visible"}
    run_id = hook.submit_run(body)
    hook.get_run(run_id)

    log_text = (emulator.state_dir / "requests.jsonl").read_text()
    assert emulator.token not in log_text
    assert "hunter2" not in log_text
    entries = emulator.requests()
    assert all({"method", "path", "query", "body", "status", "time"} <= set(e) for e in entries)
    submit = next(e for e in entries if (e["body"] or {}).get("idempotency_token") == "idem-logged")
    assert submit["method"] == "POST" and submit["path"] == "/api/2.2/jobs/runs/submit"
    assert submit["body"]["new_cluster"]["spark_env_vars"] == {"DB_PASSWORD": "***", "PLAIN": "visible"}
    assert submit["body"]["new_cluster"]["num_workers"] == "1"
    get = next(
        e
        for e in entries
        if e["path"] == "/api/2.2/jobs/runs/get" and e["query"].get("run_id") == str(run_id)
    )
    assert get["method"] == "GET" and get["status"] == 200
    uploads = [e for e in entries if e["method"] == "PUT" and e["path"].startswith("/api/2.0/fs/files/")]
    assert uploads and all(e["body"] is None and e["body_bytes"] > 0 for e in uploads)
