"""Releasing through Azure ML onto AKS, end to end against the emulators, with the real SDKs.

Registry ``azureml``, endpoints ``aks`` and audit ``azure``; training stays local (Spark) to keep this
test to one Spark run. Everything Azure goes through the real ``azure-ai-ml`` SDK over HTTPS to the
Azure ML fake, through the Microsoft Azure provider's hooks (``AzureBaseHook`` -> DefaultAzureCredential
-> managed identity served by the fake; ``WasbHook`` -> Azurite), and each deployment is a local
process running ``azureml_score.py`` under Azure ML's inference server.

1. a whole DAG run (``airflow dags test``, deferring while deployments provision) registers the winner
   in Azure ML and releases it to the test and prod endpoints; a prediction on prod with the key is in
   the Blob audit store and ``mlrelease audit prediction`` tells its story; no key in any request log;
2. a second release of the version: blue/green on each endpoint, the old deployment deleted after;
3. a deployment that fails provisioning: prod keeps serving, the failed deployment is removed, recorded;
4. checks failing on the new prod deployment: traffic stays on the old one, the new one is removed;
5. a retried promotion appends no second release.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from mlrelease.localenv import airflow_env
from tests.conftest import ROOT, SESSION_HOME

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.spark,
    pytest.mark.skipif(shutil.which("node") is None, reason="Azurite needs Node.js on PATH"),
]

BIN = Path(sys.executable).parent
DAG_ID = "income_release"
MODEL = "income-classifier"
HOME = SESSION_HOME / "azure"
SMALL = {"candidates": ["lr_reg_0.01", "dt_depth_3"]}


@pytest.fixture(scope="module")
def cloud():
    sys.path.insert(0, str(ROOT))
    from emulators.cloud import start_cloud

    emulators = start_cloud(HOME, databricks=False, liveness_timeout_s=60)
    env = {
        **os.environ,
        **airflow_env(HOME, ROOT),
        **emulators.settings(),
        **emulators.environment(),
        "MLRELEASE_AZUREML_POLLING_SECONDS": "1",
    }
    result = subprocess.run([str(BIN / "airflow"), "db", "migrate"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        yield {"emulators": emulators, "env": env}
    emulators.stop()


def run(cloud, *command: str, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=cloud["env"], timeout=timeout)
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
    )
    return result


def backends_and_settings():
    from mlrelease.airflow.connections import task_backends
    from mlrelease.settings import load_settings

    settings = load_settings()
    return task_backends(settings), settings


def a_release(run_id: str):
    from mlrelease import releasing
    from mlrelease.domain.lineage import AirflowRunInfo

    return releasing.Release(MODEL, "1", AirflowRunInfo(DAG_ID, run_id, 1, "manual", "oncall"))


def deployments(cloud, endpoint: str) -> dict:
    return cloud["emulators"].azureml.snapshot()["endpoints"][endpoint]


@pytest.fixture(scope="module")
def first_release(cloud):
    result = run(cloud, str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(SMALL))
    log = result.stdout + result.stderr
    assert "state=success" in log.split("DagRun Finished")[-1], log[-5000:]
    return log


def test_a_dag_run_releases_through_azure_ml_onto_aks(cloud, first_release):
    log = first_release
    assert "deferring until it is provisioned" in log  # no worker slot held while provisioning
    assert (
        re.search(r"\[test endpoint\] pass key_required", log)
        and "[prod endpoint] pass holdout_parity" in log
    )
    status = json.loads(run(cloud, str(BIN / "mlrelease"), "status", "--json").stdout)
    prod = status["endpoints"]["prod"]
    assert prod["version"] == "1" and prod["url"].endswith("/endpoints/income-prod")
    assert list(prod["traffic"].values()) == [100]

    key = run(cloud, str(BIN / "mlrelease"), "endpoint-key", "prod").stdout.strip()
    ca = cloud["env"]["MLRELEASE_AZUREML_CA_BUNDLE"]
    person = {
        "age": 52, "workclass": "Self-emp-inc", "fnlwgt": 287927, "education": "HS-grad", "education_num": 9,
        "marital_status": "Married-civ-spouse", "occupation": "Exec-managerial", "relationship": "Wife",
        "race": "White", "sex": "Female", "capital_gain": 15024, "capital_loss": 0, "hours_per_week": 40,
        "native_country": "United-States",
    }  # fmt: skip
    assert httpx.post(f"{prod['url']}/score", json={"data": [person]}, verify=ca).status_code == 401
    answer = httpx.post(
        f"{prod['url']}/score", json={"data": [person]}, headers={"Authorization": f"Bearer {key}"}, verify=ca
    )
    assert answer.status_code == 200 and answer.json()["model"] == {"name": MODEL, "version": "1"}
    bad = httpx.post(
        f"{prod['url']}/score",
        json={"data": [{**person, "age": -1}]},
        headers={"Authorization": f"Bearer {key}"},
        verify=ca,
    )
    assert bad.status_code == 422 and bad.json()["details"][0]["field"] == "data[0].age"

    story = json.loads(
        run(
            cloud, str(BIN / "mlrelease"), "audit", "prediction", answer.json()["request_id"], "--json"
        ).stdout
    )
    text = json.dumps(story)
    assert (
        answer.json()["request_id"] in text
        and answer.json()["release_id"] in text
        and "train_rows" in text
        or "dataset" in text
    )

    # No key, token or identity secret in any emulator's request log or in the settings file.
    secrets = [key, cloud["env"]["IDENTITY_HEADER"]]
    for log_file in (HOME / "emulators").glob("*/requests.jsonl"):
        content = log_file.read_text()
        assert not any(secret in content for secret in secrets), log_file
    assert key not in log


def test_a_second_release_is_blue_green_and_removes_the_old_deployment(cloud, first_release):
    from mlrelease import releasing

    backends, settings = backends_and_settings()
    old = next(iter(deployments(cloud, "income-prod")["deployments"]))
    release = a_release("second-release")
    rollout = releasing.deploy(backends, release, releasing.TEST)
    assert not rollout.live and rollout.deployment != old  # beside the serving one, at 0%
    assert releasing.check_test(backends, settings, release).passed
    record = releasing.promote(backends, settings, release)
    assert record["outcome"] == "promoted" and record["retired"] == [old]
    prod = deployments(cloud, "income-prod")
    assert prod["traffic"] == {rollout.deployment: 100} and list(prod["deployments"]) == [rollout.deployment]
    assert backends.endpoints.serving("prod").release_id == release.release_id

    # A retried promotion converges: nothing deployed, no second release record.
    again = releasing.promote(backends, settings, release)
    assert again == record
    promoted = [e for e in backends.audit.events(kind="release", subject=release.release_id)]
    assert len(promoted) == 1


def test_a_deployment_that_fails_provisioning_leaves_prod_serving(cloud, first_release):
    from mlrelease import releasing

    backends, settings = backends_and_settings()
    before = deployments(cloud, "income-prod")
    release = a_release("provisioning-fails")
    releasing.deploy(backends, release, releasing.TEST)
    assert releasing.check_test(backends, settings, release).passed
    cloud["emulators"].azureml.set_faults(fail_next_provisioning="the image pull failed: manifest unknown")
    with pytest.raises(releasing.ReleaseError, match=r"ended Failed; it was removed and traffic stays"):
        releasing.promote(backends, settings, release)
    after = deployments(cloud, "income-prod")
    assert after["traffic"] == before["traffic"] and set(after["deployments"]) == set(before["deployments"])
    [record] = backends.audit.events(kind="release", subject=release.release_id)
    assert record.payload["outcome"] == "prod deployment failed"


def test_a_failed_test_deployment_is_recorded_and_test_keeps_serving(cloud, first_release):
    from mlrelease import releasing
    from mlrelease.backends.base import EndpointError

    backends, _ = backends_and_settings()
    before = deployments(cloud, "income-test")
    release = a_release("test-provisioning-fails")
    cloud["emulators"].azureml.set_faults(fail_next_provisioning="quota exceeded for instance type")
    with pytest.raises(EndpointError, match="ended Failed"):
        releasing.deploy(backends, release, releasing.TEST)
    after = deployments(cloud, "income-test")
    assert after["traffic"] == before["traffic"] and set(after["deployments"]) == set(before["deployments"])
    [failed] = backends.audit.events(kind="deployment_failed", subject=release.release_id)
    assert failed.payload["endpoint"] == "test" and "ended Failed" in failed.payload["reason"]
    story = run(cloud, str(BIN / "mlrelease"), "audit", "release", release.release_id).stdout
    assert "stopped at test (the deployment failed)" in story and "DEPLOYMENT FAILED on test" in story


def test_failing_checks_on_the_new_deployment_keep_traffic_on_the_old_one(cloud, first_release):
    from mlrelease import releasing
    from mlrelease.backends.azure.aks import deployment_name

    backends, settings = backends_and_settings()
    before = deployments(cloud, "income-prod")
    release = a_release("prod-checks-fail")
    releasing.deploy(backends, release, releasing.TEST)
    assert releasing.check_test(backends, settings, release).passed
    new = deployment_name(backends.endpoints.find("test", a_served(release)).served)
    cloud["emulators"].azureml.set_faults(scoring_status={f"income-prod/{new}": 500})
    with pytest.raises(releasing.ReleaseError, match="rolled back"):
        releasing.promote(backends, settings, release)
    after = deployments(cloud, "income-prod")
    assert after["traffic"] == before["traffic"] and new not in after["deployments"]
    rollbacks = backends.audit.events(kind="rollback", subject=release.release_id)
    assert rollbacks and "served_model" in rollbacks[0].payload["failed"]


def a_served(release):
    from mlrelease.domain.served import ServedModelRef

    return ServedModelRef(release.model_name, release.version, release.release_id)


def test_the_next_run_compares_with_prod_from_the_audit_store_and_releases_version_2(cloud, first_release):
    """Last: it moves prod to version 2, which the releases of version 1 above must not race with."""
    from mlrelease.domain.release import ALIAS_MOVED

    result = run(cloud, str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(SMALL))
    log = result.stdout + result.stderr
    assert "state=success" in log.split("DagRun Finished")[-1], log[-5000:]
    # The champion came from the audit store (Azure ML has no aliases) and the job scored it.
    assert (
        "Champion: income-classifier version 1 (alias prod, runs:/" in log
        or "Champion: income-classifier version 1 (alias prod, models:/" in log
    ), log[-3000:]
    backends, _ = backends_and_settings()
    moves = backends.audit.events(kind=ALIAS_MOVED, subject=f"{MODEL}:prod")
    assert moves[-1].payload["version"] == "2"
    assert backends.registry.get_by_alias(MODEL, "prod").version == "2"
    prod = deployments(cloud, "income-prod")
    assert len(prod["deployments"]) == 1 and list(prod["traffic"].values()) == [100]
    assert backends.endpoints.serving("prod").version == "2"
