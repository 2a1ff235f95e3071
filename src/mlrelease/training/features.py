"""Pure DataFrame functions: the label, the raw-record clean-up and the feature stages.

The feature stages are fitted once, on the training split only, and every saved model is
``PipelineModel(fitted_feature_stages + [fitted_classifier])``: it scores RAW records (no label column
needed), and an unseen or missing category never drops or fails a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import Imputer, OneHotEncoder, SQLTransformer, StringIndexer, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from mlrelease.domain.schema import (
    CATEGORICAL_FEATURES,
    LABEL,
    MISSING_CATEGORY,
    NUMERIC_FEATURES,
    POSITIVE_LABEL,
)

FEATURES_COL = "features"
TARGET_COL = "label"


@dataclass(frozen=True)
class StageColumns:
    """Intermediate column names of the feature stages, each list in schema order.

    Suffixes keep the raw input columns untouched, so the fitted model can score frames that carry
    extra columns such as the label.
    """

    numeric: list[str]  # after the SQL clean-up: double, null when unparsable
    imputed: list[str]
    categorical: list[str]  # after the SQL clean-up: trimmed, null/empty -> MISSING_CATEGORY
    indexed: list[str]
    one_hot: list[str]


STAGE_COLUMNS = StageColumns(
    numeric=[f"{c}__num" for c in NUMERIC_FEATURES],
    imputed=[f"{c}__imp" for c in NUMERIC_FEATURES],
    categorical=[f"{c}__cat" for c in CATEGORICAL_FEATURES],
    indexed=[f"{c}__idx" for c in CATEGORICAL_FEATURES],
    one_hot=[f"{c}__ohe" for c in CATEGORICAL_FEATURES],
)


def add_label(df: DataFrame) -> DataFrame:
    """Add a double ``label`` column: 1.0 for ``>50K`` (also ``" >50K."`` as in adult.test), else 0.0.

    A null or unknown income maps to 0.0; rows are never dropped.
    """
    normalized = F.regexp_replace(F.trim(F.col(LABEL).cast("string")), r"\.$", "")
    return df.withColumn(
        TARGET_COL, F.when(normalized == F.lit(POSITIVE_LABEL), F.lit(1.0)).otherwise(F.lit(0.0))
    )


def clean_sql() -> str:
    """The SQLTransformer statement: numerics cast to double, categoricals trimmed with a missing marker."""
    numeric = [
        f"TRY_CAST(`{c}` AS DOUBLE) AS `{out}`"
        for c, out in zip(NUMERIC_FEATURES, STAGE_COLUMNS.numeric, strict=True)
    ]
    categorical = [
        f"COALESCE(NULLIF(TRIM(CAST(`{c}` AS STRING)), ''), '{MISSING_CATEGORY}') AS `{out}`"
        for c, out in zip(CATEGORICAL_FEATURES, STAGE_COLUMNS.categorical, strict=True)
    ]
    return "SELECT *, " + ", ".join(numeric + categorical) + " FROM __THIS__"


def build_feature_stages() -> list[Any]:
    """Return the unfitted stages that turn raw Adult records into a ``features`` vector.

    1. SQLTransformer: numerics -> double (unparsable -> null); categoricals trimmed, null/empty -> "?".
    2. Imputer (median, fitted on training data): a null/NaN numeric never fails the assembler.
    3. StringIndexer over all categoricals, handleInvalid="keep": unseen categories get the extra index.
    4. OneHotEncoder, handleInvalid="keep".
    5. VectorAssembler over the one-hot categoricals + the 6 numerics.

    ``mlrelease.training.portable_export`` reimplements exactly these stages: change both together.
    """
    cols = STAGE_COLUMNS
    return [
        SQLTransformer(statement=clean_sql()),
        Imputer(inputCols=cols.numeric, outputCols=cols.imputed, strategy="median"),
        StringIndexer(
            inputCols=cols.categorical,
            outputCols=cols.indexed,
            handleInvalid="keep",
            stringOrderType="frequencyDesc",
        ),
        OneHotEncoder(inputCols=cols.indexed, outputCols=cols.one_hot, handleInvalid="keep"),
        VectorAssembler(inputCols=cols.one_hot + cols.imputed, outputCol=FEATURES_COL, handleInvalid="keep"),
    ]


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
