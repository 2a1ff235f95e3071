"""The Adult income schema: the 14 features and the label, with the seed's column names."""

from __future__ import annotations

NUMERIC_FEATURES: tuple[str, ...] = (
    "age",
    "fnlwgt",
    "education_num",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
)
CATEGORICAL_FEATURES: tuple[str, ...] = (
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
)
LABEL = "income"
POSITIVE_LABEL = ">50K"
NEGATIVE_LABEL = "<=50K"
LABEL_VALUES: frozenset[str] = frozenset({POSITIVE_LABEL, NEGATIVE_LABEL})
# The Adult dataset's own missing-value marker. Training maps a null or empty categorical to it, the
# portable export records it, and a scoring request sends it (or "") for an unknown value.
MISSING_CATEGORY = "?"

# Column order of the raw UCI files (adult.data / adult.test have no header line).
RAW_COLUMN_ORDER: tuple[str, ...] = (
    "age",
    "workclass",
    "fnlwgt",
    "education",
    "education_num",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "capital_gain",
    "capital_loss",
    "hours_per_week",
    "native_country",
    LABEL,
)
FEATURES: tuple[str, ...] = tuple(c for c in RAW_COLUMN_ORDER if c != LABEL)


def expected_schema() -> dict[str, str]:
    """Column name -> logical type ("numeric", "string"), as recorded in the dataset fingerprint."""
    return {column: ("numeric" if column in NUMERIC_FEATURES else "string") for column in RAW_COLUMN_ORDER}


def normalise_column_name(name: str) -> str:
    """Map header spellings like ``education-num`` or ``Hours Per Week`` to the seed's ``education_num``."""
    return "_".join(name.strip().lower().replace("-", " ").replace(".", " ").split())
