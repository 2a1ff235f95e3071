"""The Databricks run that training is submitted as: a pure function of the settings and the request."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from mlrelease.backends.azure.databricks import DatabricksCompute, to_job_state
from mlrelease.backends.base import JobLifeCycle, JobResult, TrainingRequest, submission_key
from mlrelease.settings import load_settings


@pytest.fixture
def setup(tmp_path: Path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train_income.py").write_text("from mlrelease.training.run import main\n")
    wheel = tmp_path / "mlrelease-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK wheel")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.parquet").write_bytes(b"train")
    (data / "holdout.parquet").write_bytes(b"holdout")
    env = {
        "MLRELEASE_HOME": str(tmp_path),
        "MLRELEASE_COMPUTE": "databricks",
        "MLRELEASE_TRACKING": "databricks",
        "MLRELEASE_DATABRICKS_WHEEL": str(wheel),
    }
    request = TrainingRequest(
        train_path=str(data / "train.parquet"),
        holdout_path=str(data / "holdout.parquet"),
        candidates=[{"name": "lr", "algorithm": "LogisticRegression", "params": {"regParam": 0.01}}],
        tracking_uri="databricks",
        parent_run_id="parent-1",
        run_label="income_release-manual__1-try1",
        champion_model_uri="dbfs:/Volumes/main/mlrelease/files/mlflow/x/models/m-1/artifacts",
        champion_version="3",
    )
    return env, jobs, request


def compute_for(env: dict, jobs: Path, **extra) -> DatabricksCompute:
    settings = load_settings({**env, **extra})
    return DatabricksCompute(settings.databricks, jobs, settings.home)


def test_payload_runs_the_job_file_with_the_local_parameters_on_a_new_cluster(setup):
    env, jobs, request = setup
    compute = compute_for(env, jobs)
    plan = compute.staging_plan(request)
    token = submission_key("income_release", "manual__1", "train_candidates", 1)
    payload = compute.submit_payload(request, plan, "income_release-manual__1-try1", token)

    task = payload["spark_python_task"]
    assert task["python_file"] == plan["job"].remote
    assert plan["job"].remote.startswith("/Volumes/main/mlrelease/files/jobs/")
    assert plan["job"].remote.endswith("/train_income.py")
    # The same command line as local spark-submit, with the data where the cluster can read it.
    local = request.job_arguments()
    remote = task["parameters"]
    assert remote[::2] == local[::2]  # the same flags in the same order
    assert remote[remote.index("--train-path") + 1] == plan["train"].remote
    assert remote[remote.index("--test-path") + 1] == plan["holdout"].remote
    assert remote[remote.index("--tracking-uri") + 1] == "databricks"
    assert remote[remote.index("--champion-version") + 1] == "3"
    assert payload["idempotency_token"] == token and len(token) <= 64
    cluster = payload["new_cluster"]
    assert cluster["spark_version"] == "17.3.x-scala2.13" and cluster["num_workers"] == 2
    assert "existing_cluster_id" not in payload
    assert payload["libraries"][0] == {"whl": plan["wheel"].remote}
    assert any(lib.get("pypi", {}).get("package", "").startswith("mlflow==") for lib in payload["libraries"])


def test_staged_paths_are_content_addressed(setup, tmp_path):
    env, jobs, request = setup
    compute = compute_for(env, jobs)
    first = compute.staging_plan(request)
    assert first == compute.staging_plan(request)
    (jobs / "train_income.py").write_text("# changed\n")
    assert compute.staging_plan(request)["job"].remote != first["job"].remote
    assert (
        first["train"].remote.endswith("/train.parquet") and first["train"].remote != first["holdout"].remote
    )


def test_autoscale_existing_cluster_and_spark_conf(setup):
    env, jobs, request = setup
    autoscaled = compute_for(
        env, jobs, MLRELEASE_DATABRICKS_AUTOSCALE="2:8", MLRELEASE_DATABRICKS_SPARK_CONF='{"a.b": 1}'
    )
    payload = autoscaled.submit_payload(request, autoscaled.staging_plan(request), "r", "t")
    assert payload["new_cluster"]["autoscale"] == {"min_workers": 2, "max_workers": 8}
    assert "num_workers" not in payload["new_cluster"] and payload["new_cluster"]["spark_conf"] == {
        "a.b": "1"
    }
    existing = compute_for(env, jobs, MLRELEASE_DATABRICKS_CLUSTER_ID="0123-456789-abcdefgh")
    payload = existing.submit_payload(request, existing.staging_plan(request), "r", "t")
    assert payload["existing_cluster_id"] == "0123-456789-abcdefgh" and "new_cluster" not in payload


def test_workspace_and_git_job_sources_are_referenced_not_uploaded(setup):
    env, jobs, request = setup
    workspace = compute_for(
        env,
        jobs,
        MLRELEASE_DATABRICKS_JOB_SOURCE="workspace",
        MLRELEASE_DATABRICKS_JOB_FILE="/Workspace/Shared/mlrelease/jobs/train_income.py",
    )
    plan = workspace.staging_plan(request)
    assert "job" not in plan
    payload = workspace.submit_payload(request, plan, "r", "t")
    assert payload["spark_python_task"]["python_file"] == "/Workspace/Shared/mlrelease/jobs/train_income.py"
    git = compute_for(
        env,
        jobs,
        MLRELEASE_DATABRICKS_JOB_SOURCE="git",
        MLRELEASE_DATABRICKS_GIT_URL="https://github.com/example/mlrelease",
        MLRELEASE_DATABRICKS_GIT_COMMIT="abc123",
    )
    payload = git.submit_payload(request, git.staging_plan(request), "r", "t")
    assert payload["spark_python_task"] == {**payload["spark_python_task"], "source": "GIT"}
    assert payload["spark_python_task"]["python_file"] == "jobs/train_income.py"
    assert payload["git_source"] == {
        "git_url": "https://github.com/example/mlrelease",
        "git_provider": "gitHub",
        "git_commit": "abc123",
    }


def test_overlong_idempotency_token_is_refused(setup):
    env, jobs, request = setup
    compute = compute_for(env, jobs)
    with pytest.raises(ValueError, match="64 characters"):
        compute.submit_payload(request, compute.staging_plan(request), "r", "x" * 65)


def test_missing_wheel_says_how_to_build_it(setup, tmp_path):
    env, jobs, request = setup
    compute = compute_for(env, jobs, MLRELEASE_DATABRICKS_WHEEL=str(tmp_path / "nope.whl"))
    with pytest.raises(FileNotFoundError, match="make wheel"):
        compute.staging_plan(request)


@pytest.mark.parametrize(
    ("life_cycle", "result", "expected_cycle", "expected_result", "active"),
    [
        ("PENDING", None, JobLifeCycle.PENDING, None, True),
        ("QUEUED", None, JobLifeCycle.RUNNING, None, True),
        ("TERMINATED", "SUCCESS", JobLifeCycle.TERMINATED, JobResult.SUCCESS, False),
        ("TERMINATED", "FAILED", JobLifeCycle.TERMINATED, JobResult.FAILED, False),
        ("TERMINATED", "TIMEDOUT", JobLifeCycle.TERMINATED, JobResult.CANCELED, False),
        ("INTERNAL_ERROR", None, JobLifeCycle.INTERNAL_ERROR, JobResult.FAILED, False),
    ],
)
def test_databricks_states_map_onto_the_contract(life_cycle, result, expected_cycle, expected_result, active):
    state = to_job_state(life_cycle, result, "msg")
    assert (state.life_cycle, state.result, state.is_active) == (expected_cycle, expected_result, active)
    assert replace(state, message="").encode().startswith(expected_cycle.value)


def test_the_wheel_a_cluster_installs_does_not_pull_in_airflow(tmp_path):
    import zipfile

    from mlrelease.backends.azure.databricks import build_wheel
    from mlrelease.hashing import sha256_file
    from mlrelease.settings import project_root

    wheel = build_wheel(project_root(), tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    required = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    unconditional = [line for line in required if "extra ==" not in line]
    assert unconditional and not any("airflow" in line or "fastapi" in line for line in unconditional)
    assert "mlrelease/training/run.py" in names and "mlrelease/tags.py" in names
    # Built again from the same source: the same bytes, so the same path on the volume (no re-upload).
    assert sha256_file(build_wheel(project_root(), tmp_path / "again")) == sha256_file(wheel)


@pytest.fixture
def emulated_workspace(setup, tmp_path, monkeypatch):
    """A loopback workspace emulator and the connection + environment a task would have."""
    import json as json_lib

    from emulators.databricks import start

    emulator = start(tmp_path / "emulator-home")
    monkeypatch.setenv(
        "AIRFLOW_CONN_DATABRICKS_EMULATED",
        json_lib.dumps(
            {
                "conn_type": "databricks",
                "host": emulator.host,
                "port": emulator.port,
                "schema": "http",
                "password": emulator.token,
            }
        ),
    )
    monkeypatch.setenv("DATABRICKS_HOST", emulator.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", emulator.token)
    try:
        yield emulator
    finally:
        emulator.stop()


def test_the_run_id_contract_through_the_providers_hook(setup, emulated_workspace):
    """submit stages and submits once per key; state, url and cancel need only the run id."""
    env, jobs, request = setup
    emulator = emulated_workspace
    emulator.set_faults(stuck_pending=True)  # no Spark needed: the run waits until cancelled
    compute = compute_for(env, jobs, MLRELEASE_DATABRICKS_CONN_ID="databricks_emulated")
    handle = compute.submit(request, "key-try1")
    assert compute.submit(request, "key-try1") == handle  # a repeated key is the same run
    assert [r["run_id"] for r in emulator.runs()] == [int(handle.run_id)]
    assert handle.url.startswith(emulator.url) and handle.url.endswith(f"/run/{handle.run_id}")
    assert compute.url(handle.run_id) == handle.url
    assert compute.state(handle.run_id).life_cycle is JobLifeCycle.PENDING
    staged = emulator.volume_path(compute.staging_plan(request)["job"].remote)
    assert staged.read_text() == (jobs / "train_income.py").read_text()

    compute.cancel(handle.run_id)
    state = compute.state(handle.run_id)
    assert (state.life_cycle, state.result) == (JobLifeCycle.TERMINATED, JobResult.CANCELED)
    from mlrelease.backends.base import TrainingJobError

    with pytest.raises(TrainingJobError, match=f"Databricks run {handle.run_id} ended TERMINATED"):
        compute.result(handle.run_id)
