"""Each data validation rule has a passing case and a failing case that names the rule and numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlrelease.domain.schema import RAW_COLUMN_ORDER
from mlrelease.domain.validation import (
    DataValidationError,
    ValidationPolicy,
    validate_frame,
)

POLICY = ValidationPolicy(min_rows=50)


def good_frame(rows: int = 100) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(17, 90, rows),
            "workclass": rng.choice(["Private", "State-gov"], rows),
            "fnlwgt": rng.integers(10_000, 500_000, rows),
            "education": rng.choice(["Bachelors", "HS-grad"], rows),
            "education_num": rng.integers(1, 16, rows),
            "marital_status": rng.choice(["Divorced", "Never-married"], rows),
            "occupation": rng.choice(["Sales", "Tech-support"], rows),
            "relationship": rng.choice(["Husband", "Wife"], rows),
            "race": rng.choice(["White", "Black"], rows),
            "sex": rng.choice(["Male", "Female"], rows),
            "capital_gain": rng.integers(0, 5000, rows),
            "capital_loss": rng.integers(0, 100, rows),
            "hours_per_week": rng.integers(1, 80, rows),
            "native_country": rng.choice(["United-States", "Mexico"], rows),
            "income": [">50K" if i % 4 == 0 else "<=50K" for i in range(rows)],
        }
    )[list(RAW_COLUMN_ORDER)]


def rules(frame: pd.DataFrame, policy: ValidationPolicy = POLICY) -> list[tuple[str, str | None]]:
    return [(v.rule, v.column) for v in validate_frame(frame, "test data", policy).violations]


def test_good_data_passes_and_reports_shares():
    report = validate_frame(good_frame(), "test data", POLICY)
    assert report.ok, report.violations
    assert report.positive_share == pytest.approx(0.25)
    assert report.missing_share["occupation"] == 0.0


def test_missing_column_is_a_schema_violation_listing_it():
    frame = good_frame().drop(columns=["hours_per_week"])
    report = validate_frame(frame, "test data", POLICY)
    assert ("schema", None) in rules(frame)
    assert "hours_per_week" in str(report.violations[0])


def test_non_numeric_value_in_numeric_column_is_named():
    frame = good_frame()
    frame["age"] = frame["age"].astype(object)
    frame.loc[3, "age"] = "forty"
    report = validate_frame(frame, "test data", POLICY)
    assert ("schema", "age") in rules(frame)
    assert "forty" in str(report.violations[0])


def test_numeric_categorical_column_is_a_schema_violation():
    frame = good_frame()
    frame["sex"] = 1
    assert ("schema", "sex") in rules(frame)


def test_row_floor():
    assert ("row_count", None) in rules(good_frame(40))
    assert ("row_count", None) not in rules(good_frame(60))


def test_unknown_and_missing_labels():
    frame = good_frame()
    frame.loc[0, "income"] = "maybe"
    frame.loc[1, "income"] = None
    found = validate_frame(frame, "test data", POLICY)
    messages = " ".join(str(v) for v in found.violations if v.rule == "label_values")
    assert "maybe" in messages and "1 row(s) have no label" in messages


def test_missing_share_above_limit_names_column_and_share():
    frame = good_frame()
    frame.loc[:14, "occupation"] = None  # 15% missing
    report = validate_frame(frame, "test data", POLICY)
    assert ("missing_share", "occupation") in rules(frame)
    assert "15.0%" in str(next(v for v in report.violations if v.rule == "missing_share"))
    frame.loc[:14, "occupation"] = "Sales"
    frame.loc[:9, "occupation"] = None  # exactly 10%: allowed
    assert ("missing_share", "occupation") not in rules(frame)


def test_label_balance():
    frame = good_frame()
    frame["income"] = "<=50K"
    frame.loc[:2, "income"] = ">50K"  # 3%
    assert ("label_balance", "income") in rules(frame)


def test_negative_and_implausible_values():
    frame = good_frame()
    frame.loc[0, "capital_gain"] = -5
    frame.loc[1, "age"] = 150
    found = rules(frame)
    assert ("range", "capital_gain") in found and ("range", "age") in found


def test_error_message_lists_every_violation_of_every_dataset():
    bad = good_frame(40)
    bad.loc[:9, "workclass"] = None
    error = DataValidationError(
        [
            validate_frame(bad, "training data x.csv", POLICY),
            validate_frame(good_frame(), "held-out", POLICY),
        ],
        hint="Fix it.",
    )
    text = str(error)
    assert "training data x.csv (40 rows): 2 rule(s) violated" in text
    assert "[row_count]" in text and "[missing_share] column 'workclass'" in text
    assert "held-out" not in text  # the passing data set is not reported as failing
    assert text.endswith("Fix it.")
