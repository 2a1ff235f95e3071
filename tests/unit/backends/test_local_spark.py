"""LocalSparkCompute at its process boundary: a stand-in spark-submit that behaves like a real one.

The contract under test is the run-id one: submit returns a handle; state, result and cancel take only
the run id, so a *second* LocalSparkCompute (a restarted worker) can find and follow the run.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from mlrelease.backends.base import (
    JobLifeCycle,
    JobResult,
    TrainingJobError,
    TrainingRequest,
    redact_uri,
    submission_key,
)
from mlrelease.backends.local import spark as local_spark
from mlrelease.processes import alive


def request(**overrides) -> TrainingRequest:
    values = dict(
        train_path="/data/train.parquet",
        holdout_path="/data/holdout.parquet",
        candidates=[{"name": "lr", "algorithm": "LogisticRegression", "params": {}}],
        tracking_uri="postgresql://mlflow:s3cret@db:5432/mlflow",
        parent_run_id="parent-1",
        run_label="income_release-manual__1-try1",
    )
    values.update(overrides)
    return TrainingRequest(**values)


def fake_spark_submit(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "spark-submit"
    script.write_text("#!/usr/bin/env bash\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture
def compute(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train_income.py").write_text("# stand-in\n")
    return local_spark.LocalSparkCompute(jobs, tmp_path / "compute" / "runs")


def wait_until_done(compute, run_id: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while (state := compute.state(run_id)).is_active:
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(0.05)
    return state


def test_successful_run_gives_result_app_id_and_log(tmp_path, monkeypatch, compute, caplog):
    # The fake reads --result-path from its arguments and writes the result there, as the job does.
    script = fake_spark_submit(
        tmp_path,
        'echo "26/11/26 INFO SparkContext: Submitted application: local-1795687852678"\n'
        'echo "2026-11-26 INFO mlrelease.jobs.train_income: candidate lr: child run abc"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = --result-path ]; then out=$2; fi; shift; done\n'
        'echo \'{"parent_run_id": "parent-1", "application_id": "local-1795687852678"}\' > "$out"\n',
    )
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    caplog.set_level("INFO")
    handle = compute.submit(request(), submission_key("dag", "run", "train", 1))
    assert handle.run_id.startswith("local-") and handle.url.endswith("driver.log")
    state = wait_until_done(compute, handle.run_id)
    assert state.life_cycle is JobLifeCycle.TERMINATED and state.result is JobResult.SUCCESS
    result = compute.result(handle.run_id)
    assert result.application_id == "local-1795687852678"
    assert result.result["parent_run_id"] == "parent-1"
    assert Path(result.log_location).read_text().count("\n") == 2
    assert "s3cret" not in caplog.text and "postgresql://***@db" in caplog.text
    assert "s3cret" not in (compute.run_dir(handle.run_id) / "request.json").read_text()


def test_same_key_is_the_same_run_and_a_new_try_is_a_new_one(tmp_path, monkeypatch, compute):
    marker = tmp_path / "starts"
    script = fake_spark_submit(tmp_path, f'echo started >> "{marker}"\n')
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    first = compute.submit(request(), submission_key("dag", "run", "train", 1))
    again = compute.submit(request(), submission_key("dag", "run", "train", 1))
    assert again == first
    wait_until_done(compute, first.run_id)
    retry = compute.submit(request(), submission_key("dag", "run", "train", 2))
    assert retry.run_id != first.run_id
    wait_until_done(compute, retry.run_id)
    assert marker.read_text().count("started") == 2


def test_a_restarted_worker_finds_the_running_run_by_id(tmp_path, monkeypatch, compute):
    gate = tmp_path / "go"
    script = fake_spark_submit(
        tmp_path,
        f'while [ ! -f "{gate}" ]; do sleep 0.05; done\n'
        'while [ $# -gt 0 ]; do if [ "$1" = --result-path ]; then out=$2; fi; shift; done\n'
        'echo \'{"parent_run_id": "parent-1"}\' > "$out"\n',
    )
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    handle = compute.submit(request(), submission_key("dag", "run", "train", 1))
    restarted = local_spark.LocalSparkCompute(compute.jobs_dir, compute.runs_dir)  # knows nothing in memory
    assert restarted.state(handle.run_id).life_cycle is JobLifeCycle.RUNNING
    gate.write_text("go")
    assert wait_until_done(restarted, handle.run_id).is_successful
    assert restarted.result(handle.run_id).result == {"parent_run_id": "parent-1"}


def test_failed_run_raises_with_log_path_and_last_lines(tmp_path, monkeypatch, compute):
    script = fake_spark_submit(
        tmp_path,
        'echo "Traceback (most recent call last):"\necho "ValueError: candidate lr: bad param"\nexit 3\n',
    )
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    handle = compute.submit(request(), "k")
    state = wait_until_done(compute, handle.run_id)
    assert state.result is JobResult.FAILED and "exited with code 3" in state.message
    with pytest.raises(TrainingJobError) as error:
        compute.result(handle.run_id)
    message = str(error.value)
    assert "code 3" in message and "ValueError: candidate lr: bad param" in message
    assert "Full driver log: " + str(compute.runs_dir) in message


def test_run_that_exits_zero_without_result_is_an_error(tmp_path, monkeypatch, compute):
    monkeypatch.setattr(
        local_spark, "spark_submit_executable", lambda: str(fake_spark_submit(tmp_path, "exit 0\n"))
    )
    handle = compute.submit(request(), "k")
    wait_until_done(compute, handle.run_id)
    with pytest.raises(TrainingJobError, match="wrote no result file"):
        compute.result(handle.run_id)


def test_cancel_kills_the_process_group_and_the_run_ends_canceled(tmp_path, monkeypatch, compute):
    child_pid = tmp_path / "child.pid"
    script = fake_spark_submit(tmp_path, f'sleep 300 & echo $! > "{child_pid}"\nwait\n')
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    handle = compute.submit(request(), "k")
    deadline = time.monotonic() + 10
    while not child_pid.is_file() and time.monotonic() < deadline:
        time.sleep(0.05)
    compute.cancel(handle.run_id)
    state = compute.state(handle.run_id)
    assert state.life_cycle is JobLifeCycle.TERMINATED and state.result is JobResult.CANCELED
    pid = int(child_pid.read_text())
    time.sleep(0.2)
    assert not alive(pid)  # the job's own children (the JVM, Python workers) are gone too


def test_a_process_killed_from_outside_is_a_failed_run(tmp_path, monkeypatch, compute):
    script = fake_spark_submit(tmp_path, "sleep 300\n")
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    handle = compute.submit(request(), "k")
    pid = int((compute.run_dir(handle.run_id) / "pid").read_text())
    os.killpg(pid, 9)
    state = wait_until_done(compute, handle.run_id)
    assert state.life_cycle is JobLifeCycle.INTERNAL_ERROR and "killed from outside" in state.message


def test_unknown_or_malformed_run_ids(compute):
    with pytest.raises(TrainingJobError, match="does not exist"):
        compute.state("local-0123456789abcdef")
    with pytest.raises(ValueError, match="not a local Spark run id"):
        compute.state("../../etc")


def test_missing_job_file_names_the_setting(tmp_path):
    compute = local_spark.LocalSparkCompute(tmp_path / "nowhere", tmp_path / "runs")
    with pytest.raises(FileNotFoundError, match="MLRELEASE_JOBS_DIR"):
        compute.submit(request(), "k")


def test_job_arguments_carry_champion_only_when_there_is_one():
    plain = request().job_arguments()
    assert "--champion-model-uri" not in plain
    assert plain[plain.index("--candidates-json") + 1].startswith('[{"name":"lr"')
    with_champion = request(
        champion_model_uri="dbfs:/Volumes/main/x/models/m-1/artifacts", champion_version="3"
    ).job_arguments(result_path="r.json")
    assert with_champion[with_champion.index("--champion-model-uri") + 1].endswith("m-1/artifacts")
    assert with_champion[with_champion.index("--result-path") + 1] == "r.json"


def test_submission_key_fits_databricks_and_changes_with_the_try():
    keys = {submission_key("income_release", "manual__" + "x" * 300, "train_candidates", t) for t in (1, 2)}
    assert len(keys) == 2 and all(len(k) <= 64 for k in keys)


def test_redact_uri():
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert (
        redact_uri("https://token:x@adb-1.azuredatabricks.net/api")
        == "https://***@adb-1.azuredatabricks.net/api"
    )
