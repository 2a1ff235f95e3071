"""LocalSparkCompute at its process boundary: a stand-in spark-submit that behaves like a real one."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from mlrelease.backends.base import TrainingJobError, TrainingRequest, redact_uri
from mlrelease.backends.local import spark as local_spark


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
def compute(tmp_path, monkeypatch):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "train_income.py").write_text("# stand-in\n")
    return local_spark.LocalSparkCompute(jobs, tmp_path / "logs")


def test_successful_job_returns_result_app_id_and_log(tmp_path, monkeypatch, compute, caplog):
    # The fake reads --result-path from its arguments and writes the result there, as the job does.
    script = fake_spark_submit(
        tmp_path,
        'echo "26/11/26 INFO SparkContext: Submitted application: local-1795687852678"\n'
        'echo "2026-11-26 INFO mlrelease.jobs.train_income: candidate lr: child run abc"\n'
        'echo "26/11/26 INFO DAGScheduler: Job 3 finished: first at train_income.py:263"\n'
        'while [ $# -gt 0 ]; do if [ "$1" = --result-path ]; then out=$2; fi; shift; done\n'
        'echo \'{"parent_run_id": "parent-1", "application_id": "local-1795687852678"}\' > "$out"\n',
    )
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    caplog.set_level("INFO")
    result = compute.run_training(request())
    assert result.application_id == "local-1795687852678"
    assert result.result["parent_run_id"] == "parent-1"
    assert Path(result.log_location).read_text().count("\n") == 3
    assert "s3cret" not in caplog.text and "postgresql://***@db" in caplog.text
    assert "candidate lr: child run abc" in caplog.text  # the job's own lines reach the task log
    assert "DAGScheduler" not in caplog.text  # Spark's chatter stays in the driver log
    candidates = json.loads(next((tmp_path / "logs" / "spark").glob("*.candidates.json")).read_text())
    assert candidates[0]["name"] == "lr"


def test_failed_job_raises_with_log_path_and_last_lines(tmp_path, monkeypatch, compute):
    script = fake_spark_submit(
        tmp_path,
        'echo "Traceback (most recent call last):"\necho "ValueError: candidate lr: bad param"\nexit 3\n',
    )
    monkeypatch.setattr(local_spark, "spark_submit_executable", lambda: str(script))
    with pytest.raises(TrainingJobError) as error:
        compute.run_training(request())
    message = str(error.value)
    assert "exit code 3" in message and "ValueError: candidate lr: bad param" in message
    assert "Full driver log: " + str(tmp_path / "logs" / "spark") in message


def test_job_that_exits_zero_without_result_is_an_error(tmp_path, monkeypatch, compute):
    monkeypatch.setattr(
        local_spark, "spark_submit_executable", lambda: str(fake_spark_submit(tmp_path, "exit 0\n"))
    )
    with pytest.raises(TrainingJobError, match="wrote no result file"):
        compute.run_training(request())


def test_missing_job_file_names_the_setting(tmp_path):
    compute = local_spark.LocalSparkCompute(tmp_path / "nowhere", tmp_path / "logs")
    with pytest.raises(FileNotFoundError, match="MLRELEASE_JOBS_DIR"):
        compute.command(request(), tmp_path / "c.json", tmp_path / "r.json")


def test_job_arguments_carry_champion_only_when_there_is_one():
    plain = request().job_arguments("@c.json")
    assert "--champion-model-uri" not in plain
    with_champion = request(
        champion_model_uri="models:/income-classifier/3", champion_version="3"
    ).job_arguments("@c.json", "r.json")
    assert with_champion[with_champion.index("--champion-model-uri") + 1] == "models:/income-classifier/3"
    assert with_champion[with_champion.index("--result-path") + 1] == "r.json"


def test_redact_uri():
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    assert (
        redact_uri("https://token:x@adb-1.azuredatabricks.net/api")
        == "https://***@adb-1.azuredatabricks.net/api"
    )
