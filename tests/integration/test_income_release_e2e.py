"""End to end: the real DAG with real Airflow task execution, real local Spark, real MLflow (SQLite).

Runs ``airflow dags test`` as a user would, several times against one MLRELEASE_HOME:
1. a first run registers exactly one version, deploys it to the test endpoint, checks it, promotes it
   to the prod endpoint; a prediction on prod is then traced by ``mlrelease audit prediction`` down to
   the dataset sha256, the code and the person;
2. cleared/retried training, registration, deployment and promotion converge (no second version, no
   second Spark job, no second release record);
3. a second run makes version 2, and its champion comparison used version 1 re-scored on the same data;
   replaying the first run's promotion afterwards is refused (its gate never saw version 2);
4. a third run whose challenger is forced to fail its test endpoint checks (a latency budget nobody can
   meet) fails, and prod keeps serving version 2;
5. a rollback drill: that version promoted with prod checks that fail is rolled back, prod answering
   throughout, the alias unmoved, the release recorded as rolled back;
6. a run whose challenger misses the quality bar ends with the release tasks skipped, prod unchanged;
7. a run on data that fails validation fails the DAG, trains nothing, leaves prod unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from mlrelease.domain.endpoint_checks import PERSON_1, PERSON_3

pytestmark = [pytest.mark.e2e, pytest.mark.spark]

BIN = Path(sys.executable).parent
DAG_ID = "income_release"
MODEL = "income-classifier"
SMALL = {"candidates": ["lr_reg_0.01", "dt_depth_3"]}


def airflow(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN / "airflow"), *args], capture_output=True, text=True, env=os.environ.copy(), timeout=1200
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-4000:]}"
        )
    return result


def dag_test(conf: dict, check: bool = True) -> subprocess.CompletedProcess:
    return airflow("dags", "test", DAG_ID, "-c", json.dumps(conf), check=check)


def json_output(*args: str):
    """Airflow's CLI prints log lines (e.g. a graphviz warning) before the JSON: take the JSON line."""
    lines = [line for line in airflow(*args, "-o", "json").stdout.splitlines() if line.startswith(("[", "{"))]
    return json.loads(lines[-1])


def latest_run_id() -> str:
    runs = json_output("dags", "list-runs", DAG_ID)
    return max(runs, key=lambda r: r["run_after"])["run_id"]


def task_states(run_id: str) -> dict[str, str]:
    rows = json_output("tasks", "states-for-dag-run", DAG_ID, run_id)
    return {row["task_id"]: row["state"] for row in rows}


def mlrelease(*args: str) -> str:
    result = subprocess.run(
        [str(BIN / "mlrelease"), *args], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def mlrelease_json(*args: str):
    return json.loads(mlrelease(*args, "--json"))


def endpoint_status() -> dict:
    return mlrelease_json("status")["endpoints"]


def score(url: str, records: list[dict]) -> dict:
    response = httpx.post(f"{url}/score", json={"data": records}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def release_records(release_id: str) -> list:
    from mlrelease.backends.local.audit import SqliteAuditLog
    from mlrelease.settings import load_settings

    return SqliteAuditLog(load_settings().audit_db_path).events(kind="release", subject=release_id)


def rollback_drill(status: dict) -> None:
    """Promote the version on test with prod checks forced to fail; prod must answer throughout."""
    from mlrelease import releasing
    from mlrelease.backends import get_backends
    from mlrelease.domain.endpoint_checks import EndpointCheck
    from mlrelease.domain.lineage import AirflowRunInfo
    from mlrelease.settings import load_settings

    settings = load_settings()
    backends = get_backends(settings)
    release = releasing.Release(MODEL, "3", AirflowRunInfo(DAG_ID, "rollback-drill", 1, "manual", "oncall"))
    releasing.deploy(backends, release, releasing.TEST)
    assert releasing.check_test(backends, settings, release).passed

    def failing_on_prod(endpoint, expect, rollout):
        report = backends.endpoints.check(endpoint, expect, rollout)
        if endpoint == releasing.PROD:  # as if prod's traffic or hardware made it miss a check
            report.checks.append(EndpointCheck("drill", False, "prod-only check passes", "forced failure"))
        return report

    answers: list[int] = []
    stop = threading.Event()

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                answers.append(
                    client.post(f"{status['prod']['url']}/score", json={"data": [PERSON_1]}).status_code
                )

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        with pytest.raises(
            releasing.ReleaseError, match=r"rolled back to income-classifier version 2 \(release"
        ):
            releasing.promote(backends, settings, release, checker=failing_on_prod)
    finally:
        stop.set()
        thread.join()
    assert answers and set(answers) == {200}, f"prod answered {sorted(set(answers))} during the release"
    assert endpoint_status()["prod"]["version"] == "2"
    assert str(backends.registry.get_by_alias(MODEL, "prod").version) == "2"
    story = mlrelease_json("audit", "release", release.release_id)
    assert story["status"] == "rolled back" and "drill" in story["reason"]
    assert story["previous_prod_version"] == "2" and story["rollbacks"][0]["restored"]["version"] == "2"
    # The same attempt replayed appends no second record.
    with pytest.raises(releasing.ReleaseError):
        releasing.promote(backends, settings, release, checker=failing_on_prod)
    assert len(release_records(release.release_id)) == 1


@pytest.fixture(scope="module")
def mlflow_client(airflow_db):
    from mlflow import MlflowClient

    from mlrelease.settings import load_settings

    uri = load_settings().tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(client) -> list:
    return sorted(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))


def parent_run(client, run_id: str):
    runs = client.search_runs(
        [client.get_experiment_by_name("income-release").experiment_id],
        f"tags.`mlrelease.training_key` = '{DAG_ID}/{run_id}'",
    )
    assert len(runs) == 1, f"expected one parent run for {run_id}, found {len(runs)}"
    return runs[0]


def test_release_runs_end_to_end_and_idempotently(airflow_db, mlflow_client, session_home):
    # 1. First run: one version, lineage complete, prod alias set.
    dag_test(SMALL)
    first_run = latest_run_id()
    assert set(task_states(first_run).values()) == {"success"}
    registered = versions(mlflow_client)
    assert [str(v.version) for v in registered] == ["1"]
    tags = registered[0].tags
    from mlrelease.domain.lineage import missing_lineage

    assert missing_lineage(tags) == []
    assert (
        tags["mlrelease.dataset.sha256"]
        == parent_run(mlflow_client, first_run).data.tags["mlrelease.dataset.sha256"]
    )
    assert (
        tags["mlrelease.dataset.train_rows"] == "32561" and tags["mlrelease.dataset.holdout_rows"] == "16281"
    )
    assert tags["mlrelease.airflow.run_id"] == first_run
    assert (
        tags["mlrelease.triggered_by"] == "dag_test"
    )  # the triggering user Airflow recorded for `dags test`
    assert tags["mlrelease.candidate"] in SMALL["candidates"]
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "prod").version) == "1"
    parent = parent_run(mlflow_client, first_run)
    children = mlflow_client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["mlrelease.candidate"] for c in children) == sorted(SMALL["candidates"])
    for child in children:
        for metric in ("val_areaUnderROC", "test_areaUnderROC", "test_f1", "val_tp", "fit_seconds"):
            assert metric in child.data.metrics, (child.data.tags["mlrelease.candidate"], metric)
    assert parent.data.tags["spark.version"].startswith("4.")
    assert "mlrelease.champion.version" not in parent.data.tags
    decision = json.loads(parent.data.tags["mlrelease.gate.decision_json"])
    assert decision["approved"] and decision["champion_version"] is None
    summary = (session_home / "reports").glob("*.txt")
    assert any("Registered: income-classifier version 1" in p.read_text() for p in summary)
    cli = subprocess.run(
        [str(BIN / "mlrelease"), "summary", "--dag-run-id", first_run],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Registered: income-classifier version 1" in cli and "Gate (enforce): APPROVED" in cli
    missing = subprocess.run(
        [str(BIN / "mlrelease"), "summary", "--dag-run-id", "no-such-run"], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "No training run found" in missing.stderr

    # Both endpoints serve version 1; a prediction on prod is traced down to the dataset.
    status = endpoint_status()
    assert status["test"]["version"] == status["prod"]["version"] == "1"
    release_id = status["prod"]["release_id"]
    assert release_id == status["test"]["release_id"] and release_id.startswith("income-classifier-v1-")
    answer = score(status["prod"]["url"], [PERSON_1, PERSON_3])
    assert [p["label"] for p in answer["predictions"]] == [">50K", "<=50K"]
    assert answer["model"] == {"name": MODEL, "version": "1"} and answer["release_id"] == release_id
    chain = mlrelease_json("audit", "prediction", answer["request_id"])
    assert chain["prediction"]["inputs"] == [PERSON_1, PERSON_3]
    assert chain["prediction"]["outputs"] == answer["predictions"]
    assert chain["release"]["status"] == "promoted" and chain["release"]["promoted_by"] == "dag_test"
    assert chain["release"]["previous_prod_version"] is None
    assert {c["endpoint"] for c in chain["release"]["checks"]} == {"test", "prod"}
    assert all(c["passed"] for c in chain["release"]["checks"])
    model = chain["model"]
    assert (
        model["dataset"]["sha256"]
        == parent_run(mlflow_client, first_run).data.tags["mlrelease.dataset.sha256"]
    )
    assert model["dataset"]["train_rows"] == "32561"
    assert model["training_run"]["run_id"] == tags["mlrelease.child_run_id"]
    assert model["training_run"]["params"]["algorithm"] == model["algorithm"]
    assert "test_areaUnderROC" in model["training_run"]["metrics"]
    assert model["parent_run"]["run_id"] == parent_run(mlflow_client, first_run).info.run_id
    assert model["git"]["commit"] == tags["mlrelease.git.commit"]
    assert model["airflow"] == {
        "dag_id": DAG_ID,
        "run_id": first_run,
        "run_type": "manual",
        "triggered_by": "dag_test",
    }
    assert [h["version"] for h in model["prod_history"]] == ["1"] and model["prod_history"][0]["to"] is None
    words = mlrelease("audit", "prediction", answer["request_id"])
    assert model["dataset"]["sha256"] in words and "triggered by dag_test" in words

    # 2. A retried/cleared task converges: training is not resubmitted, registration finds version 1.
    out = airflow("tasks", "test", DAG_ID, "train_candidates", first_run).stdout
    assert "not submitting again" in out
    out = airflow("tasks", "test", DAG_ID, "register_model", first_run).stdout
    assert "already registered" in out
    assert [str(v.version) for v in versions(mlflow_client)] == ["1"]
    out = airflow("tasks", "test", DAG_ID, "deploy_test", first_run).stdout
    assert "already serves" in out
    out = airflow("tasks", "test", DAG_ID, "promote_prod", first_run).stdout
    assert "already promoted" in out
    assert len(release_records(release_id)) == 1

    # 3. Second run: version 2, whose gate compared against version 1 on the same held-out data.
    dag_test(SMALL)
    second_run = latest_run_id()
    assert second_run != first_run
    assert [str(v.version) for v in versions(mlflow_client)] == ["1", "2"]
    parent = parent_run(mlflow_client, second_run)
    assert parent.data.tags["mlrelease.champion.version"] == "1"
    assert "champion_test_areaUnderROC" in parent.data.metrics
    decision = json.loads(parent.data.tags["mlrelease.gate.decision_json"])
    assert decision["champion_version"] == "1"
    assert decision["champion_value"] == pytest.approx(parent.data.metrics["champion_test_areaUnderROC"])
    assert any(c["name"] == "champion" and c["passed"] for c in decision["checks"])
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "prod").version) == "2"

    # Re-running the first run's promotion now would put version 1 back over version 2, which its gate
    # never compared against: refused, prod stays at 2.
    stale = airflow("tasks", "test", DAG_ID, "promote_prod", first_run, check=False)
    assert "prod moved to version 2" in stale.stdout + stale.stderr
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "prod").version) == "2"
    assert endpoint_status()["prod"]["version"] == "2"
    history = mlrelease_json("audit", "model", f"{MODEL}:1")["prod_history"]
    assert len(history) == 1 and history[0]["to"] is not None  # version 1 was prod, until version 2

    # 4. A challenger that fails its test endpoint checks: the run fails, prod keeps serving version 2.
    failed = dag_test({**SMALL, "endpoint_latency_budget_ms": 0.001}, check=False)
    assert failed.returncode != 0
    failed_run = latest_run_id()
    states = task_states(failed_run)
    assert states["deploy_test"] == "success" and states["check_test"] == "failed"
    assert states["promote_prod"] == "upstream_failed"
    assert "FAIL latency: expected 1000 records scored within 0 ms" in failed.stdout + failed.stderr
    assert [str(v.version) for v in versions(mlflow_client)] == ["1", "2", "3"]
    status = endpoint_status()
    assert status["test"]["version"] == "3" and status["prod"]["version"] == "2"
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "prod").version) == "2"
    stopped = mlrelease_json("audit", "release", status["test"]["release_id"])
    assert stopped["status"].startswith("stopped at test") and stopped["previous_prod_version"] is None

    # 5. Rollback drill on real endpoints: promote version 3 with prod checks that fail.
    rollback_drill(status)

    # 4. A challenger below the bar: the run succeeds, release tasks are skipped, prod is unchanged.
    dag_test({**SMALL, "quality_bar": 0.99})
    rejected_run = latest_run_id()
    states = task_states(rejected_run)
    assert states["select_and_gate"] == "success"
    assert states["register_model"] == "skipped" and states["promote_prod"] == "skipped"
    assert states["deploy_test"] == "skipped" and states["check_test"] == "skipped"
    assert states["report"] == "success"
    decision = json.loads(parent_run(mlflow_client, rejected_run).data.tags["mlrelease.gate.decision_json"])
    assert not decision["approved"] and "bar 0.9900" in decision["reason"]
    assert [str(v.version) for v in versions(mlflow_client)] == ["1", "2", "3"]
    assert str(mlflow_client.get_model_version_by_alias(MODEL, "prod").version) == "2"
    assert endpoint_status()["prod"]["version"] == "2"


def test_bad_data_fails_the_run_before_training_and_leaves_prod_alone(airflow_db, mlflow_client, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("age,workclass\n39,State-gov\n")
    before = [str(v.version) for v in versions(mlflow_client)]
    prod_before = [a for v in versions(mlflow_client) for a in v.aliases]
    result = dag_test({**SMALL, "data_path": str(bad), "holdout_path": str(bad)}, check=False)
    assert result.returncode != 0
    assert "[schema]" in result.stdout + result.stderr and "hours_per_week" in result.stdout + result.stderr
    states = task_states(latest_run_id())
    assert states["validate_data"] == "failed"
    assert states["train_candidates"] == "upstream_failed"
    assert states["promote_prod"] == "upstream_failed"
    assert [str(v.version) for v in versions(mlflow_client)] == before
    assert [a for v in versions(mlflow_client) for a in v.aliases] == prod_before
    assert endpoint_status()["prod"]["version"] == "2"
