"""Train candidate classifiers for the UCI Adult income task and log each as an MLflow child run.

This file is a self-contained Spark entrypoint. It deliberately imports neither Airflow nor the
``mlrelease`` package: it is shipped as a single file and run as-is, both by a local ``spark-submit``
and as a Databricks ``spark_python_task``, where neither of those is installed on the cluster. All it
needs is PySpark, MLflow and the standard library. The orchestrator talks to it only through the CLI
below, the MLflow tracking server (an existing parent run it logs under) and one ``MLRELEASE_RESULT``
line printed to stdout (optionally also written to ``--result-path``).

Usage::

    spark-submit jobs/train_income.py \\
        --train-path /data/adult_train.parquet --test-path /data/adult_test.parquet \\
        --candidates-json '[{"name": "lr_reg_0.01", "algorithm": "LogisticRegression",
                             "params": {"regParam": 0.01, "maxIter": 100}}]' \\
        --tracking-uri sqlite:////abs/path/mlflow.db --parent-run-id <run id> \\
        [--validation-fraction 0.2] [--seed 42] \\
        [--champion-model-uri models:/income@prod --champion-version 3] \\
        [--result-path /tmp/result.json] [--master local[2]]

Design:

* The feature pipeline (SQL clean-up, imputation, string indexing, one-hot encoding, assembly) is
  fitted once, on the training split only. The transformed train / validation / test frames are cached
  and shared by all candidates, which are fitted one after the other inside this one Spark application.
* Every saved model is ``PipelineModel(fitted_feature_stages + [fitted_classifier])`` so it scores RAW
  records (no label column needed); an unseen or missing category never drops or fails a row.
* Retries are idempotent: a candidate whose child run already FINISHED under the parent is reused, any
  other child run of that candidate (RUNNING after a crash, FAILED, KILLED) is soft-deleted and refitted.
* Every child run also gets a JVM-free copy of its model, ``portable/portable_model.json`` (see
  :func:`export_portable`; scored by ``mlrelease.serving.portable``), and
  ``portable/holdout_predictions.json``: the first held-out records with Spark's own predictions for
  them, so a deployed endpoint can be checked against what Spark computed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import mlflow
import mlflow.spark
import pyspark
from mlflow.entities import Run, RunStatus, ViewType
from mlflow.tracking import MlflowClient
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.base import Estimator
from pyspark.ml.classification import (
    DecisionTreeClassificationModel,
    DecisionTreeClassifier,
    GBTClassificationModel,
    GBTClassifier,
    LogisticRegression,
    LogisticRegressionModel,
    RandomForestClassificationModel,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import (
    Imputer,
    ImputerModel,
    OneHotEncoder,
    OneHotEncoderModel,
    SQLTransformer,
    StringIndexer,
    StringIndexerModel,
    VectorAssembler,
)
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import DoubleType, IntegerType, StringType, StructField, StructType

logger = logging.getLogger("mlrelease.jobs.train_income")

CATEGORICAL_COLUMNS: list[str] = [
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
]
NUMERIC_COLUMNS: list[str] = [
    "age",
    "fnlwgt",
    "education_num",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
]
LABEL_COLUMN = "income"
POSITIVE_LABEL = ">50K"
NEGATIVE_LABEL = "<=50K"
MISSING_CATEGORY = "?"  # the Adult dataset's own missing-value marker

FEATURES_COL = "features"
TARGET_COL = "label"
RESULT_PREFIX = "MLRELEASE_RESULT "

# Intermediate feature column names (suffixes keep the raw input columns untouched, so the fitted
# model can score frames that carry extra columns such as the label).
_NUM_SUFFIX = "__num"
_IMPUTED_SUFFIX = "__imp"
_CAT_SUFFIX = "__cat"
_IDX_SUFFIX = "__idx"
_OHE_SUFFIX = "__ohe"

ALGORITHMS: dict[str, type[Estimator]] = {
    "LogisticRegression": LogisticRegression,
    "DecisionTreeClassifier": DecisionTreeClassifier,
    "RandomForestClassifier": RandomForestClassifier,
    "GBTClassifier": GBTClassifier,
}
# Column wiring is owned by this job; a candidate may not redirect it.
RESERVED_PARAMS = frozenset(
    {"featuresCol", "labelCol", "predictionCol", "probabilityCol", "rawPredictionCol", "weightCol"}
)

METRIC_NAMES: tuple[str, ...] = (
    "areaUnderROC",
    "areaUnderPR",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "tp",
    "fp",
    "tn",
    "fn",
)

# MLflow tag names shared with the orchestrator.
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
TAG_CANDIDATE = "mlrelease.candidate"
TAG_ALGORITHM = "mlrelease.algorithm"
TAG_MODEL_URI = "mlrelease.model_uri"
TAG_VALIDATION_FRACTION = "mlrelease.validation_fraction"
TAG_SEED = "mlrelease.seed"
TAG_CHAMPION_MODEL_URI = "mlrelease.champion.model_uri"
TAG_CHAMPION_VERSION = "mlrelease.champion.version"
MODEL_ARTIFACT_NAME = "model"
TAG_PORTABLE_MODEL_URI = "mlrelease.portable_model_uri"
TAG_HOLDOUT_PREDICTIONS_URI = "mlrelease.holdout_predictions_uri"

# The JVM-free export (read by mlrelease.serving.portable, which documents the format in full).
PORTABLE_FORMAT = "mlrelease.portable.v1"
HOLDOUT_PREDICTIONS_FORMAT = "mlrelease.holdout_predictions.v1"
PORTABLE_ARTIFACT_DIR = "portable"
PORTABLE_MODEL_FILE = "portable_model.json"
HOLDOUT_PREDICTIONS_FILE = "holdout_predictions.json"
HOLDOUT_SAMPLE_ROWS = 1000
# OneHotEncoder(handleInvalid="keep", dropLast=True) after StringIndexer(handleInvalid="keep") gives each
# categorical a block of len(labels) + 1 slots: the indexer's metadata already counts the unseen bucket
# as a category, so dropLast drops nothing real and an unseen value sets the block's last slot.
UNSEEN_ENCODING = "extra_slot"
_HOLDOUT_INDEX = "__holdout_index"


# --------------------------------------------------------------------------------------------------
# Pure DataFrame functions
# --------------------------------------------------------------------------------------------------


def add_label(df: DataFrame) -> DataFrame:
    """Add a double ``label`` column: 1.0 for ``>50K`` (also ``" >50K."`` as in adult.test), else 0.0.

    A null or unknown income maps to 0.0; rows are never dropped.
    """
    normalized = F.regexp_replace(F.trim(F.col(LABEL_COLUMN).cast("string")), r"\.$", "")
    return df.withColumn(
        TARGET_COL, F.when(normalized == F.lit(POSITIVE_LABEL), F.lit(1.0)).otherwise(F.lit(0.0))
    )


def _clean_sql() -> str:
    numeric = [f"TRY_CAST(`{c}` AS DOUBLE) AS `{c}{_NUM_SUFFIX}`" for c in NUMERIC_COLUMNS]
    categorical = [
        f"COALESCE(NULLIF(TRIM(CAST(`{c}` AS STRING)), ''), '{MISSING_CATEGORY}') AS `{c}{_CAT_SUFFIX}`"
        for c in CATEGORICAL_COLUMNS
    ]
    return "SELECT *, " + ", ".join(numeric + categorical) + " FROM __THIS__"


def build_feature_stages() -> list[Any]:
    """Return the unfitted stages that turn raw Adult records into a ``features`` vector.

    1. SQLTransformer: numerics -> double (unparsable -> null); categoricals trimmed, null/empty -> "?".
    2. Imputer (median, fitted on training data): a null/NaN numeric never fails the assembler.
    3. StringIndexer over all categoricals, handleInvalid="keep": unseen categories get the extra index.
    4. OneHotEncoder, handleInvalid="keep".
    5. VectorAssembler over the one-hot categoricals + the 6 numerics.
    """
    num_cols = [f"{c}{_NUM_SUFFIX}" for c in NUMERIC_COLUMNS]
    imputed_cols = [f"{c}{_IMPUTED_SUFFIX}" for c in NUMERIC_COLUMNS]
    cat_cols = [f"{c}{_CAT_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    idx_cols = [f"{c}{_IDX_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    ohe_cols = [f"{c}{_OHE_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    return [
        SQLTransformer(statement=_clean_sql()),
        Imputer(inputCols=num_cols, outputCols=imputed_cols, strategy="median"),
        StringIndexer(
            inputCols=cat_cols, outputCols=idx_cols, handleInvalid="keep", stringOrderType="frequencyDesc"
        ),
        OneHotEncoder(inputCols=idx_cols, outputCols=ohe_cols, handleInvalid="keep"),
        VectorAssembler(inputCols=ohe_cols + imputed_cols, outputCol=FEATURES_COL, handleInvalid="keep"),
    ]


def make_estimator(candidate: dict[str, Any], seed: int = 42) -> Estimator:
    """Build the pyspark.ml classifier described by ``candidate`` ({"name", "algorithm", "params"}).

    Raises ValueError naming the candidate and the offending field for an unknown algorithm, an unknown
    or reserved param, or a value the estimator rejects.
    """
    name = candidate.get("name") if isinstance(candidate, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"candidate {candidate!r}: field 'name' must be a non-empty string")
    algorithm = candidate.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"candidate {name!r}: unknown algorithm {algorithm!r} (field 'algorithm'); "
            f"expected one of {sorted(ALGORITHMS)}"
        )
    params = candidate.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"candidate {name!r}: field 'params' must be a JSON object, got {params!r}")
    unknown_fields = set(candidate) - {"name", "algorithm", "params"}
    if unknown_fields:
        raise ValueError(f"candidate {name!r}: unknown field(s) {sorted(unknown_fields)}")

    estimator = ALGORITHMS[algorithm](featuresCol=FEATURES_COL, labelCol=TARGET_COL)
    if estimator.hasParam("seed"):
        estimator._set(seed=seed)
    for param, value in params.items():
        if param in RESERVED_PARAMS:
            raise ValueError(f"candidate {name!r}: param {param!r} is reserved (set by the job)")
        if not estimator.hasParam(param):
            raise ValueError(
                f"candidate {name!r}: unknown param {param!r} for {algorithm}; "
                f"valid params: {sorted(p.name for p in estimator.params if p.name not in RESERVED_PARAMS)}"
            )
        try:
            estimator._set(**{param: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"candidate {name!r}: invalid value {value!r} for param {param!r} of {algorithm}: {exc}"
            ) from exc
    return estimator


def split_train_validation(df: DataFrame, fraction: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """Deterministic random split into (train, validation); ``fraction`` goes to validation.

    Deterministic for the same input (same partitioning) and seed; cache ``df`` first if it is
    expensive to recompute, so both halves see the same rows.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    train_df, validation_df = df.randomSplit([1.0 - fraction, fraction], seed=seed)
    return train_df, validation_df


def prepare_features(
    train_raw: DataFrame, validation_raw: DataFrame, test_raw: DataFrame
) -> tuple[PipelineModel, list[DataFrame]]:
    """Fit the feature stages on the training split only; return them and the three cached feature frames.

    Done once per application and shared by every candidate (the caller unpersists the frames).
    """
    feature_model = Pipeline(stages=build_feature_stages()).fit(train_raw)
    cols = [FEATURES_COL, TARGET_COL]
    frames = [feature_model.transform(f).select(*cols).cache() for f in (train_raw, validation_raw, test_raw)]
    return feature_model, frames


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def evaluate(predictions_df: DataFrame) -> dict[str, float]:
    """Binary metrics for a frame with ``label``, ``prediction``, ``rawPrediction`` (and ``probability``).

    areaUnderROC / areaUnderPR come from BinaryClassificationEvaluator on ``probability`` when present:
    a decision tree's ``rawPrediction`` holds leaf *counts*, which rank leaves by size rather than by their
    positive share and understate its AUC badly (0.58 instead of 0.85 on Adult). The confusion
    counts come from one aggregation. Undefined ratios (e.g. precision with no positive prediction) are 0.0.
    """
    label = F.col(TARGET_COL).cast("double")
    prediction = F.col("prediction").cast("double")

    def count_where(condition: Any) -> Any:
        return F.coalesce(F.sum(F.when(condition, 1).otherwise(0)), F.lit(0)).cast("long")

    row = predictions_df.agg(
        count_where((label == 1.0) & (prediction == 1.0)).alias("tp"),
        count_where((label != 1.0) & (prediction == 1.0)).alias("fp"),
        count_where((label != 1.0) & (prediction != 1.0)).alias("tn"),
        count_where((label == 1.0) & (prediction != 1.0)).alias("fn"),
    ).first()
    tp, fp, tn, fn = (float(row[k]) for k in ("tp", "fp", "tn", "fn"))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    metrics: dict[str, float] = {}
    score_column = "probability" if "probability" in predictions_df.columns else "rawPrediction"
    for metric_name in ("areaUnderROC", "areaUnderPR"):
        evaluator = BinaryClassificationEvaluator(
            rawPredictionCol=score_column, labelCol=TARGET_COL, metricName=metric_name
        )
        metrics[metric_name] = float(evaluator.evaluate(predictions_df))
    metrics.update(
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        accuracy=_ratio(tp + tn, tp + fp + tn + fn),
        precision=precision,
        recall=recall,
        f1=_ratio(2.0 * precision * recall, precision + recall),
    )
    return metrics


# --------------------------------------------------------------------------------------------------
# Portable (JVM-free) export
# --------------------------------------------------------------------------------------------------


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(
            f"cannot export this PipelineModel to {PORTABLE_FORMAT}: {what}. The export only supports "
            "the feature stages built by build_feature_stages() followed by one binary classifier; "
            "keep the two in step (and mlrelease.serving.portable with them)."
        )


def _check_feature_stages(stages: Sequence[Any]) -> None:
    """Refuse a pipeline whose feature stages differ from the ones the portable scorer reimplements."""
    _require(len(stages) == 6, f"expected 5 feature stages and a classifier, got {len(stages)} stages")
    sql, imputer, indexer, encoder, assembler, _ = stages
    num_cols = [f"{c}{_NUM_SUFFIX}" for c in NUMERIC_COLUMNS]
    imputed_cols = [f"{c}{_IMPUTED_SUFFIX}" for c in NUMERIC_COLUMNS]
    cat_cols = [f"{c}{_CAT_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    idx_cols = [f"{c}{_IDX_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    ohe_cols = [f"{c}{_OHE_SUFFIX}" for c in CATEGORICAL_COLUMNS]
    _require(
        isinstance(sql, SQLTransformer) and sql.getStatement() == _clean_sql(),
        "stage 0 is not the job's SQLTransformer clean-up statement",
    )
    _require(
        isinstance(imputer, ImputerModel)
        and imputer.getInputCols() == num_cols
        and imputer.getOutputCols() == imputed_cols
        and math.isnan(imputer.getMissingValue()),
        "stage 1 is not an ImputerModel over the numeric columns with missingValue=NaN",
    )
    _require(
        isinstance(indexer, StringIndexerModel)
        and indexer.getInputCols() == cat_cols
        and indexer.getOutputCols() == idx_cols
        and indexer.getHandleInvalid() == "keep",
        "stage 2 is not a multi-column StringIndexerModel over the categoricals with handleInvalid='keep'",
    )
    labels = indexer.labelsArray
    _require(
        isinstance(encoder, OneHotEncoderModel)
        and encoder.getInputCols() == idx_cols
        and encoder.getOutputCols() == ohe_cols
        and encoder.getDropLast()
        and encoder.getHandleInvalid() == "keep",
        "stage 3 is not a OneHotEncoderModel with dropLast=True and handleInvalid='keep'",
    )
    _require(
        list(encoder.categorySizes) == [len(block) + 1 for block in labels],
        f"OneHotEncoder category sizes {list(encoder.categorySizes)} are not len(labels) + 1 "
        f"({[len(block) + 1 for block in labels]}), so the unseen bucket is not the block's last slot",
    )
    _require(
        isinstance(assembler, VectorAssembler)
        and assembler.getInputCols() == ohe_cols + imputed_cols
        and assembler.getOutputCol() == FEATURES_COL,
        "stage 4 is not a VectorAssembler over the one-hot blocks then the imputed numerics",
    )


def _tree_nodes_json4s(jvm: Any, java_trees: Sequence[Any]) -> list[list[dict[str, Any]]]:
    node_data = getattr(jvm.org.apache.spark.ml.tree, "DecisionTreeModelReadWrite$NodeData$").__getattr__(
        "MODULE$"
    )
    formats = getattr(jvm.org.json4s, "DefaultFormats$").__getattr__("MODULE$")
    batch = jvm.java.util.ArrayList()
    for tree in java_trees:
        batch.add(node_data.build(tree.rootNode(), 0)._1())
    return json.loads(jvm.org.json4s.jackson.Serialization.write(batch, formats))


def _tree_nodes_py4j(java_tree: Any) -> list[dict[str, Any]]:
    """One tree as NodeData-shaped dicts (pre-order ids), walking the public Node API node by node."""
    nodes: list[dict[str, Any]] = []

    def visit(node: Any) -> int:
        node_id = len(nodes)
        record: dict[str, Any] = {
            "id": node_id,
            "leftChild": -1,
            "rightChild": -1,
            "split": {"featureIndex": -1, "leftCategoriesOrThreshold": [], "numCategories": -1},
        }
        nodes.append(record)
        if node.getClass().getSimpleName() == "LeafNode":  # only leaves' values are exported
            record["prediction"] = node.prediction()
            record["impurityStats"] = list(node.impurityStats().stats())
        else:
            split = node.split()
            if split.getClass().getSimpleName() == "ContinuousSplit":
                record["split"] = {
                    "featureIndex": split.featureIndex(),
                    "leftCategoriesOrThreshold": [split.threshold()],
                    "numCategories": -1,
                }
            else:
                record["split"] = {
                    "featureIndex": split.featureIndex(),
                    "leftCategoriesOrThreshold": list(split.leftCategories()),
                    "numCategories": split.numCategories(),
                }
            record["leftChild"] = visit(node.leftChild())
            record["rightChild"] = visit(node.rightChild())
        return node_id

    visit(java_tree.rootNode())
    return nodes


def extract_tree_nodes(java_trees: Sequence[Any], method: str = "auto") -> list[list[dict[str, Any]]]:
    """Each tree's nodes as Spark persists them (``DecisionTreeModelReadWrite.NodeData``, pre-order ids).

    Why not simply walk the nodes over py4j: that takes several round trips per node, measured at 15 s
    for rf_100_depth_8 (14,920 nodes) and 2 s for gbt_50_depth_5 on a 2-core machine, and a remote driver
    only adds latency. Saving the model and reading its ``data/`` Parquet back would need a path that
    the driver and every executor share, which the job cannot assume. So by default ("auto") the driver
    JVM builds NodeData for each tree (the structure Spark's own model writer uses) and json4s, which
    Spark ships, serialises all trees in ONE call: about 0.2 s for rf_100_depth_8 (0.8 s for its whole
    export), on any cluster manager, because nothing leaves the driver. (One json4s call per tree
    costs ~45 ms each, hence the single batch.) NodeData is internal API, so if that call fails on
    some other Spark build the public node-by-node walk ("py4j") is used instead, slowly but correctly.
    Neither works under Spark Connect, which has no JVM gateway on the client.
    """
    from pyspark import SparkContext

    if method not in ("auto", "json4s", "py4j"):
        raise ValueError(f"unknown tree extraction method {method!r}; use 'auto', 'json4s' or 'py4j'")
    jvm = SparkContext._jvm
    if jvm is None:
        raise RuntimeError(
            "exporting tree models needs the driver's JVM (py4j) and there is none: Spark Connect "
            "sessions are not supported; run the job on a classic Spark driver "
            "(spark-submit, a Databricks task)"
        )
    if method in ("auto", "json4s"):
        try:
            return _tree_nodes_json4s(jvm, java_trees)
        except Exception as exc:
            if method == "json4s":
                raise
            logger.warning("bulk tree export failed (%s); walking the trees node by node instead", exc)
    return [_tree_nodes_py4j(tree) for tree in java_trees]


def _tree_document(nodes: list[dict[str, Any]], classification: bool) -> dict[str, Any]:
    """Columnar tree: node i splits on ``feature[i]`` (-1 for a leaf), children ``left[i]``/``right[i]``."""
    ordered = sorted(nodes, key=lambda node: node["id"])
    if [node["id"] for node in ordered] != list(range(len(ordered))):
        raise ValueError("tree export: node ids are not 0..n-1; the tree data is inconsistent")
    tree: dict[str, list[Any]] = {
        "feature": [],
        "threshold": [],
        "left_categories": [],
        "left": [],
        "right": [],
        "value": [],
    }
    for node in ordered:
        split = node["split"]
        if node["leftChild"] < 0:
            tree["feature"].append(-1)
            tree["threshold"].append(None)
            tree["left_categories"].append(None)
            tree["left"].append(-1)
            tree["right"].append(-1)
            stats = [float(v) for v in node["impurityStats"]]
            if classification and len(stats) != 2:
                raise ValueError(f"tree export: leaf {node['id']} has {len(stats)} class counts, expected 2")
            tree["value"].append(stats if classification else float(node["prediction"]))
            continue
        values = split["leftCategoriesOrThreshold"]
        tree["feature"].append(int(split["featureIndex"]))
        if split["numCategories"] < 0:  # ContinuousSplit: x <= threshold goes left
            tree["threshold"].append(float(values[0]))
            tree["left_categories"].append(None)
        else:  # CategoricalSplit: x in left_categories goes left
            tree["threshold"].append(None)
            tree["left_categories"].append(sorted(int(v) for v in values))
        tree["left"].append(int(node["leftChild"]))
        tree["right"].append(int(node["rightChild"]))
        tree["value"].append(None)
    return tree


def _classifier_document(classifier: Any, tree_method: str = "auto") -> tuple[str, dict[str, Any]]:
    _require(classifier.numClasses == 2, f"{type(classifier).__name__} has {classifier.numClasses} classes")
    if isinstance(classifier, LogisticRegressionModel):
        matrix = classifier.coefficientMatrix
        _require(matrix.numRows == 1, "the LogisticRegression model is multinomial (use family='binomial')")
        return "LogisticRegression", {
            "coefficients": [float(v) for v in classifier.coefficients.toArray()],
            "intercept": float(classifier.intercept),
            "threshold": float(classifier.getThreshold()),
        }
    # Trees predict by argmax unless `thresholds` is set, which the portable scorer does not implement.
    _require(not classifier.isDefined("thresholds"), "the tree model sets 'thresholds'")
    if isinstance(classifier, DecisionTreeClassificationModel):
        [nodes] = extract_tree_nodes([classifier._java_obj], tree_method)
        return "DecisionTreeClassifier", {"tree": _tree_document(nodes, classification=True)}
    if isinstance(classifier, RandomForestClassificationModel):
        # Spark's RandomForestClassificationModel.predictRaw ignores treeWeights (all 1.0): so do we.
        _require(all(w == 1.0 for w in classifier.treeWeights), "a random forest tree weight is not 1.0")
        trees = extract_tree_nodes(list(classifier._java_obj.trees()), tree_method)
        return "RandomForestClassifier", {"trees": [_tree_document(t, classification=True) for t in trees]}
    if isinstance(classifier, GBTClassificationModel):
        _require(classifier.getLossType() == "logistic", f"GBT loss {classifier.getLossType()!r}")
        trees = extract_tree_nodes(list(classifier._java_obj.trees()), tree_method)
        return "GBTClassifier", {
            "trees": [_tree_document(t, classification=False) for t in trees],
            "tree_weights": [float(w) for w in classifier.treeWeights],
            "loss": "logistic",
        }
    _require(False, f"unsupported classifier {type(classifier).__name__}")
    raise AssertionError("unreachable")


def export_portable(model: PipelineModel, spark_version: str, tree_method: str = "auto") -> dict[str, Any]:
    """Export a fitted ``PipelineModel(feature_stages + [classifier])`` as an ``mlrelease.portable.v1`` dict.

    The document carries what the feature stages learned (string-indexer labels in index order, imputer
    surrogates) and the classifier's parameters or trees, so ``mlrelease.serving.portable`` can score raw
    records with the same results as ``model.transform`` and no JVM. Raises ValueError naming the stage
    when the pipeline is not the one this job builds.
    """
    stages = list(model.stages)
    _check_feature_stages(stages)
    imputer, indexer, classifier = stages[1], stages[2], stages[5]
    surrogates = imputer.surrogateDF.first()  # a one-row frame: a tiny Spark job
    categorical = [
        {"name": name, "labels": list(labels)}
        for name, labels in zip(CATEGORICAL_COLUMNS, indexer.labelsArray, strict=True)
    ]
    numeric = [
        {"name": name, "surrogate": float(surrogates[f"{name}{_NUM_SUFFIX}"])} for name in NUMERIC_COLUMNS
    ]
    num_features = sum(len(c["labels"]) + 1 for c in categorical) + len(numeric)
    _require(
        classifier.numFeatures == num_features,
        f"the classifier expects {classifier.numFeatures} features, the feature stages make {num_features}",
    )
    algorithm, model_document = _classifier_document(classifier, tree_method)
    return {
        "format": PORTABLE_FORMAT,
        "algorithm": algorithm,
        "spark_version": spark_version,
        "positive_label": POSITIVE_LABEL,
        "negative_label": NEGATIVE_LABEL,
        "missing_category": MISSING_CATEGORY,
        "unseen_encoding": UNSEEN_ENCODING,
        "categorical": categorical,
        "numeric": numeric,
        "num_features": num_features,
        "model": model_document,
    }


def holdout_sample(
    test_raw: DataFrame, limit: int = HOLDOUT_SAMPLE_ROWS
) -> tuple[list[dict[str, Any]], DataFrame]:
    """The first ``limit`` held-out rows as request records, and a small cached frame of exactly those.

    "First" is file order (monotonically_increasing_id right after the read), so every candidate of a
    run, and every run on the same files, gets the same rows. A record is what a client would send:
    numerics as numbers, a missing categorical as "?". A request cannot carry a missing numeric, so rows
    with a null/NaN/infinite numeric are skipped and the next rows taken instead.
    """
    numerics = [F.expr(f"TRY_CAST(`{c}` AS DOUBLE)").alias(c) for c in NUMERIC_COLUMNS]
    categoricals = [
        F.coalesce(F.col(c).cast("string"), F.lit(MISSING_CATEGORY)).alias(c) for c in CATEGORICAL_COLUMNS
    ]
    complete = F.lit(True)
    for column in NUMERIC_COLUMNS:
        value = F.col(column)
        complete = complete & value.isNotNull() & ~F.isnan(value) & ~value.isin(math.inf, -math.inf)
    rows = (
        test_raw.withColumn(_HOLDOUT_INDEX, F.monotonically_increasing_id())
        .select(_HOLDOUT_INDEX, *numerics, *categoricals)
        .where(complete)
        .orderBy(_HOLDOUT_INDEX)
        .limit(limit)
        .collect()
    )
    records = [{c: row[c] for c in NUMERIC_COLUMNS + CATEGORICAL_COLUMNS} for row in rows]
    schema = StructType(
        [StructField(_HOLDOUT_INDEX, IntegerType(), False)]
        + [StructField(c, DoubleType(), False) for c in NUMERIC_COLUMNS]
        + [StructField(c, StringType(), False) for c in CATEGORICAL_COLUMNS]
    )
    frame = test_raw.sparkSession.createDataFrame(
        [
            (i, *(record[c] for c in NUMERIC_COLUMNS + CATEGORICAL_COLUMNS))
            for i, record in enumerate(records)
        ],
        schema,
    )
    return records, frame.cache()


def spark_predictions(model: PipelineModel, sample: DataFrame) -> list[dict[str, Any]]:
    """Spark's own ``{"label", "probability"}`` (P(>50K)) for each row of a :func:`holdout_sample` frame."""
    rows = model.transform(sample).select(_HOLDOUT_INDEX, "probability", "prediction").collect()
    rows.sort(key=lambda row: row[_HOLDOUT_INDEX])
    return [
        {
            "label": POSITIVE_LABEL if row["prediction"] == 1.0 else NEGATIVE_LABEL,
            "probability": float(row["probability"][1]),
        }
        for row in rows
    ]


# --------------------------------------------------------------------------------------------------
# CLI / orchestration
# --------------------------------------------------------------------------------------------------


def parse_candidates(value: str) -> list[dict[str, Any]]:
    """Parse --candidates-json (inline JSON or ``@path``) and validate names are unique."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as handle:
            value = handle.read()
    try:
        candidates = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--candidates-json is not valid JSON: {exc}") from exc
    if not isinstance(candidates, list) or not candidates:
        raise ValueError("--candidates-json must be a non-empty JSON list of candidate objects")
    seen: set[str] = set()
    for candidate in candidates:
        if not isinstance(candidate, dict):
            raise ValueError(f"candidate {candidate!r}: must be a JSON object")
        name = candidate.get("name")
        if name in seen:
            raise ValueError(f"candidate {name!r}: duplicate candidate name")
        seen.add(name)
    return candidates


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train Adult income candidates and log them to MLflow.")
    parser.add_argument("--train-path", required=True, help="parquet with adult.data (split into train/val)")
    parser.add_argument("--test-path", required=True, help="parquet with the held-out adult.test")
    parser.add_argument("--candidates-json", required=True, help="JSON list of candidates, or @file")
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking URI")
    parser.add_argument("--parent-run-id", required=True, help="existing MLflow run to log under")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--champion-model-uri", default=None, help="MLflow URI of the production model")
    parser.add_argument("--champion-version", default=None, help="registry version of the champion")
    parser.add_argument("--result-path", default=None, help="also write the result JSON here")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit normally sets it)")
    return parser


def redact_uri(uri: str) -> str:
    """Hide credentials in a URI (``scheme://user:pass@host`` -> ``scheme://***@host``) for logging."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", uri)


def get_spark(master: str | None) -> tuple[SparkSession, bool]:
    """Return (session, created_here). Never overrides a master or a conf given by spark-submit."""
    created = SparkSession.getActiveSession() is None
    builder = SparkSession.builder.appName("mlrelease-train-income")
    if master:
        builder = builder.master(master)
    spark = builder.getOrCreate()
    submitted_conf = spark.sparkContext.getConf()
    if spark.sparkContext.master.startswith("local"):
        # Small data on a laptop: the 200-partition default only adds scheduling overhead.
        for key, value in {"spark.sql.shuffle.partitions": "8"}.items():
            if not submitted_conf.contains(key):
                spark.conf.set(key, value)
    return spark, created


def _list_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    runs: list[Run] = []
    page_token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{TAG_PARENT_RUN_ID}` = '{parent_run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def resolve_existing_children(
    client: MlflowClient, experiment_id: str, parent_run_id: str, candidate_names: Sequence[str]
) -> dict[str, Run]:
    """Return {candidate: finished child run to reuse}; soft-delete unfinished children of candidates."""
    wanted = set(candidate_names)
    reusable: dict[str, Run] = {}
    for run in _list_children(client, experiment_id, parent_run_id):  # newest first
        name = run.data.tags.get(TAG_CANDIDATE)
        if name not in wanted:
            continue
        finished = run.info.status == RunStatus.to_string(RunStatus.FINISHED)
        if finished and run.data.tags.get(TAG_MODEL_URI) and name not in reusable:
            reusable[name] = run
        elif finished and name in reusable:
            logger.warning(
                "candidate %s has another finished child run %s; reusing the newest %s",
                name,
                run.info.run_id,
                reusable[name].info.run_id,
            )
        else:
            logger.info(
                "deleting child run %s (status %s) of candidate %s; it will be refitted",
                run.info.run_id,
                run.info.status,
                name,
            )
            client.delete_run(run.info.run_id)
    return reusable


def _log_model(model: PipelineModel) -> str:
    # No signature on purpose: the raw numerics arrive as int64 or as float (NaN for missing), and a pyfunc
    # signature of either type makes MLflow reject the other ("Can not safely convert int64 to float64").
    # The model's own SQLTransformer casts whatever it gets, so scoring stays lenient without one.
    kwargs: dict[str, Any] = {
        # Explicit requirements skip MLflow's inference, which reloads the model in a subprocess.
        "pip_requirements": [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"],
    }
    # MLflow 3.x flavors take ``name=``; mlflow.spark.log_model (3.17) still only takes artifact_path.
    if "name" in inspect.signature(mlflow.spark.log_model).parameters:
        kwargs["name"] = MODEL_ARTIFACT_NAME
    else:
        kwargs["artifact_path"] = MODEL_ARTIFACT_NAME
    return mlflow.spark.log_model(model, **kwargs).model_uri


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


def fit_candidate(
    candidate: dict[str, Any],
    seed: int,
    experiment_id: str,
    feature_model: PipelineModel,
    train_features: DataFrame,
    validation_features: DataFrame,
    test_features: DataFrame,
    holdout_records: list[dict[str, Any]],
    holdout_frame: DataFrame,
) -> dict[str, Any]:
    """Fit one candidate in its own nested child run of the active parent run; return its result.

    Besides the Spark model, the child run gets ``portable/portable_model.json`` (:func:`export_portable`)
    and ``portable/holdout_predictions.json``: ``holdout_records`` (from :func:`holdout_sample`, the
    same for every candidate) with Spark's own predictions for them, computed from ``holdout_frame``.
    """
    name = candidate["name"]
    algorithm = candidate["algorithm"]
    estimator = make_estimator(candidate, seed=seed)
    tags = {TAG_CANDIDATE: name, TAG_ALGORITHM: algorithm}
    with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id, tags=tags) as child:
        run_id = child.info.run_id
        mlflow.log_params({"algorithm": algorithm, **(candidate.get("params") or {})})
        started = time.monotonic()
        classifier = estimator.fit(train_features)
        fit_seconds = time.monotonic() - started
        val_metrics = evaluate(classifier.transform(validation_features))
        test_metrics = evaluate(classifier.transform(test_features))
        mlflow.log_metrics(
            {**_prefixed("val_", val_metrics), **_prefixed("test_", test_metrics), "fit_seconds": fit_seconds}
        )
        model = PipelineModel(stages=list(feature_model.stages) + [classifier])
        model_uri = _log_model(model)
        mlflow.set_tag(TAG_MODEL_URI, model_uri)
        started = time.monotonic()
        portable = export_portable(model, holdout_frame.sparkSession.version)
        export_seconds = time.monotonic() - started
        holdout = {
            "format": HOLDOUT_PREDICTIONS_FORMAT,
            "records": holdout_records,
            "predictions": spark_predictions(model, holdout_frame),
        }
        portable_uris = {}
        for tag, file_name, document in (
            (TAG_PORTABLE_MODEL_URI, PORTABLE_MODEL_FILE, portable),
            (TAG_HOLDOUT_PREDICTIONS_URI, HOLDOUT_PREDICTIONS_FILE, holdout),
        ):
            artifact = f"{PORTABLE_ARTIFACT_DIR}/{file_name}"
            mlflow.log_text(json.dumps(document, separators=(",", ":"), allow_nan=False), artifact)
            portable_uris[tag] = f"runs:/{run_id}/{artifact}"
        mlflow.set_tags(portable_uris)
        portable_seconds = time.monotonic() - started
    logger.info(
        "candidate %s: child run %s, fit %.1fs, val AUC %.4f, test AUC %.4f, portable export %.2fs "
        "(+ %d holdout predictions: %.2fs in all)",
        name,
        run_id,
        fit_seconds,
        val_metrics["areaUnderROC"],
        test_metrics["areaUnderROC"],
        export_seconds,
        len(holdout_records),
        portable_seconds,
    )
    return {
        "candidate": name,
        "run_id": run_id,
        "algorithm": algorithm,
        "reused": False,
        "model_uri": model_uri,
    }


def evaluate_champion(model_uri: str, version: str | None, test_raw: DataFrame) -> dict[str, float]:
    """Score raw held-out records with the current production model; RuntimeError if that fails."""
    try:
        champion = mlflow.spark.load_model(model_uri)
        metrics = evaluate(champion.transform(test_raw))
    except Exception as exc:
        raise RuntimeError(
            f"could not load or score the champion model {model_uri!r} (version {version!r}): {exc}. "
            "Check that this model version exists and is a Spark PipelineModel logged by this job, "
            "or move the registry alias 'prod' to a valid version."
        ) from exc
    logger.info("champion %s (version %s): test AUC %.4f", model_uri, version, metrics["areaUnderROC"])
    return metrics


def run_training(args: argparse.Namespace, spark: SparkSession, parent: Run) -> dict[str, Any]:
    """Everything between attaching to the parent run and ending it."""
    client = MlflowClient()
    parent_run_id = parent.info.run_id
    experiment_id = parent.info.experiment_id
    sc = spark.sparkContext
    mlflow.set_tags(
        {
            "spark.version": spark.version,
            "spark.application_id": sc.applicationId,
            "spark.master": sc.master,
            TAG_VALIDATION_FRACTION: str(args.validation_fraction),
            TAG_SEED: str(args.seed),
        }
    )
    candidates = parse_candidates(args.candidates_json)
    for candidate in candidates:  # fail fast, before any Spark work, on a bad candidate
        make_estimator(candidate, seed=args.seed)

    raw_train = add_label(spark.read.parquet(args.train_path)).cache()
    raw_test = add_label(spark.read.parquet(args.test_path)).cache()
    logger.info("read %s training and %s test rows", raw_train.count(), raw_test.count())

    champion: dict[str, Any] | None = None
    if args.champion_model_uri:
        champion_metrics = evaluate_champion(args.champion_model_uri, args.champion_version, raw_test)
        mlflow.log_metrics(_prefixed("champion_test_", champion_metrics))
        mlflow.set_tags(
            {
                TAG_CHAMPION_MODEL_URI: args.champion_model_uri,
                TAG_CHAMPION_VERSION: str(args.champion_version),
            }
        )
        champion = {"version": args.champion_version, "metrics": champion_metrics}

    names = [c["name"] for c in candidates]
    reusable = resolve_existing_children(client, experiment_id, parent_run_id, names)
    children: list[dict[str, Any]] = []
    to_fit = [c for c in candidates if c["name"] not in reusable]
    for candidate in candidates:
        if candidate["name"] in reusable:
            run = reusable[candidate["name"]]
            logger.info("reusing child run %s for candidate %s", run.info.run_id, candidate["name"])
            children.append(
                {
                    "candidate": candidate["name"],
                    "run_id": run.info.run_id,
                    "algorithm": run.data.tags.get(TAG_ALGORITHM, candidate["algorithm"]),
                    "reused": True,
                    "model_uri": run.data.tags[TAG_MODEL_URI],
                }
            )

    if to_fit:
        train_raw, validation_raw = split_train_validation(raw_train, args.validation_fraction, args.seed)
        feature_model, frames = prepare_features(train_raw, validation_raw, raw_test)
        train_features, validation_features, test_features = frames
        holdout_records, holdout_frame = holdout_sample(raw_test)
        logger.info(
            "features: %s train, %s validation, %s test rows",
            train_features.count(),
            validation_features.count(),
            test_features.count(),
        )
        try:
            for candidate in to_fit:
                children.append(
                    fit_candidate(
                        candidate,
                        args.seed,
                        experiment_id,
                        feature_model,
                        train_features,
                        validation_features,
                        test_features,
                        holdout_records,
                        holdout_frame,
                    )
                )
        finally:
            for frame in (*frames, holdout_frame):
                frame.unpersist()
    raw_train.unpersist()
    raw_test.unpersist()

    order = {c["name"]: i for i, c in enumerate(candidates)}
    children.sort(key=lambda child: order[child["candidate"]])
    return {
        "parent_run_id": parent_run_id,
        "application_id": sc.applicationId,
        "spark_version": spark.version,
        "children": children,
        "champion": champion,
    }


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (e.g. AUC on a one-class split) with null so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    mlflow.set_tracking_uri(args.tracking_uri)
    logger.info("tracking URI %s, parent run %s", redact_uri(args.tracking_uri), args.parent_run_id)
    parent = MlflowClient().get_run(args.parent_run_id)
    mlflow.start_run(run_id=args.parent_run_id)
    spark: SparkSession | None = None
    created_spark = False
    try:
        spark, created_spark = get_spark(args.master)
        result = run_training(args, spark, parent)
        payload = json.dumps(_json_safe(result), separators=(",", ":"), allow_nan=False)
        if args.result_path:
            with open(args.result_path, "w", encoding="utf-8") as handle:
                handle.write(payload + "\n")
    except BaseException:
        logger.exception("training failed; ending parent run %s as FAILED", args.parent_run_id)
        while mlflow.active_run() is not None:  # a still-open child first, then the parent
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    finally:
        if spark is not None and created_spark and "DATABRICKS_RUNTIME_VERSION" not in os.environ:
            spark.stop()
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    sys.stdout.write(RESULT_PREFIX + payload + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
