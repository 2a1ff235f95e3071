"""The binary classification metrics logged for every candidate (``val_*``, ``test_*``) and the champion."""

from __future__ import annotations

from typing import Any

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mlrelease.training.features import TARGET_COL

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
