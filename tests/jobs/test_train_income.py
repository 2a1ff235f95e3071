"""Tests for the Spark training job: ``mlrelease.training`` and its entrypoint ``jobs/train_income.py``."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

pyspark = pytest.importorskip("pyspark")
mlflow = pytest.importorskip("mlflow")

from mlflow.entities import ViewType  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from mlrelease import tags  # noqa: E402
from mlrelease.domain.schema import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES  # noqa: E402
from mlrelease.training import estimators, evaluation, features, portable_export, run  # noqa: E402

pytestmark = pytest.mark.spark

ROOT = Path(__file__).resolve().parents[2]
JOB_PATH = ROOT / "jobs" / "train_income.py"

WORKCLASSES = ["Private", "Self-emp-not-inc", "Local-gov", "State-gov"]
EDUCATIONS = [("HS-grad", 9), ("Some-college", 10), ("Bachelors", 13), ("Masters", 14), ("Doctorate", 16)]
MARITAL = ["Never-married", "Married-civ-spouse", "Divorced"]
OCCUPATIONS = ["Adm-clerical", "Exec-managerial", "Craft-repair", "Prof-specialty", "Sales"]
RELATIONSHIPS = ["Not-in-family", "Husband", "Wife", "Own-child"]
RACES = ["White", "Black", "Asian-Pac-Islander"]
SEXES = ["Male", "Female"]
COUNTRIES = ["United-States", "Mexico", "India"]


def adult_rows(n: int, seed: int, test_suffix: bool = False) -> list[dict[str, Any]]:
    """Deterministic Adult-like records; income depends on education, age, hours and marital status."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        education, education_num = EDUCATIONS[rng.randrange(len(EDUCATIONS))]
        age = rng.randint(18, 70)
        hours = rng.randint(10, 70)
        marital = MARITAL[rng.randrange(len(MARITAL))]
        score = (education_num - 11) * 0.6 + (age - 40) * 0.05 + (hours - 40) * 0.05
        score += 1.0 if marital == "Married-civ-spouse" else -0.5
        positive = score + rng.gauss(0.0, 1.0) > 0.5
        label = ">50K" if positive else "<=50K"
        rows.append(
            {
                "age": age,
                "workclass": WORKCLASSES[i % len(WORKCLASSES)],
                "fnlwgt": rng.randint(20_000, 400_000),
                "education": education,
                "education_num": education_num,
                "marital_status": marital,
                "occupation": OCCUPATIONS[rng.randrange(len(OCCUPATIONS))],
                "relationship": RELATIONSHIPS[rng.randrange(len(RELATIONSHIPS))],
                "race": RACES[rng.randrange(len(RACES))],
                "sex": SEXES[i % 2],
                "capital_gain": rng.choice([0, 0, 0, 5000]),
                "capital_loss": rng.choice([0, 0, 0, 1500]),
                "hours_per_week": hours,
                "native_country": COUNTRIES[rng.randrange(len(COUNTRIES))],
                "income": label + ("." if test_suffix else ""),
            }
        )
    return rows


RAW_COLUMNS = [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES, LABEL]
RAW_SCHEMA = (
    ", ".join(f"{c} bigint" for c in NUMERIC_FEATURES)
    + ", "
    + ", ".join(f"{c} string" for c in [*CATEGORICAL_FEATURES, LABEL])
)


def to_df(spark: SparkSession, rows: list[dict[str, Any]]):
    return spark.createDataFrame([tuple(r.get(c) for c in RAW_COLUMNS) for r in rows], RAW_SCHEMA)


SPARK_CORES = 1  # the spark fixture (tests/jobs/conftest.py) reads these
SPARK_PARTITIONS = 2


@pytest.fixture(scope="module")
def raw_df(spark):
    return features.add_label(to_df(spark, adult_rows(200, seed=1))).cache()


# --------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------


def test_job_file_is_a_thin_entrypoint():
    """The job file only hands over to mlrelease.training.run.main: no Spark code lives in it."""
    source = JOB_PATH.read_text()
    assert len(source.splitlines()) < 60
    tree = ast.parse(source)
    imported = {
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert ("mlrelease.training.run", "main") in imported
    assert not [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    assert 'if __name__ == "__main__":\n    sys.exit(main())' in source


def test_portable_constants_match_the_scorer():
    from mlrelease.serving import portable

    assert portable_export.PORTABLE_FORMAT == portable.FORMAT
    assert portable_export.UNSEEN_ENCODING in portable.UNSEEN_ENCODINGS


def test_add_label_maps_positive_variants_and_keeps_rows(spark):
    incomes = [">50K", ">50K.", " >50K. ", "<=50K", "<=50K.", None, "", "unknown"]
    df = spark.createDataFrame([(i, v) for i, v in enumerate(incomes)], "id int, income string")
    labelled = features.add_label(df)
    assert dict(labelled.dtypes)["label"] == "double"
    got = {r["id"]: r["label"] for r in labelled.collect()}
    assert labelled.count() == len(incomes)
    assert got == {0: 1.0, 1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0, 5: 0.0, 6: 0.0, 7: 0.0}


def test_unseen_and_null_categories_are_scored_not_dropped(spark, raw_df):
    from pyspark.ml import Pipeline, PipelineModel

    stages = features.build_feature_stages()
    assert type(stages[0]).__name__ == "SQLTransformer"
    assert type(stages[-1]).__name__ == "VectorAssembler"
    feature_model = Pipeline(stages=stages).fit(raw_df)
    classifier = estimators.make_estimator(
        {"name": "lr", "algorithm": "LogisticRegression", "params": {}}
    ).fit(feature_model.transform(raw_df))
    model = PipelineModel(stages=list(feature_model.stages) + [classifier])

    unseen = adult_rows(3, seed=99)
    unseen[0]["workclass"] = "Never-seen-workclass"
    unseen[0]["native_country"] = "Atlantis"
    for column in CATEGORICAL_FEATURES:  # all categoricals missing
        unseen[1][column] = None
    unseen[1]["age"] = None  # and a missing numeric
    unseen[2]["education"] = "  "  # blank -> "?"
    # Raw records only: no income/label column is needed at scoring time.
    raw = to_df(spark, unseen).drop("income")
    scored = model.transform(raw).select("prediction", "probability").collect()
    assert len(scored) == 3
    for row in scored:
        assert row["prediction"] in (0.0, 1.0)
        assert abs(sum(row["probability"]) - 1.0) < 1e-9


def test_export_refuses_a_pipeline_it_cannot_reproduce(spark, raw_df):
    from pyspark.ml import Pipeline, PipelineModel

    stages = features.build_feature_stages()
    stages[3].setDropLast(False)  # one-hot blocks one slot longer than the scorer expects
    feature_model = Pipeline(stages=stages).fit(raw_df)
    classifier = estimators.make_estimator(
        {"name": "lr", "algorithm": "LogisticRegression", "params": {}}
    ).fit(feature_model.transform(raw_df))
    with pytest.raises(ValueError, match=r"stage 3 .*dropLast=True.*build_feature_stages"):
        portable_export.export_portable(
            PipelineModel(stages=list(feature_model.stages) + [classifier]), "4.x"
        )
    with pytest.raises(ValueError, match="expected 5 feature stages and a classifier, got 1"):
        portable_export.export_portable(PipelineModel(stages=[classifier]), "4.x")


def test_evaluate_confusion_counts_and_ratios(spark):
    from pyspark.ml.linalg import Vectors

    # (label, prediction, score for class 1): tp=3, fp=1, tn=4, fn=2
    rows = [(1.0, 1.0, 0.9)] * 3 + [(0.0, 1.0, 0.7)] + [(0.0, 0.0, 0.1)] * 4 + [(1.0, 0.0, 0.4)] * 2
    df = spark.createDataFrame(
        [(label, pred, Vectors.dense([-s, s]), Vectors.dense([1 - s, s])) for label, pred, s in rows],
        ["label", "prediction", "rawPrediction", "probability"],
    )
    metrics = evaluation.evaluate(df)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3.0, 1.0, 4.0, 2.0)
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["precision"] == pytest.approx(3 / 4)
    assert metrics["recall"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 * 0.75 * 0.6 / (0.75 + 0.6))
    assert 0.0 <= metrics["areaUnderROC"] <= 1.0
    assert 0.0 <= metrics["areaUnderPR"] <= 1.0
    assert set(metrics) == set(evaluation.METRIC_NAMES)


def test_evaluate_undefined_precision_is_zero(spark):
    from pyspark.ml.linalg import Vectors

    rows = [(1.0, 0.0, 0.4), (0.0, 0.0, 0.2), (0.0, 0.0, 0.1)]  # never predicts positive
    df = spark.createDataFrame(
        [(label, pred, Vectors.dense([-s, s]), Vectors.dense([1 - s, s])) for label, pred, s in rows],
        ["label", "prediction", "rawPrediction", "probability"],
    )
    metrics = evaluation.evaluate(df)
    assert metrics["tp"] == 0.0 and metrics["fp"] == 0.0
    assert metrics["precision"] == 0.0
    assert metrics["recall"] == 0.0
    assert metrics["f1"] == 0.0
    assert metrics["accuracy"] == pytest.approx(2 / 3)


def test_auc_ranks_by_probability_not_by_tree_leaf_counts(spark):
    """A decision tree's rawPrediction holds leaf counts: a big mixed leaf must not outrank a small pure one."""
    from pyspark.ml.linalg import Vectors

    # Leaf A: 10 rows, 9 positive (p=0.9). Leaf B: 1000 rows, 300 positive (p=0.3).
    # Ranked by probability the positives of leaf A come first; by raw positive count leaf B would.
    leaf_a = [(1.0, Vectors.dense([1.0, 9.0]), Vectors.dense([0.1, 0.9]))] * 9
    leaf_a += [(0.0, Vectors.dense([1.0, 9.0]), Vectors.dense([0.1, 0.9]))]
    leaf_b = [(1.0, Vectors.dense([700.0, 300.0]), Vectors.dense([0.7, 0.3]))] * 3
    leaf_b += [(0.0, Vectors.dense([700.0, 300.0]), Vectors.dense([0.7, 0.3]))] * 7
    df = spark.createDataFrame(
        [(label, 1.0, raw, prob) for label, raw, prob in leaf_a + leaf_b],
        ["label", "prediction", "rawPrediction", "probability"],
    )
    # By probability: 9 of 12 positives outrank 7 of 8 negatives -> AUC = (9*7 + 0.5*(9*1 + 3*7))/(12*8).
    expected = (9 * 7 + 0.5 * (9 * 1 + 3 * 7)) / (12 * 8)
    assert evaluation.evaluate(df)["areaUnderROC"] == pytest.approx(expected)


@pytest.mark.usefixtures("spark")  # pyspark.ml estimators wrap JVM objects
def test_make_estimator_builds_configured_classifiers():
    lr = estimators.make_estimator(
        {"name": "lr_reg_0.01", "algorithm": "LogisticRegression", "params": {"regParam": 0.01, "maxIter": 7}}
    )
    assert type(lr).__name__ == "LogisticRegression"
    assert lr.getRegParam() == 0.01 and lr.getMaxIter() == 7
    assert lr.getFeaturesCol() == "features" and lr.getLabelCol() == "label"
    rf = estimators.make_estimator(
        {"name": "rf", "algorithm": "RandomForestClassifier", "params": {"numTrees": 5}}, seed=7
    )
    assert rf.getNumTrees() == 5 and rf.getSeed() == 7
    gbt = estimators.make_estimator({"name": "gbt", "algorithm": "GBTClassifier", "params": {"maxIter": 3}})
    assert gbt.getSeed() == 42


@pytest.mark.parametrize(
    ("candidate", "fragments"),
    [
        ({"name": "cand_a", "algorithm": "SVM", "params": {}}, ["cand_a", "SVM", "algorithm"]),
        (
            {"name": "cand_b", "algorithm": "LogisticRegression", "params": {"numTrees": 3}},
            ["cand_b", "numTrees"],
        ),
        (
            {"name": "cand_c", "algorithm": "DecisionTreeClassifier", "params": {"labelCol": "x"}},
            ["cand_c", "labelCol"],
        ),
        (
            {"name": "cand_d", "algorithm": "LogisticRegression", "params": {"maxIter": "lots"}},
            ["cand_d", "maxIter"],
        ),
    ],
)
@pytest.mark.usefixtures("spark")
def test_make_estimator_rejects_bad_candidates(candidate, fragments):
    with pytest.raises(ValueError) as excinfo:
        estimators.make_estimator(candidate)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


def test_parse_candidates_inline_and_from_file(tmp_path):
    candidates = [{"name": "a", "algorithm": "LogisticRegression", "params": {}}]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(candidates))
    assert estimators.parse_candidates(json.dumps(candidates)) == candidates
    assert estimators.parse_candidates(f"@{path}") == candidates
    with pytest.raises(ValueError, match="duplicate"):
        estimators.parse_candidates(json.dumps(candidates * 2))


def test_split_is_deterministic_and_loses_no_rows(raw_df):
    def ids(df):
        return sorted((r["fnlwgt"], r["age"]) for r in df.select("fnlwgt", "age").collect())

    train_a, val_a = features.split_train_validation(raw_df, 0.25, seed=3)
    train_b, val_b = features.split_train_validation(raw_df, 0.25, seed=3)
    assert train_a.count() + val_a.count() == raw_df.count() == 200
    assert ids(train_a) == ids(train_b) and ids(val_a) == ids(val_b)
    assert 20 <= val_a.count() <= 80
    _, val_other = features.split_train_validation(raw_df, 0.25, seed=4)
    assert ids(val_other) != ids(val_a)
    with pytest.raises(ValueError):
        features.split_train_validation(raw_df, 1.0, seed=3)


def test_redact_uri_hides_credentials():
    assert run.redact_uri("postgresql://user:secret@db:5432/mlflow") == "postgresql://***@db:5432/mlflow"
    assert run.redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


# --------------------------------------------------------------------------------------------------
# end to end: spark-submit, resume, champion, failure handling
# --------------------------------------------------------------------------------------------------

CANDIDATES = [
    {"name": "lr", "algorithm": "LogisticRegression", "params": {"regParam": 0.01, "maxIter": 20}},
    {"name": "dt", "algorithm": "DecisionTreeClassifier", "params": {"maxDepth": 3}},
]
EXPECTED_METRICS = (
    {f"val_{m}" for m in evaluation.METRIC_NAMES}
    | {f"test_{m}" for m in evaluation.METRIC_NAMES}
    | {"fit_seconds"}
)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """A sqlite tracking store with an experiment whose artifact root is a tmp dir."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("income", artifact_location=(root / "artifacts").as_uri())
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    yield uri, client, experiment_id
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def data_paths(tmp_path_factory):
    import pandas as pd

    root = tmp_path_factory.mktemp("data")
    train = pd.DataFrame(adult_rows(200, seed=11))
    test = pd.DataFrame(adult_rows(80, seed=12, test_suffix=True))
    test.loc[0, "workclass"] = "Never-seen"  # unseen category in the held-out data
    test.loc[1, "occupation"] = None
    test["hours_per_week"] = test["hours_per_week"].astype("float64")  # float instead of int64
    test.loc[2, "hours_per_week"] = float("nan")
    train.to_parquet(root / "train.parquet", index=False)
    test.to_parquet(root / "test.parquet", index=False)
    return root / "train.parquet", root / "test.parquet"


def job_args(tracking_uri: str, parent_run_id: str, data_paths, extra: list[str] | None = None) -> list[str]:
    train, test = data_paths
    return [
        "--train-path",
        str(train),
        "--test-path",
        str(test),
        "--candidates-json",
        json.dumps(CANDIDATES),
        "--tracking-uri",
        tracking_uri,
        "--parent-run-id",
        parent_run_id,
        "--validation-fraction",
        "0.25",
        "--seed",
        "5",
        *(extra or []),
    ]


def children_of(client: MlflowClient, experiment_id: str, parent_run_id: str):
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
        run_view_type=ViewType.ACTIVE_ONLY,
    )


def read_result(stdout: str) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("MLRELEASE_RESULT ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("MLRELEASE_RESULT ") :])


def test_end_to_end_submit_resume_and_champion(spark, tracking, data_paths, tmp_path, capsys):
    uri, client, experiment_id = tracking
    parent_id = client.create_run(experiment_id, run_name="release-1").info.run_id
    result_path = tmp_path / "result.json"

    # 1) the real entrypoint under spark-submit, in its own process
    venv_bin = Path(sys.executable).parent
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [
            str(venv_bin / "spark-submit"),
            "--master",
            "local[1]",
            "--conf",
            "spark.ui.enabled=false",
            str(JOB_PATH),
            *job_args(uri, parent_id, data_paths, ["--result-path", str(result_path)]),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = read_result(proc.stdout)
    assert json.loads(result_path.read_text()) == result
    assert result["parent_run_id"] == parent_id
    assert result["champion"] is None
    assert [c["candidate"] for c in result["children"]] == ["lr", "dt"]
    assert [c["reused"] for c in result["children"]] == [False, False]
    assert "reusing child run" not in proc.stderr

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["spark.master"] == "local[1]"
    assert parent.data.tags["spark.version"] == pyspark.__version__
    assert parent.data.tags["spark.application_id"] == result["application_id"]
    assert parent.data.tags["mlrelease.validation_fraction"] == "0.25"
    assert parent.data.tags["mlrelease.seed"] == "5"
    # the names the job writes are the shared constants the orchestrator reads
    assert parent.data.tags[tags.TAG_SPARK_APPLICATION_ID] == result["application_id"]
    assert parent.data.tags[tags.TAG_VALIDATION_FRACTION] == "0.25"
    assert parent.data.tags[tags.TAG_SEED] == "5"

    children = children_of(client, experiment_id, parent_id)
    assert len(children) == 2
    by_name = {child.data.tags["mlrelease.candidate"]: child for child in children}
    assert set(by_name) == {"lr", "dt"}
    for name, child in by_name.items():
        assert child.info.status == "FINISHED"
        assert child.info.run_name == name
        assert set(child.data.metrics) == EXPECTED_METRICS
        assert 0.5 < child.data.metrics["val_areaUnderROC"] <= 1.0
        confusion = sum(child.data.metrics[f"test_{k}"] for k in ("tp", "fp", "tn", "fn"))
        assert confusion == pytest.approx(80)  # every held-out row scored, incl. unseen/missing values
    assert by_name["lr"].data.params == {
        "algorithm": "LogisticRegression",
        "regParam": "0.01",
        "maxIter": "20",
    }
    assert by_name["dt"].data.tags["mlrelease.algorithm"] == "DecisionTreeClassifier"

    # every child run carries its JVM-free export and Spark's own predictions for the first held-out
    # records, and the NumPy scorer reproduces those predictions
    from mlrelease.serving.portable import PortableModel

    holdout_records = {}
    model_uris = {c["candidate"]: c["model_uri"] for c in result["children"]}
    for name, child in by_name.items():
        run_id = child.info.run_id
        child_tags = child.data.tags
        assert child_tags["mlrelease.portable_model_uri"] == f"runs:/{run_id}/portable/portable_model.json"
        assert (
            child_tags["mlrelease.holdout_predictions_uri"]
            == f"runs:/{run_id}/portable/holdout_predictions.json"
        )
        assert {a.path for a in client.list_artifacts(run_id, "portable")} == {
            "portable/portable_model.json",
            "portable/holdout_predictions.json",
        }
        assert child_tags[tags.TAG_PARENT_RUN_ID] == parent_id
        assert child_tags[tags.TAG_CANDIDATE] == name
        assert child_tags[tags.TAG_ALGORITHM] == child_tags["mlrelease.algorithm"]
        assert child_tags[tags.TAG_MODEL_URI] == model_uris[name]
        assert child_tags[tags.TAG_PORTABLE_MODEL_URI] == f"runs:/{run_id}/{tags.PORTABLE_MODEL_ARTIFACT}"
        assert (
            child_tags[tags.TAG_HOLDOUT_PREDICTIONS_URI]
            == f"runs:/{run_id}/{tags.HOLDOUT_PREDICTIONS_ARTIFACT}"
        )
        local = Path(client.download_artifacts(run_id, "portable", str(tmp_path / name)))
        portable = PortableModel.load(local / "portable_model.json")
        assert portable.algorithm == child_tags["mlrelease.algorithm"]
        assert portable.spark_version == pyspark.__version__
        holdout = json.loads((local / "holdout_predictions.json").read_text())
        assert holdout["format"] == "mlrelease.holdout_predictions.v1"
        records, predictions = holdout["records"], holdout["predictions"]
        # 80 held-out rows; the one with a NaN numeric is not a valid request and is skipped
        assert len(records) == len(predictions) == 79
        assert all(set(r) == {*NUMERIC_FEATURES, *CATEGORICAL_FEATURES} for r in records)
        assert records[0]["workclass"] == "Never-seen" and records[1]["occupation"] == "?"
        scored = portable.score(records)
        assert [s.label for s in scored] == [p["label"] for p in predictions]
        worst = max(abs(s.probability - p["probability"]) for s, p in zip(scored, predictions, strict=True))
        assert worst <= 1e-6, f"{name}: NumPy and Spark differ by {worst}"
        assert scored[0].unseen == ("workclass",)
        assert scored[1].unseen == ("occupation",)  # training never saw a missing occupation
        holdout_records[name] = records
    assert holdout_records["lr"] == holdout_records["dt"]  # the same rows for every candidate
    lr_uri = by_name["lr"].data.tags["mlrelease.model_uri"]
    assert {c["model_uri"] for c in result["children"]} == {
        child.data.tags["mlrelease.model_uri"] for child in children
    }

    # the model logged by the other process loads here and scores raw records (no income column)
    mlflow.set_tracking_uri(uri)
    model = mlflow.spark.load_model(lr_uri)
    raw = to_df(spark, adult_rows(5, seed=123)).drop("income")
    assert model.transform(raw).select("prediction").count() == 5
    # and through pyfunc from pandas, with int64 or float numerics and missing / unseen categories
    import pandas as pd

    pdf = pd.DataFrame(adult_rows(4, seed=321)).drop(columns=["income"])
    pdf.loc[0, "workclass"] = None
    pdf.loc[1, "native_country"] = "Atlantis"
    pyfunc_model = mlflow.pyfunc.load_model(lr_uri)
    assert len(pyfunc_model.predict(pdf)) == 4
    pdf["age"] = pdf["age"].astype("float64")
    pdf.loc[2, "age"] = float("nan")
    predictions = pd.Series(pyfunc_model.predict(pdf)).tolist()
    assert len(predictions) == 4 and set(predictions) <= {0.0, 1.0}, predictions

    # 2) retry under the same parent (in-process): both candidates reused, a stray unfinished child
    # of "lr" (e.g. from a crashed attempt) is soft-deleted, nothing is refitted
    stray = client.create_run(
        experiment_id,
        run_name="lr",
        tags={"mlflow.parentRunId": parent_id, "mlrelease.candidate": "lr"},
    )
    client.set_terminated(stray.info.run_id, status="FAILED")
    assert run.main(job_args(uri, parent_id, data_paths)) == 0
    retry = read_result(capsys.readouterr().out)
    assert [c["reused"] for c in retry["children"]] == [True, True]
    assert {c["run_id"] for c in retry["children"]} == {child.info.run_id for child in children}
    assert client.get_run(stray.info.run_id).info.lifecycle_stage == "deleted"
    assert {child.info.run_id for child in children_of(client, experiment_id, parent_id)} == {
        child.info.run_id for child in children
    }
    assert client.get_run(parent_id).info.status == "FINISHED"

    # 3) a new release with the first model as champion: champion metrics land on the parent
    parent2_id = client.create_run(experiment_id, run_name="release-2").info.run_id
    champion_args = ["--champion-model-uri", lr_uri, "--champion-version", "1"]
    assert run.main(job_args(uri, parent2_id, data_paths, champion_args)) == 0
    third = read_result(capsys.readouterr().out)
    parent2 = client.get_run(parent2_id)
    assert parent2.info.status == "FINISHED"
    assert {f"champion_test_{m}" for m in evaluation.METRIC_NAMES} <= set(parent2.data.metrics)
    assert parent2.data.metrics["champion_test_areaUnderROC"] == pytest.approx(
        by_name["lr"].data.metrics["test_areaUnderROC"]
    )
    assert parent2.data.tags["mlrelease.champion.model_uri"] == lr_uri
    assert parent2.data.tags["mlrelease.champion.version"] == "1"
    assert parent2.data.tags[tags.TAG_CHAMPION_MODEL_URI] == lr_uri
    assert parent2.data.tags[tags.TAG_CHAMPION_VERSION] == "1"
    assert third["champion"]["version"] == "1"
    assert third["champion"]["metrics"]["areaUnderROC"] == pytest.approx(
        parent2.data.metrics["champion_test_areaUnderROC"]
    )
    assert [c["reused"] for c in third["children"]] == [False, False]
    assert len(children_of(client, experiment_id, parent2_id)) == 2


def test_bad_candidate_fails_parent_run(spark, tracking, data_paths):
    uri, client, experiment_id = tracking
    parent_id = client.create_run(experiment_id, run_name="bad-candidate").info.run_id
    args = job_args(uri, parent_id, data_paths)
    args[args.index("--candidates-json") + 1] = json.dumps(
        [{"name": "oops", "algorithm": "LogisticRegression", "params": {"noSuchParam": 1}}]
    )
    with pytest.raises(ValueError, match="oops.*noSuchParam"):
        run.main(args)
    assert client.get_run(parent_id).info.status == "FAILED"
    assert mlflow.active_run() is None
    assert children_of(client, experiment_id, parent_id) == []


def test_broken_champion_fails_with_hint_about_prod_alias(spark, tracking, data_paths):
    uri, client, experiment_id = tracking
    parent_id = client.create_run(experiment_id, run_name="bad-champion").info.run_id
    bogus = "runs:/0123456789abcdef0123456789abcdef/model"
    args = job_args(uri, parent_id, data_paths, ["--champion-model-uri", bogus, "--champion-version", "7"])
    with pytest.raises(RuntimeError) as excinfo:
        run.main(args)
    message = str(excinfo.value)
    assert bogus in message and "'7'" in message and "prod" in message
    assert client.get_run(parent_id).info.status == "FAILED"
    assert children_of(client, experiment_id, parent_id) == []
