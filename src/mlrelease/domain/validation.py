"""Data validation rules that run before any training.

Each rule returns the violations it found, each naming the rule, the column and the numbers, so that a
failed run tells the operator exactly what is wrong with which file. Rules never modify the data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd
from pandas.api import types as ptypes

from mlrelease.domain.schema import (
    CATEGORICAL_FEATURES,
    LABEL,
    LABEL_VALUES,
    NUMERIC_FEATURES,
    POSITIVE_LABEL,
    RAW_COLUMN_ORDER,
)
from mlrelease.domain.validation_policy import ValidationPolicy


@dataclass(frozen=True)
class Violation:
    rule: str
    column: str | None
    message: str

    def __str__(self) -> str:
        where = f" column '{self.column}'" if self.column else ""
        return f"[{self.rule}]{where}: {self.message}"


@dataclass
class ValidationReport:
    dataset: str
    rows: int
    violations: list[Violation] = field(default_factory=list)
    missing_share: dict[str, float] = field(default_factory=dict)
    positive_share: float | None = None

    @property
    def ok(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict:
        return {
            "dataset": self.dataset,
            "rows": self.rows,
            "ok": self.ok,
            "violations": [asdict(v) for v in self.violations],
            "missing_share": self.missing_share,
            "positive_share": self.positive_share,
        }


class DataValidationError(ValueError):
    """Raised when one or more rules fail; the message lists every violation."""

    def __init__(self, reports: list[ValidationReport], hint: str = "") -> None:
        self.reports = reports
        lines = []
        for report in reports:
            if report.ok:
                continue
            lines.append(f"{report.dataset} ({report.rows} rows): {len(report.violations)} rule(s) violated:")
            lines.extend(f"  - {violation}" for violation in report.violations)
        if hint:
            lines.append(hint)
        super().__init__("Data validation failed.\n" + "\n".join(lines))


def check_schema(frame: pd.DataFrame) -> list[Violation]:
    violations = []
    missing = [c for c in RAW_COLUMN_ORDER if c not in frame.columns]
    if missing:
        violations.append(
            Violation(
                "schema",
                None,
                f"missing column(s) {missing}; the file needs a header with these names "
                f"(present: {sorted(frame.columns)})",
            )
        )
    for column in NUMERIC_FEATURES:
        if column in frame.columns and not ptypes.is_numeric_dtype(frame[column]):
            non_numeric = pd.to_numeric(frame[column], errors="coerce").isna() & frame[column].notna()
            examples = frame.loc[non_numeric, column].astype(str).unique()[:3].tolist()
            violations.append(
                Violation(
                    "schema",
                    column,
                    f"must be numeric but has {int(non_numeric.sum())} non-numeric value(s), e.g. {examples}",
                )
            )
    for column in (*CATEGORICAL_FEATURES, LABEL):
        if column in frame.columns and ptypes.is_numeric_dtype(frame[column]) and frame[column].notna().any():
            violations.append(
                Violation("schema", column, f"must be text (categories) but is {frame[column].dtype}")
            )
    return violations


def check_row_count(frame: pd.DataFrame, policy: ValidationPolicy) -> list[Violation]:
    if len(frame) < policy.min_rows:
        return [
            Violation(
                "row_count",
                None,
                f"{len(frame)} rows, below the floor of {policy.min_rows}; supply more data "
                "or lower the floor deliberately",
            )
        ]
    return []


def check_label_values(frame: pd.DataFrame) -> list[Violation]:
    if LABEL not in frame.columns:
        return []
    labels = frame[LABEL]
    violations = []
    missing = int(labels.isna().sum())
    if missing:
        violations.append(Violation("label_values", LABEL, f"{missing} row(s) have no label"))
    unexpected = labels.dropna()[~labels.dropna().isin(LABEL_VALUES)]
    if len(unexpected):
        counts = unexpected.value_counts().head(5).to_dict()
        violations.append(
            Violation(
                "label_values",
                LABEL,
                f"{len(unexpected)} row(s) have labels outside {sorted(LABEL_VALUES)}: {counts}",
            )
        )
    return violations


def missing_shares(frame: pd.DataFrame) -> dict[str, float]:
    if len(frame) == 0:
        return {c: 0.0 for c in frame.columns}
    return {c: round(float(frame[c].isna().mean()), 6) for c in frame.columns if c in RAW_COLUMN_ORDER}


def check_missing_share(shares: dict[str, float], policy: ValidationPolicy) -> list[Violation]:
    return [
        Violation(
            "missing_share",
            column,
            f"{share:.1%} of values are missing, above the {policy.max_missing_share:.1%} limit",
        )
        for column, share in shares.items()
        if column != LABEL and share > policy.max_missing_share
    ]


def positive_share(frame: pd.DataFrame) -> float | None:
    if LABEL not in frame.columns:
        return None
    labelled = frame[LABEL].dropna()
    labelled = labelled[labelled.isin(LABEL_VALUES)]
    return float((labelled == POSITIVE_LABEL).mean()) if len(labelled) else None


def check_label_balance(share: float | None, policy: ValidationPolicy) -> list[Violation]:
    if share is None:
        return []
    if not policy.min_positive_share <= share <= policy.max_positive_share:
        return [
            Violation(
                "label_balance",
                LABEL,
                f"{share:.1%} of rows are '{POSITIVE_LABEL}', outside the allowed "
                f"{policy.min_positive_share:.0%}..{policy.max_positive_share:.0%}",
            )
        ]
    return []


def check_ranges(frame: pd.DataFrame, policy: ValidationPolicy) -> list[Violation]:
    violations = []
    for column in policy.non_negative_columns:
        if column in frame.columns and ptypes.is_numeric_dtype(frame[column]):
            negative = int((frame[column] < 0).sum())
            if negative:
                violations.append(Violation("range", column, f"{negative} row(s) are negative"))
    if "age" in frame.columns and ptypes.is_numeric_dtype(frame["age"]):
        too_old = int((frame["age"] > policy.max_age).sum())
        if too_old:
            violations.append(Violation("range", "age", f"{too_old} row(s) are above {policy.max_age}"))
    return violations


def validate_frame(frame: pd.DataFrame, dataset: str, policy: ValidationPolicy) -> ValidationReport:
    """Run every rule on one (normalised) data set and collect all violations, not just the first."""
    shares = missing_shares(frame)
    share = positive_share(frame)
    violations = [
        *check_schema(frame),
        *check_row_count(frame, policy),
        *check_label_values(frame),
        *check_missing_share(shares, policy),
        *check_label_balance(share, policy),
        *check_ranges(frame, policy),
    ]
    return ValidationReport(
        dataset=dataset, rows=len(frame), violations=violations, missing_share=shares, positive_share=share
    )
