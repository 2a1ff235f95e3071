"""Training on Databricks, end to end against the loopback workspace emulator.

Real Airflow task execution (``airflow dags test`` / ``airflow tasks test``), the provider's
``DatabricksSubmitRunOperator`` (our subclass) and ``DatabricksHook`` talking HTTP to the emulator, the
real MLflow client in ``databricks`` mode and the Databricks SDK's Files API; the emulator really runs
``jobs/train_income.py`` with local ``spark-submit``. Registry, endpoints and audit stay local.

1. a whole DAG run trains on "Databricks" (the first submit's response is lost and retried by the hook:
   still one run), registers with the Databricks run id and URL in the lineage, releases to prod;
2. a run that ends INTERNAL_ERROR, then one that ends FAILED, each fail their try with the run's error
   in the log; the retries submit fresh runs (new idempotency tokens) and the third succeeds;
3. the worker is SIGKILLed while its run is active: the retried task reattaches, one run in total;
4. under the real scheduler and api-server, marking the running task failed cancels the run;
and throughout, the workspace token is in no task log, no request log and no settings file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlrelease.localenv import airflow_env
from tests.conftest import ROOT, SESSION_HOME, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

BIN = Path(sys.executable).parent
DAG_ID = "income_release"
SMALL = {"candidates": ["lr_reg_0.01", "dt_depth_3"]}
HOME = SESSION_HOME / "cloud"


@pytest.fixture(scope="module")
def cloud():
    sys.path.insert(0, str(ROOT))
    from emulators.databricks import start, stop

    token = "dapi" + secrets.token_hex(16)
    emulator = start(HOME, token=token)
    env = {
        **os.environ,
        **airflow_env(HOME, ROOT, "databricks"),
        "MLRELEASE_COMPUTE": "databricks",
        "MLRELEASE_TRACKING": "databricks",
        "MLRELEASE_DATABRICKS_POLLING_SECONDS": "1",
        "MLRELEASE_TEST_ENDPOINT_PORT": str(free_port()),
        "MLRELEASE_PROD_ENDPOINT_PORT": str(free_port()),
        "AIRFLOW_CONN_DATABRICKS_DEFAULT": json.dumps(
            {
                "conn_type": "databricks",
                "host": emulator.host,
                "port": emulator.port,
                "schema": "http",
                "password": token,
            }
        ),
    }
    for key in ("DATABRICKS_HOST", "DATABRICKS_TOKEN"):
        env.pop(key, None)  # the tasks must get them from the connection, nothing else
    result = subprocess.run([str(BIN / "airflow"), "db", "migrate"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield {"emulator": emulator, "env": env, "token": token}
    subprocess.run([str(BIN / "mlrelease"), "endpoints", "stop"], env=env, capture_output=True)
    stop(HOME)


def airflow(cloud, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "airflow"), *args], capture_output=True, text=True, env=cloud["env"], timeout=timeout
    )
    keep(result.stdout + result.stderr)
    if check and result.returncode != 0:
        pytest.fail(f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-8000:]}")
    return result


def dag_test(cloud, conf: dict, check: bool = True) -> subprocess.CompletedProcess:
    return airflow(cloud, "dags", "test", DAG_ID, "-c", json.dumps(conf), check=check)


def run_id_of(output: str) -> str:
    return re.findall(r"run_id=(manual__[^,\s]+)", output)[-1]


def submits(cloud) -> list[dict]:
    return [
        r
        for r in cloud["emulator"].requests()
        if r["method"] == "POST" and r["path"].endswith("/jobs/runs/submit")
    ]


def runs_for(cloud, dag_run_id: str) -> list[dict]:
    return [r for r in cloud["emulator"].runs() if dag_run_id in (r.get("run_name") or "")]


OUTPUTS: list[str] = []  # everything the Airflow commands printed (task logs included), for the token check


def keep(text: str) -> str:
    OUTPUTS.append(text)
    return text


def mlrelease(cloud, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "mlrelease"), *args], capture_output=True, text=True, env=cloud["env"], timeout=120
    )


def test_a_dag_run_trains_on_databricks_and_releases(cloud):
    emulator = cloud["emulator"]
    emulator.set_faults(lose_submit_response=1)
    out = dag_test(cloud, SMALL).stdout
    dag_run_id = run_id_of(out)

    # One Databricks run, although the first submit's response was lost and the hook retried it.
    sent = submits(cloud)
    assert len(sent) == 2 and sent[0]["body"]["idempotency_token"] == sent[1]["body"]["idempotency_token"]
    runs = runs_for(cloud, dag_run_id)
    assert len(runs) == 1 and runs[0]["state"]["result_state"] == "SUCCESS"
    body = sent[0]["body"]
    assert len(body["idempotency_token"]) <= 64
    task = body["spark_python_task"]
    assert re.fullmatch(
        r"/Volumes/main/mlrelease/files/jobs/[0-9a-f]{16}/train_income\.py", task["python_file"]
    )
    params = task["parameters"]
    assert params[params.index("--tracking-uri") + 1] == "databricks"
    assert params[params.index("--train-path") + 1].startswith("/Volumes/main/mlrelease/files/data/")
    assert json.loads(params[params.index("--candidates-json") + 1])[0]["name"] == "lr_reg_0.01"
    assert body["new_cluster"]["spark_version"] == "17.3.x-scala2.13"
    assert any(lib.get("whl", "").endswith(".whl") for lib in body["libraries"])

    log = out
    databricks_run = runs[0]["run_id"]
    assert f"Run submitted with run_id: {databricks_run}" in log
    assert "View run status, Spark UI, and logs at " + emulator.url in log
    assert "MLflow parent run: " + emulator.url + "/ml/experiments/" in log
    assert "Candidates:" in log
    # The task page's extra links (Airflow materialises them as XComs when the task ends).
    with sqlite3.connect(HOME / "airflow" / "airflow.db") as db:
        links = dict(
            db.execute(
                "SELECT key, value FROM xcom WHERE run_id = ? AND task_id = 'train_candidates' "
                "AND key LIKE '_link_%'",
                (dag_run_id,),
            ).fetchall()
        )
    values = {key: json.loads(value) for key, value in links.items()}
    assert any(str(v).endswith(f"/run/{databricks_run}") for v in values.values()), values
    assert any("/ml/experiments/" in str(v) for v in values.values()), values

    # The version's lineage carries the Databricks run; the release reached the local prod endpoint.
    status = json.loads(mlrelease(cloud, "status", "--json").stdout)
    assert status["endpoints"]["prod"]["version"] == "1"
    from mlflow import MlflowClient

    registry = f"sqlite:///{HOME / 'mlflow.db'}"  # the registry stays local (see docs/databricks.md)
    version = MlflowClient(registry, registry).get_model_version("income-classifier", "1")
    assert version.source.startswith("dbfs:/Volumes/main/mlrelease/files/mlflow/")
    assert version.tags["mlrelease.compute.backend"] == "databricks"
    assert version.tags["mlrelease.compute.run_id"] == str(databricks_run)
    assert version.tags["mlrelease.compute.run_url"].startswith(emulator.url)
    assert f"run/{databricks_run}" in version.tags["mlrelease.compute.run_url"]


def test_failed_runs_fail_their_try_with_the_error_and_retries_submit_fresh_runs(cloud):
    emulator = cloud["emulator"]
    before = {r["run_id"] for r in emulator.runs()}
    emulator.set_faults(
        next_run_result="INTERNAL_ERROR", next_run_message="Cluster failed to start: emulated"
    )
    process = subprocess.Popen(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps({**SMALL, "quality_bar": 0.99})],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cloud["env"],
    )
    # After the first (INTERNAL_ERROR) run is submitted, make the next one end FAILED.
    deadline = time.monotonic() + 600
    while len([r for r in emulator.runs() if r["run_id"] not in before]) < 1:
        assert time.monotonic() < deadline and process.poll() is None, "no run was submitted"
        time.sleep(0.5)
    emulator.set_faults(
        next_run_result="FAILED", next_run_message="ValueError: candidate exploded (emulated)"
    )
    out = keep(process.communicate(timeout=900)[0])
    dag_run_id = run_id_of(out)
    runs = runs_for(cloud, dag_run_id)
    states = [(r["state"]["life_cycle_state"], r["state"].get("result_state")) for r in runs]
    assert [s[0] for s in states] == ["INTERNAL_ERROR", "TERMINATED", "TERMINATED"], states
    assert [s[1] for s in states[1:]] == ["FAILED", "SUCCESS"], states
    assert len({r["idempotency_token"] for r in runs}) == 3  # each try its own token
    log = out
    assert "Cluster failed to start: emulated" in log
    assert "ValueError: candidate exploded (emulated)" in log  # from runs/get-output
    assert "Prior job in terminal state, resubmitting fresh" in log


def _start_background_dag_run(cloud) -> tuple[subprocess.Popen, str]:
    emulator = cloud["emulator"]
    before = {r["run_id"] for r in emulator.runs()}
    emulator.set_faults(stuck_pending=True)
    process = subprocess.Popen(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps({**SMALL, "quality_bar": 0.99})],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cloud["env"],
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (new := [r for r in emulator.runs() if r["run_id"] not in before]):
        assert time.monotonic() < deadline and process.poll() is None, "no run was submitted"
        time.sleep(0.5)
    return process, new[0]["run_name"]


def test_a_killed_worker_is_reattached_to_its_run(cloud):
    emulator = cloud["emulator"]
    process, run_name = _start_background_dag_run(cloud)
    time.sleep(2)  # past the submit: the run id is in the task state store, polling has begun
    os.killpg(process.pid, signal.SIGKILL)  # the worker dies, with no chance to cancel anything
    process.wait()
    dag_run_id = run_name.split("-", 1)[1].rsplit("-try", 1)[0]
    assert [r["state"]["life_cycle_state"] for r in runs_for(cloud, dag_run_id)] == ["PENDING"]
    emulator.set_faults(stuck_pending=False)
    # The retry: the same task of the same DAG run, as the scheduler would run it next.
    retry = airflow(cloud, "tasks", "test", DAG_ID, "train_candidates", dag_run_id)
    runs = runs_for(cloud, dag_run_id)
    assert len(runs) == 1 and runs[0]["state"]["result_state"] == "SUCCESS"
    assert "Reconnecting to existing job" in retry.stdout + retry.stderr


def test_marking_the_task_failed_cancels_its_run(cloud):
    """Under the real scheduler and api-server: an operator marks the running task failed (REST, as
    the UI does); Airflow's supervisor stops the task, whose on_kill cancels the Databricks run."""
    import httpx

    emulator = cloud["emulator"]
    port = free_port()
    env = {**cloud["env"], "AIRFLOW_PORT": str(port)}
    script = str(ROOT / "scripts" / "airflow-services.sh")
    emulator.set_faults(stuck_pending=True)
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        password = json.loads((HOME / "airflow" / "passwords.json").read_text())["operator"]
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/auth/token", json={"username": "operator", "password": password}).json()
        client = httpx.Client(
            base_url=f"{base}/api/v2",
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=30,
        )
        wait_until(lambda: client.get(f"/dags/{DAG_ID}").status_code == 200, 180, "the DAG to be parsed")
        before = {r["run_id"] for r in emulator.runs()}
        # Unpausing makes the scheduler start the latest nightly run (catchup is off): its training is
        # the task we mark failed (a triggered run would queue behind it: max_active_runs=1).
        assert client.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200
        run = wait_until(
            lambda: [r for r in emulator.runs() if r["run_id"] not in before], 300, "a Databricks run"
        )[0]
        dag_run_id = run["run_name"].split("-", 1)[1].rsplit("-try", 1)[0]
        time.sleep(3)  # the task is polling the (PENDING) run now

        marked = client.patch(
            f"/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances/train_candidates",
            json={"new_state": "failed"},
        )
        assert marked.status_code == 200, marked.text

        def cancelled():
            state = next(r for r in emulator.runs() if r["run_id"] == run["run_id"])["state"]
            return state.get("result_state") == "CANCELED" and state

        wait_until(cancelled, 120, "the Databricks run to be cancelled")
        log = keep(task_log(client, dag_run_id, "train_candidates"))
        assert f"with run_id: {run['run_id']} was requested to be cancelled" in log
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        emulator.set_faults(stuck_pending=False)


def wait_until(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def task_log(client, dag_run_id: str, task_id: str) -> str:
    response = client.get(f"/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances/{task_id}/logs/1")
    response.raise_for_status()
    return "\n".join(
        str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in response.json()["content"]
    )


def test_the_token_is_in_no_log_and_no_settings(cloud):
    token = cloud["token"]
    places = [*(HOME / "airflow" / "logs").rglob("*"), *(HOME / "logs").rglob("*")]
    places += [HOME / "emulators" / "databricks" / "requests.jsonl", *HOME.glob("*.env")]
    places += [*(ROOT / "src").rglob("*.py"), *(ROOT / "dags").rglob("*.py")]
    leaked = [str(p) for p in places if p.is_file() and token in p.read_text(errors="replace")]
    leaked += [f"airflow output #{i}" for i, text in enumerate(OUTPUTS) if token in text]
    assert OUTPUTS and not leaked, f"the workspace token leaked into {leaked}"
