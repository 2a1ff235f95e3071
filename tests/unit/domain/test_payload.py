from __future__ import annotations

import math

import pytest

from mlrelease.domain.payload import (
    EXAMPLE_RECORD,
    MAX_RECORDS,
    MAX_REPORTED_ERRORS,
    FieldError,
    validate_payload,
)
from mlrelease.domain.schema import FEATURES


def record(**overrides):
    return {**EXAMPLE_RECORD, **overrides}


def without(name):
    return {k: v for k, v in EXAMPLE_RECORD.items() if k != name}


def errors_of(body):
    result = validate_payload(body)
    assert not result.ok and result.records == []
    return {e.field: e.error for e in result.errors}


def test_valid_batch_is_cleaned_in_order():
    result = validate_payload({"data": [record(age=25), record(workclass=" Private ", age=61.5)]})
    assert result.ok and result.errors == []
    assert [r["age"] for r in result.records] == [25.0, 61.5]
    assert all(isinstance(r["fnlwgt"], float) for r in result.records)
    assert result.records[1]["workclass"] == "Private"  # stripped, as training did
    assert list(result.records[0]) == list(FEATURES)


def test_unknown_category_markers_are_accepted():
    result = validate_payload({"data": [record(occupation="?", native_country="")]})
    assert result.ok
    assert result.records[0]["occupation"] == "?"
    assert result.records[0]["native_country"] == "?"  # training read "" as missing, like "?"


def test_every_problem_is_reported_not_just_the_first():
    body = {
        "data": [
            record(),
            {**without("sex"), "age": -4, "hours_per_week": 200, "shoe_size": 44},
            "not a record",
            record(workclass=None, education=7, capital_gain="100", fnlwgt=True, age=151),
        ]
    }
    errors = errors_of(body)
    assert errors == {
        "data[1].sex": 'missing (required, string, "?" if unknown)',
        "data[1].age": "must be >= 0, got -4",
        "data[1].hours_per_week": "must be <= 168, got 200",
        "data[1].shoe_size": errors["data[1].shoe_size"],
        "data[2]": "must be an object with the 14 features, got string 'not a record'",
        "data[3].workclass": 'must be a string, got null; send "?" for an unknown value',
        "data[3].education": "must be a string, got int 7",
        "data[3].capital_gain": "must be a JSON number, got string '100'",
        "data[3].fnlwgt": "must be a JSON number, got boolean true",
        "data[3].age": "must be <= 150, got 151",
    }
    assert "unknown field 'shoe_size'" in errors["data[1].shoe_size"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ([record()], "body", 'must be a JSON object {"data": [...]}, got a list'),
        ("hello", "body", "must be a JSON object"),
        (None, "body", "got null"),
        ({}, "data", "missing"),
        ({"data": {}}, "data", "must be a list of records, got an object"),
        ({"data": []}, "data", "must contain at least one record"),
        ({"data": [record()], "extra": 1}, "extra", "unknown top-level key 'extra'"),
        ({"data": [{**record(), "income": ">50K"}]}, "data[0].income", "is the label the model predicts"),
        ({"data": [record(age=math.inf)]}, "data[0].age", "must be a finite number"),
        ({"data": [record(age=None)]}, "data[0].age", "got null"),
        ({"data": [record(capital_loss=-0.5)]}, "data[0].capital_loss", "must be >= 0, got -0.5"),
        ({"data": [record(race=["White"])]}, "data[0].race", "must be a string, got a list"),
    ],
)
def test_single_problem_is_located_and_explained(body, field, message):
    errors = errors_of(body)
    assert field in errors, errors
    assert message in errors[field]


def test_numbers_too_large_for_a_float_are_not_finite():
    assert errors_of({"data": [record(capital_gain=10**400)]})["data[0].capital_gain"].startswith(
        "must be a finite"
    )


def test_boundaries_are_inclusive():
    assert validate_payload({"data": [record(age=0, hours_per_week=168, capital_gain=0)]}).ok
    assert validate_payload({"data": [record(age=150)]}).ok


def test_too_many_records_is_one_error_without_checking_each():
    body = {"data": [{"broken": True}] * (MAX_RECORDS + 1)}
    result = validate_payload(body)
    assert [e.field for e in result.errors] == ["data"]
    assert result.errors[0].error.startswith(f"too many records: {MAX_RECORDS + 1} > {MAX_RECORDS}")


def test_max_records_is_accepted():
    assert len(validate_payload({"data": [record()] * MAX_RECORDS}).records) == MAX_RECORDS


def test_error_details_are_capped_with_a_count_of_the_rest():
    result = validate_payload({"data": [without("age")] * (MAX_REPORTED_ERRORS + 5)})
    assert len(result.errors) == MAX_REPORTED_ERRORS + 5
    details = result.error_details()
    assert len(details) == MAX_REPORTED_ERRORS + 1
    assert details[0] == {"field": "data[0].age", "error": "missing (required, number)"}
    assert details[-1]["field"] == "data" and "5 more problems" in details[-1]["error"]


def test_field_error_as_dict():
    assert FieldError("data[3].age", "must be >= 0, got -4").as_dict() == {
        "field": "data[3].age",
        "error": "must be >= 0, got -4",
    }
