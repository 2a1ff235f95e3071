"""The DAG under the real Airflow services: api-server, scheduler, dag-processor and triggerer on loopback.

What `airflow dags test` cannot show: a run triggered through the REST API by a logged-in user records
that user as the trigger, the nightly schedule creates a run recorded as ``scheduler``, task logs served
by the api-server carry the ids on-call needs, and the "MLflow training run" extra link resolves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "income_release"
SMALL = {"candidates": ["lr_reg_0.01", "dt_depth_3"]}


@pytest.fixture(scope="module")
def services(tmp_path_factory, session_home):
    home = tmp_path_factory.mktemp("services-home")
    if (session_home / "data" / "adult").is_dir():  # reuse the verified download of this session
        shutil.copytree(session_home / "data" / "adult", home / "data" / "adult")
    port = free_port()
    env = {
        **os.environ,
        "MLRELEASE_HOME": str(home),
        "AIRFLOW_PORT": str(port),
        # This home's endpoints get their own ports: the other end-to-end tests run theirs too.
        "MLRELEASE_TEST_ENDPOINT_PORT": str(free_port()),
        "MLRELEASE_PROD_ENDPOINT_PORT": str(free_port()),
    }
    script = str(ROOT / "scripts" / "airflow-services.sh")
    started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        password = json.loads((home / "airflow" / "passwords.json").read_text())["operator"]
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/auth/token", json={"username": "operator", "password": password}).json()
        client = httpx.Client(
            base_url=f"{base}/api/v2", headers={"Authorization": f"Bearer {token['access_token']}"}
        )
        yield client, home, env
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        mlrelease = str(Path(sys.executable).parent / "mlrelease")
        subprocess.run([mlrelease, "endpoints", "stop"], env=env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0 or os.environ.get("MLRELEASE_KEEP_TEST_HOME"):
            print((home / "airflow" / "services" / "scheduler.log").read_text()[-5000:])


def wait_for(predicate, timeout: float, what: str, interval: float = 5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def task_log_text(client: httpx.Client, run_id: str, task_id: str) -> str:
    response = client.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1")
    response.raise_for_status()
    return "\n".join(
        str(e.get("event", "")) if isinstance(e, dict) else str(e) for e in response.json()["content"]
    )


def test_triggered_and_scheduled_runs_under_real_services(services):
    client, home, env = services
    # The dag-processor must have parsed the DAG before it can be triggered.
    wait_for(lambda: client.get(f"/dags/{DAG_ID}").status_code == 200, 180, "the DAG to be parsed")

    # An operator triggers a run with parameters through the REST API (what the UI's trigger form does).
    response = client.post(f"/dags/{DAG_ID}/dagRuns", json={"logical_date": None, "conf": SMALL})
    assert response.status_code == 200, response.text
    manual_run = response.json()["dag_run_id"]
    assert response.json()["triggering_user_name"] == "operator"

    # Unpausing the nightly DAG (catchup off) makes the scheduler create the latest scheduled run too.
    assert client.patch(f"/dags/{DAG_ID}", json={"is_paused": False}).status_code == 200

    def finished_runs():
        runs = client.get(f"/dags/{DAG_ID}/dagRuns").json()["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        return runs if len(runs) >= 2 and len(done) == len(runs) else None

    runs = wait_for(finished_runs, 1200, "the manual and the scheduled run to finish", interval=10)
    assert {r["run_type"]: r["state"] for r in runs} == {"manual": "success", "scheduled": "success"}
    scheduled_run = next(r["dag_run_id"] for r in runs if r["run_type"] == "scheduled")

    from mlflow import MlflowClient

    mlflow_client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = mlflow_client.get_experiment_by_name("income-release")
    parents = {
        r.data.tags["mlrelease.airflow.run_id"]: r.data.tags
        for r in mlflow_client.search_runs([experiment.experiment_id], "tags.`mlrelease.role` = 'parent'")
    }
    assert parents[manual_run]["mlrelease.triggered_by"] == "operator"
    assert parents[scheduled_run]["mlrelease.triggered_by"] == "scheduler"
    assert json.loads(parents[manual_run]["mlrelease.candidates"]) == SMALL["candidates"]

    # Task logs, as the UI serves them, name the Spark application, the driver log and the MLflow run.
    training_log = task_log_text(client, manual_run, "train_candidates")
    application_id = parents[manual_run]["spark.application_id"]
    assert f"Spark application {application_id} finished" in training_log
    assert str(home / "compute" / "runs") in training_log
    parent_id = next(
        r.info.run_id
        for r in mlflow_client.search_runs([experiment.experiment_id], "tags.`mlrelease.role` = 'parent'")
        if r.data.tags["mlrelease.airflow.run_id"] == manual_run
    )
    assert f"runs/{parent_id}" in training_log
    gate_log = task_log_text(client, manual_run, "select_and_gate")
    assert "Gate check quality_bar" in gate_log and ("GATE PASSED" in gate_log or "GATE REJECTED" in gate_log)

    links = client.get(f"/dags/{DAG_ID}/dagRuns/{manual_run}/taskInstances/train_candidates/links").json()
    assert links["extra_links"]["MLflow training run"].endswith(f"/runs/{parent_id}")

    # The release half ran under the real scheduler too: the endpoints started by task processes
    # outlive them, and prod serves the release whose promote_prod log announced it.
    mlrelease = str(Path(sys.executable).parent / "mlrelease")
    status = json.loads(
        subprocess.run(
            [mlrelease, "status", "--json"], env=env, capture_output=True, text=True, check=True
        ).stdout
    )["endpoints"]
    assert status["prod"]["ready"] and status["prod"]["version"], status
    promoted = [
        run
        for run in (manual_run, scheduled_run)
        if client.get(f"/dags/{DAG_ID}/dagRuns/{run}/taskInstances/promote_prod").json()["state"] == "success"
    ]
    assert promoted, "neither run promoted a model"
    promote_logs = [task_log_text(client, run, "promote_prod") for run in promoted]
    assert all("RELEASED income-classifier version" in text for text in promote_logs)
    assert any(status["prod"]["release_id"] in text for text in promote_logs)
    check_log = task_log_text(client, promoted[0], "check_test")
    assert (
        "pass holdout_parity" in check_log
        and "All 10 test endpoint checks passed" in check_log
        and "pass served_model" in check_log
    )
