"""Parity: the NumPy scorer must reproduce Spark on every row of adult.test, for every algorithm family.

Why this test exists: serving without a JVM is only acceptable if nobody can tell the difference. Each
family is fitted on the real adult.data through the job's own functions in ``mlrelease.training``
(``prepare_features``, ``make_estimator``, the ``PipelineModel`` that ``fit_candidate`` logs), exported
with ``export_portable``
and scored both ways on all 16,281 raw rows of adult.test (plus a few rows that exercise the cleaning
rules). Labels must be identical and P(>50K) within 1e-6.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

pytest.importorskip("pyspark")

from pyspark.ml import PipelineModel  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from mlrelease.domain.candidates import CANDIDATES  # noqa: E402
from mlrelease.domain.schema import (  # noqa: E402
    CATEGORICAL_FEATURES,
    NEGATIVE_LABEL,
    NUMERIC_FEATURES,
    POSITIVE_LABEL,
)
from mlrelease.serving.portable import PortableModel  # noqa: E402
from mlrelease.training.estimators import make_estimator  # noqa: E402
from mlrelease.training.features import add_label, prepare_features  # noqa: E402
from mlrelease.training.portable_export import export_portable  # noqa: E402

pytestmark = [pytest.mark.spark, pytest.mark.network]

TOLERANCE = 1e-6
FAMILIES = ["lr_reg_0.01", "dt_depth_1", "dt_depth_5", "rf_100_depth_8", "gbt_50_depth_5"]
ROW = "__row"


FEATURES = [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES]


SPARK_CORES = 2  # the spark fixture (tests/jobs/conftest.py) reads these
SPARK_PARTITIONS = 4


@pytest.fixture(scope="module")
def adult(session_home: Path):
    """The hash-pinned Adult data as Parquet (downloaded once per test session into its MLRELEASE_HOME)."""
    from mlrelease.data.prepare import prepare_dataset

    return prepare_dataset(session_home / "data")


@pytest.fixture(scope="module")
def fitted(spark, adult):
    """The job's feature stages fitted once on all of adult.data, and the cached training features."""
    train_raw = add_label(spark.read.parquet(str(adult.train_path)))
    test_raw = add_label(spark.read.parquet(str(adult.holdout_path)))
    feature_model, frames = prepare_features(train_raw, test_raw.limit(1), test_raw.limit(1))
    yield feature_model, frames[0]
    for frame in frames:
        frame.unpersist()


@pytest.fixture(scope="module")
def test_rows(spark, adult):
    """adult.test's raw rows with a row index, and the same rows as request records."""
    frame = (
        spark.read.parquet(str(adult.holdout_path)).withColumn(ROW, F.monotonically_increasing_id()).cache()
    )
    rows = frame.select(ROW, *FEATURES).orderBy(ROW).collect()
    assert len(rows) == 16_281
    return frame, [{c: row[c] for c in FEATURES} for row in rows]


@pytest.fixture(scope="module")
def edge_rows(spark):
    """Rows for every cleaning rule: unseen, null, empty and padded categoricals, null/NaN numerics."""
    base = {
        "age": 52.0,
        "workclass": "Self-emp-inc",
        "fnlwgt": 287927.0,
        "education": "HS-grad",
        "education_num": 9.0,
        "marital_status": "Married-civ-spouse",
        "occupation": "Exec-managerial",
        "relationship": "Wife",
        "race": "White",
        "sex": "Female",
        "capital_gain": 15024.0,
        "capital_loss": 0.0,
        "hours_per_week": 40.0,
        "native_country": "United-States",
    }
    variants: list[dict[str, Any]] = [
        {},
        {"workclass": "Atlantis-gov", "native_country": "Atlantis"},
        {"workclass": None, "occupation": "", "native_country": "   "},
        {"education": None, "race": "  White  ", "sex": " Female"},
        {"education": "\tHS-grad"},  # Spark's TRIM strips spaces only: a tab makes it unseen
        {"age": None, "capital_gain": float("nan"), "hours_per_week": None},
        {c: None for c in FEATURES},
        {"relationship": "?", "marital_status": "?"},
        {"capital_gain": 0.0, "age": 17.0, "education_num": 16.0},
    ]
    records = [{**base, **variant} for variant in variants]
    schema = ", ".join(f"`{c}` double" for c in NUMERIC_FEATURES) + ", "
    schema += ", ".join(f"`{c}` string" for c in CATEGORICAL_FEATURES) + f", `{ROW}` long"
    frame = spark.createDataFrame([(*(r[c] for c in FEATURES), i) for i, r in enumerate(records)], schema)
    return frame, records


def spark_scores(model: PipelineModel, frame) -> tuple[list[float], list[str]]:
    rows = model.transform(frame).select(ROW, "probability", "prediction").orderBy(ROW).collect()
    probabilities = [float(row["probability"][1]) for row in rows]
    labels = [POSITIVE_LABEL if row["prediction"] == 1.0 else NEGATIVE_LABEL for row in rows]
    return probabilities, labels


def assert_parity(name: str, spark_result, scored) -> float:
    spark_probabilities, spark_labels = spark_result
    assert len(scored) == len(spark_labels)
    mismatched = [i for i, (s, p) in enumerate(zip(scored, spark_labels, strict=True)) if s.label != p]
    worst = max(abs(s.probability - p) for s, p in zip(scored, spark_probabilities, strict=True))
    assert not mismatched, f"{name}: {len(mismatched)} label mismatches, first rows {mismatched[:5]}"
    assert worst <= TOLERANCE, f"{name}: max |p_spark - p_numpy| = {worst:.3g} > {TOLERANCE}"
    return worst


@pytest.mark.parametrize("name", FAMILIES)
def test_numpy_scorer_matches_spark_on_all_of_adult_test(name, spark, fitted, test_rows, edge_rows, tmp_path):
    feature_model, train_features = fitted
    candidate = CANDIDATES[name].to_dict()
    classifier = make_estimator(candidate, seed=42).fit(train_features)
    model = PipelineModel(stages=list(feature_model.stages) + [classifier])  # as fit_candidate builds it

    started = time.perf_counter()
    document = export_portable(model, spark.version)
    export_seconds = time.perf_counter() - started
    path = tmp_path / "portable_model.json"
    path.write_text(json.dumps(document, separators=(",", ":"), allow_nan=False))
    portable = PortableModel.load(path)
    assert portable.algorithm == candidate["algorithm"]
    assert portable.spark_version == spark.version

    frame, records = test_rows
    started = time.perf_counter()
    scored = portable.score(records)
    numpy_seconds = time.perf_counter() - started
    worst = assert_parity(name, spark_scores(model, frame), scored)
    edge_frame, edge_records = edge_rows
    edge_scored = portable.score(edge_records)
    edge_worst = assert_parity(f"{name} (edge rows)", spark_scores(model, edge_frame), edge_scored)
    assert edge_scored[1].unseen == ("workclass", "native_country")
    assert edge_scored[3].unseen == ("education",)  # None -> "?", never seen in education
    assert edge_scored[4].unseen == ("education",)
    assert edge_scored[7].unseen == ("marital_status", "relationship")  # '?' never seen in these columns
    assert edge_scored[2].unseen == ()  # '?' is a training label of workclass/occupation/native_country

    trees = document["model"].get("trees") or [document["model"].get("tree")]
    nodes = sum(len(tree["feature"]) for tree in trees if tree)
    size = f"{len(path.read_bytes()) / 1e6:.2f} MB" + (f", {nodes} tree nodes" if nodes else "")
    # Speed is measured in benchmarks/bench_scoring.py, not asserted here.
    print(
        f"\n{name}: {len(records)} rows, 0 label mismatches, max |p_spark - p_numpy| = {worst:.3g} "
        f"(edge rows {edge_worst:.3g}); export {export_seconds:.2f}s ({size}); "
        f"NumPy scoring {numpy_seconds * 1e3:.0f} ms for all rows"
    )


@pytest.mark.parametrize("name", ["dt_depth_5", "gbt_50_depth_5"])
def test_bulk_tree_export_equals_the_node_by_node_walk(name, fitted):
    """The fast JVM-side export (internal NodeData + json4s) must agree with the public Node API walk."""
    feature_model, train_features = fitted
    candidate = {**CANDIDATES[name].to_dict()}
    if name.startswith("gbt"):
        candidate["params"] = {**candidate["params"], "maxIter": 5}  # a few trees are enough here
    classifier = make_estimator(candidate, seed=42).fit(train_features)
    model = PipelineModel(stages=list(feature_model.stages) + [classifier])
    bulk = export_portable(model, "x", tree_method="json4s")
    walked = export_portable(model, "x", tree_method="py4j")
    assert bulk == walked
