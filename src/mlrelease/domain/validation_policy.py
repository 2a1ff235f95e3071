"""The thresholds of data validation, apart from the checks so the DAG can show them without pandas."""

from __future__ import annotations

from dataclasses import dataclass

from mlrelease.domain.schema import NUMERIC_FEATURES


@dataclass(frozen=True)
class ValidationPolicy:
    """Thresholds for :func:`validate_frame`; defaults suit the Adult data and similar tabular sets."""

    min_rows: int = 1_000
    max_missing_share: float = 0.10
    min_positive_share: float = 0.05
    max_positive_share: float = 0.95
    non_negative_columns: tuple[str, ...] = NUMERIC_FEATURES
    max_age: int = 120
