from __future__ import annotations

import pytest

from mlrelease.domain.endpoint_checks import (
    MALFORMED_REQUEST,
    PERSON_1,
    PERSON_3,
    CheckReport,
    Expectation,
    HttpObservation,
    Observations,
    contract_checks,
    health_check,
    metadata_check,
)

RECORDS = [PERSON_1, PERSON_3]
OFFLINE = [{"label": ">50K", "probability": 0.91}, {"label": "<=50K", "probability": 0.02}]
EXPECT = Expectation("income-classifier", "3", "rel-3", RECORDS, OFFLINE, latency_budget_ms=500)
METADATA = {"model": {"name": "income-classifier", "version": "3"}, "release_id": "rel-3"}


def scored(predictions, served=METADATA):
    return HttpObservation(200, {"request_id": "x", **served, "predictions": predictions}, 20.0)


def healthy(**overrides) -> Observations:
    fields = dict(
        persons=scored(
            [
                {"label": ">50K", "probability": 0.9},
                {"label": "<=50K", "probability": 0.45},
                {"label": "<=50K", "probability": 0.01},
            ]
        ),
        holdout=scored([dict(p) for p in OFFLINE]),
        malformed=HttpObservation(422, {"details": [{"field": "data[0].age", "error": "must be >= 0"}]}),
    )
    return Observations(**{**fields, **overrides})


PLATFORM = {"health": HttpObservation(200, {"status": "ready"}), "metadata": HttpObservation(200, METADATA)}


def evaluate(observations, expect, platform=None):
    """The local backend's order: its platform checks, then the contract's."""
    platform = {**PLATFORM, **(platform or {})}
    return [
        health_check(platform["health"]),
        metadata_check(platform["metadata"], expect),
        *contract_checks(observations, expect),
    ]


def by_name(observations, **platform):
    return {check.name: check for check in evaluate(observations, EXPECT, platform)}


def test_a_healthy_endpoint_passes_every_check():
    checks = by_name(healthy())
    assert all(check.passed for check in checks.values()), [c.line() for c in checks.values() if not c.passed]
    assert list(checks) == [
        "health",
        "metadata_version",
        "served_model",
        "person_1_high_income",
        "person_2_shape",
        "person_3_low_income",
        "one_prediction_per_record",
        "holdout_parity",
        "latency",
        "malformed_request_rejected",
    ]


@pytest.mark.parametrize(
    ("overrides", "failing", "actual_mentions"),
    [
        ({"health": HttpObservation(503, {"status": "not ready"})}, "health", "HTTP 503"),
        ({"health": HttpObservation(None, error="ConnectError: refused")}, "health", "refused"),
        (
            {
                "metadata": HttpObservation(
                    200, {**METADATA, "model": {"name": "income-classifier", "version": "2"}}
                )
            },
            "metadata_version",
            "version 2",
        ),
        (
            {"persons": scored([{"label": "<=50K", "probability": 0.2}] * 3)},
            "person_1_high_income",
            "label <=50K",
        ),
        (
            {"persons": scored([{"label": ">50K", "probability": 0.9}] * 3)},
            "person_3_low_income",
            "label >50K",
        ),
        ({"persons": scored([{"label": ">50K", "probability": 0.9}])}, "person_2_shape", "no prediction"),
        ({"holdout": scored([OFFLINE[0]])}, "one_prediction_per_record", "1 predictions"),
        (
            {"holdout": scored([OFFLINE[0], {"label": "<=50K", "probability": 0.02 + 2e-6}])},
            "holdout_parity",
            "max |dp| 2.00e-06",
        ),
        (
            {"holdout": scored([OFFLINE[0], {"label": ">50K", "probability": 0.02}])},
            "holdout_parity",
            "1 label mismatches (first at row 1)",
        ),
        ({"holdout": HttpObservation(200, {**METADATA, "predictions": OFFLINE}, 900.0)}, "latency", "900 ms"),
        (
            {"holdout": scored([dict(p) for p in OFFLINE], {**METADATA, "release_id": "rel-2"})},
            "served_model",
            "release rel-2",
        ),
        ({"persons": HttpObservation(401, {"error": "no key"})}, "served_model", "no model named (HTTP 401)"),
        (
            {"malformed": HttpObservation(500, "Internal Server Error")},
            "malformed_request_rejected",
            "HTTP 500",
        ),
        ({"malformed": HttpObservation(200, {"predictions": []})}, "malformed_request_rejected", "HTTP 200"),
    ],
)
def test_each_failure_is_named_with_expected_and_actual(overrides, failing, actual_mentions):
    platform = {k: overrides.pop(k) for k in ("health", "metadata") if k in overrides}
    checks = by_name(healthy(**overrides), **platform)
    assert not checks[failing].passed
    assert actual_mentions in checks[failing].actual
    assert checks[failing].line().startswith(f"FAIL {failing}: expected ")


def test_the_malformed_request_really_is_malformed():
    record = MALFORMED_REQUEST["data"][0]
    assert record["age"] < 0 and "sex" not in record


def test_report_passes_only_when_every_check_passed_and_round_trips():
    report = CheckReport("test", "http://127.0.0.1:1", evaluate(healthy(), EXPECT))
    assert report.passed and report.failed == []
    assert CheckReport.from_dict(report.to_dict()) == report
    failing = CheckReport("test", "u", evaluate(healthy(), EXPECT, {"health": HttpObservation(503)}))
    assert not failing.passed and [c.name for c in failing.failed] == ["health"]
    assert not CheckReport("test", "u", []).passed


def test_the_contract_checks_need_neither_health_nor_metadata_routes():
    """An endpoint with a key and no /metadata (Azure ML) is judged on its score answers alone."""
    checks = contract_checks(healthy(), EXPECT)
    assert all(c.passed for c in checks) and {"health", "metadata_version"}.isdisjoint(c.name for c in checks)
