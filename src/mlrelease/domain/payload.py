"""Validation of a scoring request body, shared by the local HTTP service and the Azure ML script.

A client that sends a batch of 500 records wants to fix every problem in one round trip, so validation
collects *every* problem (with its location, ``data[3].age``) instead of stopping at the first. The
rules mirror what the model was trained on (see ``data/prepare.py``): the 14 Adult features, numerics
as finite non-negative numbers, categoricals as strings with surrounding spaces stripped and ``"?"`` (or
an empty string, which training also read as missing) for an unknown value. Anything the model never
saw in training is *not* an error here: the scorer maps an unseen category to its unknown bucket and
the response flags it.

This module is pure (no web framework, no JSON decoding): it takes the already-parsed body, so the same
rules serve ``POST /score`` and Azure ML's ``run(raw_data)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlrelease.domain.schema import FEATURES, LABEL, MISSING_CATEGORY, NUMERIC_FEATURES

MAX_RECORDS = 10_000
# 10,000 Adult records as JSON take about 3.5 MB; 8 MiB leaves room for pretty-printed bodies while
# keeping a single request's memory (raw bytes + parsed objects + the logged copy) bounded.
MAX_BODY_BYTES = 8 * 1024 * 1024
# A response listing 140,000 problems helps nobody and bloats the prediction log: the first
# MAX_REPORTED_ERRORS are listed, followed by one line counting the rest.
MAX_REPORTED_ERRORS = 100

UPPER_BOUNDS: dict[str, float] = {"age": 150.0, "hours_per_week": 168.0}
_TOP_LEVEL_KEYS = ("data",)

# A typical, valid record (first row of adult.data): the example in docs and the scorer's self-test.
EXAMPLE_RECORD: dict[str, Any] = {
    "age": 39,
    "workclass": "State-gov",
    "fnlwgt": 77516,
    "education": "Bachelors",
    "education_num": 13,
    "marital_status": "Never-married",
    "occupation": "Adm-clerical",
    "relationship": "Not-in-family",
    "race": "White",
    "sex": "Male",
    "capital_gain": 2174,
    "capital_loss": 0,
    "hours_per_week": 40,
    "native_country": "United-States",
}


@dataclass(frozen=True)
class FieldError:
    """One problem with a request: where it is (``data[3].age``) and what is wrong with it."""

    field: str
    error: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "error": self.error}


@dataclass(frozen=True)
class ValidatedPayload:
    """Clean records (all 14 features, numerics as float, categoricals stripped) or the problems found.

    ``records`` is empty whenever ``errors`` is not: a batch is scored whole or not at all, so a client
    never has to work out which of its rows were skipped.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[FieldError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_details(self, limit: int = MAX_REPORTED_ERRORS) -> list[dict[str, str]]:
        """The errors as ``{"field", "error"}`` dicts, the first ``limit`` of them plus a count of the rest."""
        details = [e.as_dict() for e in self.errors[:limit]]
        if len(self.errors) > limit:
            details.append(
                {
                    "field": "data",
                    "error": f"... and {len(self.errors) - limit} more problems "
                    f"(only the first {limit} are listed; fix these and send again)",
                }
            )
        return details


def _describe(value: Any) -> str:
    """A short, safe rendering of a bad value for an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"{type(value).__name__} {value!r}"


def _check_numeric(name: str, value: Any, where: str, errors: list[FieldError]) -> float | None:
    if value is None:
        errors.append(FieldError(where, "must be a number, got null (numeric fields have no missing value)"))
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        errors.append(FieldError(where, f"must be a JSON number, got {_describe(value)}"))
        return None
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        errors.append(FieldError(where, f"must be a finite number, got {value!r}"))
        return None
    if number < 0:
        errors.append(FieldError(where, f"must be >= 0, got {value!r}"))
        return None
    upper = UPPER_BOUNDS.get(name)
    if upper is not None and number > upper:
        errors.append(FieldError(where, f"must be <= {upper:g}, got {value!r}"))
        return None
    return number


def _check_categorical(value: Any, where: str, errors: list[FieldError]) -> str | None:
    if value is None:
        errors.append(
            FieldError(where, f'must be a string, got null; send "{MISSING_CATEGORY}" for an unknown value')
        )
        return None
    if not isinstance(value, str):
        errors.append(FieldError(where, f"must be a string, got {_describe(value)}"))
        return None
    # Training stripped spaces and read "" as missing (data/prepare.py); do the same so that
    # " Private" and "" score exactly as they were learned.
    return value.strip() or MISSING_CATEGORY


def _check_record(index: int, record: Any, errors: list[FieldError]) -> dict[str, Any] | None:
    where = f"data[{index}]"
    if not isinstance(record, Mapping):
        errors.append(
            FieldError(where, f"must be an object with the {len(FEATURES)} features, got {_describe(record)}")
        )
        return None
    before = len(errors)
    clean: dict[str, Any] = {}
    for name in FEATURES:
        if name not in record:
            kind = "number" if name in NUMERIC_FEATURES else f'string, "{MISSING_CATEGORY}" if unknown'
            errors.append(FieldError(f"{where}.{name}", f"missing (required, {kind})"))
        elif name in NUMERIC_FEATURES:
            clean[name] = _check_numeric(name, record[name], f"{where}.{name}", errors)
        else:
            clean[name] = _check_categorical(record[name], f"{where}.{name}", errors)
    for name in record:
        if name in FEATURES:
            continue
        if name == LABEL:
            message = f"{LABEL!r} is the label the model predicts, not a feature; remove it"
        else:
            message = f"unknown field {str(name)!r}; expected only: {', '.join(FEATURES)}"
        errors.append(FieldError(f"{where}.{name}", message))
    return clean if len(errors) == before else None


def validate_payload(body: Any) -> ValidatedPayload:
    """Check a parsed request body ``{"data": [record, ...]}``; return clean records or every problem."""
    if not isinstance(body, Mapping):
        return ValidatedPayload(
            errors=[FieldError("body", f'must be a JSON object {{"data": [...]}}, got {_describe(body)}')]
        )
    errors: list[FieldError] = [
        FieldError(str(key), f'unknown top-level key {str(key)!r}; the body is {{"data": [record, ...]}}')
        for key in body
        if key not in _TOP_LEVEL_KEYS
    ]
    if "data" not in body:
        errors.insert(0, FieldError("data", 'missing: the body is {"data": [record, ...]}'))
        return ValidatedPayload(errors=errors)
    data = body["data"]
    if not isinstance(data, list):
        errors.insert(0, FieldError("data", f"must be a list of records, got {_describe(data)}"))
        return ValidatedPayload(errors=errors)
    if not data:
        errors.insert(0, FieldError("data", "must contain at least one record, got an empty list"))
        return ValidatedPayload(errors=errors)
    if len(data) > MAX_RECORDS:
        # Checking 10,001+ records only to reject the batch anyway would be wasted work.
        errors.insert(
            0,
            FieldError("data", f"too many records: {len(data)} > {MAX_RECORDS} per request; split the batch"),
        )
        return ValidatedPayload(errors=errors)
    records = [_check_record(i, record, errors) for i, record in enumerate(data)]
    if errors:
        return ValidatedPayload(errors=errors)
    return ValidatedPayload(records=[r for r in records if r is not None])
