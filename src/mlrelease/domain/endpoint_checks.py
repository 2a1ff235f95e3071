"""Endpoint checks: does a deployed endpoint serve the model we registered, correctly?

Two kinds, so a second platform adds checks instead of changing them:

* **contract checks** (:func:`contract_checks`), the same on every platform: they use only
  ``POST /score`` (whose answer names model, version and release), so they work against an endpoint
  that needs a key and has no ``/metadata`` route;
* **platform checks**, each backend's own (the local service's ``/health`` and ``/metadata``:
  :func:`health_check`, :func:`metadata_check`; Azure ML's provisioning state and key auth live in
  its backend).

The probe (``mlrelease.backends.probe``) makes the HTTP calls and collects what came back into
:class:`Observations`; the functions here turn those into named pass/fail checks with expected and
actual values. Splitting the two keeps every rule a pure function that a unit test can drive with any
response, including the broken ones a real endpoint rarely produces on demand.

The three persons are the seed's (its ``50_testEndpoint.py``): person 1 is a 39-year-old State-gov
Bachelor with a capital gain of 23,174 (must be ``>50K``), person 3 a 38-year-old divorced HS-grad
handler-cleaner in the private sector (must be ``<=50K``), person 2 a borderline case that is only
checked for shape. Persons 2 and 3 are rows 2 and 3 of adult.data; person 1 is row 1 with the capital
gain raised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mlrelease.domain.payload import EXAMPLE_RECORD
from mlrelease.domain.schema import NEGATIVE_LABEL, POSITIVE_LABEL
from mlrelease.domain.served import ServedModelRef

PERSON_1: dict[str, Any] = {**EXAMPLE_RECORD, "capital_gain": 23174}
PERSON_2: dict[str, Any] = {
    "age": 50,
    "workclass": "Self-emp-not-inc",
    "fnlwgt": 83311,
    "education": "Bachelors",
    "education_num": 13,
    "marital_status": "Married-civ-spouse",
    "occupation": "Exec-managerial",
    "relationship": "Husband",
    "race": "White",
    "sex": "Male",
    "capital_gain": 0,
    "capital_loss": 0,
    "hours_per_week": 13,
    "native_country": "United-States",
}
PERSON_3: dict[str, Any] = {
    "age": 38,
    "workclass": "Private",
    "fnlwgt": 215646,
    "education": "HS-grad",
    "education_num": 9,
    "marital_status": "Divorced",
    "occupation": "Handlers-cleaners",
    "relationship": "Not-in-family",
    "race": "White",
    "sex": "Male",
    "capital_gain": 0,
    "capital_loss": 0,
    "hours_per_week": 40,
    "native_country": "United-States",
}
SEED_PERSONS = (PERSON_1, PERSON_2, PERSON_3)
# A request the service must refuse with a 4xx: a negative age and a missing field.
MALFORMED_REQUEST: dict[str, Any] = {
    "data": [{**{k: v for k, v in PERSON_3.items() if k != "sex"}, "age": -4}]
}
PARITY_TOLERANCE = 1e-6
DEFAULT_LATENCY_BUDGET_MS = 2000.0


@dataclass(frozen=True)
class HttpObservation:
    """One HTTP exchange: status (None if the request itself failed), JSON body, round-trip time."""

    status: int | None
    body: Any = None
    elapsed_ms: float = 0.0
    error: str | None = None

    def describe(self) -> str:
        if self.status is None:
            return f"no answer ({self.error})"
        return f"HTTP {self.status}"


@dataclass(frozen=True)
class Observations:
    """The answers to the contract's three ``POST /score`` requests."""

    persons: HttpObservation
    holdout: HttpObservation
    malformed: HttpObservation


@dataclass(frozen=True)
class Expectation:
    model_name: str
    version: str
    release_id: str
    holdout_records: list[dict[str, Any]]
    holdout_predictions: list[dict[str, Any]]
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS

    @property
    def served(self) -> ServedModelRef:
        return ServedModelRef(self.model_name, self.version, self.release_id)


@dataclass(frozen=True)
class EndpointCheck:
    name: str
    passed: bool
    expected: str
    actual: str

    def line(self) -> str:
        state = "pass" if self.passed else "FAIL"
        return f"{state:4} {self.name}: expected {self.expected}; actual {self.actual}"


@dataclass(frozen=True)
class CheckReport:
    endpoint: str
    url: str
    checks: list[EndpointCheck] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    @property
    def failed(self) -> list[EndpointCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "url": self.url,
            "passed": self.passed,
            "checks": [asdict(check) for check in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckReport:
        return cls(data["endpoint"], data["url"], [EndpointCheck(**c) for c in data.get("checks", [])])


def _predictions(observation: HttpObservation) -> list[dict[str, Any]] | None:
    body = observation.body
    if observation.status != 200 or not isinstance(body, dict):
        return None
    predictions = body.get("predictions")
    return predictions if isinstance(predictions, list) else None


def _valid_prediction(prediction: Any) -> bool:
    if not isinstance(prediction, dict) or prediction.get("label") not in (POSITIVE_LABEL, NEGATIVE_LABEL):
        return False
    probability = prediction.get("probability")
    return isinstance(probability, int | float) and math.isfinite(probability) and 0.0 <= probability <= 1.0


def _person_check(name: str, predictions: list | None, index: int, want: str | None) -> EndpointCheck:
    expected = f"label {want}" if want else "a label and a probability in [0, 1]"
    if predictions is None or len(predictions) <= index:
        return EndpointCheck(name, False, expected, "no prediction for this person")
    got = predictions[index]
    if not _valid_prediction(got):
        return EndpointCheck(name, False, expected, f"malformed prediction {got!r}")
    actual = f"label {got['label']} (P(>50K)={got['probability']:.4f})"
    return EndpointCheck(name, want is None or got["label"] == want, expected, actual)


def _parity_check(expect: Expectation, predictions: list | None, status: str) -> EndpointCheck:
    n = len(expect.holdout_predictions)
    expected = f"{n} held-out predictions equal to the registered model's offline ones (|dp| <= {PARITY_TOLERANCE:g})"
    if predictions is None or len(predictions) != n:
        got = status if predictions is None else f"{len(predictions)} predictions"
        return EndpointCheck("holdout_parity", False, expected, got)
    label_mismatches = [
        i
        for i, (a, b) in enumerate(zip(predictions, expect.holdout_predictions, strict=True))
        if a.get("label") != b["label"]
    ]
    diffs = [
        abs(float(a.get("probability", math.nan)) - float(b["probability"]))
        for a, b in zip(predictions, expect.holdout_predictions, strict=True)
    ]
    worst = max(diffs) if diffs else 0.0
    ok = not label_mismatches and not any(math.isnan(d) for d in diffs) and worst <= PARITY_TOLERANCE
    actual = f"{len(label_mismatches)} label mismatches"
    if label_mismatches:
        actual += f" (first at row {label_mismatches[0]})"
    actual += f", max |dp| {worst:.2e}"
    return EndpointCheck("holdout_parity", ok, expected, actual)


def health_check(health: HttpObservation) -> EndpointCheck:
    """Platform check of the local service: ``GET /health`` says ready."""
    ready = health.status == 200 and isinstance(health.body, dict) and health.body.get("status") == "ready"
    return EndpointCheck(
        "health", ready, "HTTP 200 with status ready", f"{health.describe()} {health.body!r}"[:300]
    )


def metadata_check(metadata: HttpObservation, expect: Expectation) -> EndpointCheck:
    """Platform check of the local service: ``GET /metadata`` names the expected model and release."""
    served = ServedModelRef.from_document(metadata.body if isinstance(metadata.body, dict) else None)
    return EndpointCheck(
        "metadata_version",
        metadata.status == 200 and expect.served.same_as(served),
        expect.served.describe(),
        f"{metadata.describe()}: {served.describe() if served else 'no model named'}",
    )


def _served_model_check(observations: Observations, expect: Expectation) -> EndpointCheck:
    """Both scoring answers name the expected model, version and release (the contract's identity)."""
    answers = [observations.persons, observations.holdout]
    named = [
        ServedModelRef.from_document(a.body if isinstance(a.body, dict) else None)
        if a.status == 200
        else None
        for a in answers
    ]
    ok = all(expect.served.same_as(ref) for ref in named)
    actual = "; ".join(
        ref.describe() if ref else f"no model named ({answer.describe()})"
        for ref, answer in zip(named, answers, strict=True)
    )
    return EndpointCheck("served_model", ok, expect.served.describe(), actual)


def contract_checks(observations: Observations, expect: Expectation) -> list[EndpointCheck]:
    """Every check of the scoring contract, in the order an on-call engineer would read them."""
    checks: list[EndpointCheck] = [_served_model_check(observations, expect)]
    persons = _predictions(observations.persons)
    checks.append(_person_check("person_1_high_income", persons, 0, POSITIVE_LABEL))
    checks.append(_person_check("person_2_shape", persons, 1, None))
    checks.append(_person_check("person_3_low_income", persons, 2, NEGATIVE_LABEL))

    holdout = _predictions(observations.holdout)
    n = len(expect.holdout_records)
    checks.append(
        EndpointCheck(
            "one_prediction_per_record",
            holdout is not None and len(holdout) == n and all(_valid_prediction(p) for p in holdout),
            f"{n} well-formed predictions for {n} records",
            observations.holdout.describe()
            if holdout is None
            else f"{len(holdout)} predictions, {sum(not _valid_prediction(p) for p in holdout)} malformed",
        )
    )
    checks.append(_parity_check(expect, holdout, observations.holdout.describe()))
    elapsed = observations.holdout.elapsed_ms
    checks.append(
        EndpointCheck(
            "latency",
            observations.holdout.status == 200 and elapsed <= expect.latency_budget_ms,
            f"{n} records scored within {expect.latency_budget_ms:.0f} ms",
            f"{elapsed:.0f} ms ({observations.holdout.describe()})",
        )
    )

    bad = observations.malformed
    details = bad.body.get("details") if isinstance(bad.body, dict) else None
    named = isinstance(details, list) and any(isinstance(d, dict) and d.get("field") for d in details)
    checks.append(
        EndpointCheck(
            "malformed_request_rejected",
            bad.status is not None and 400 <= bad.status < 500 and named,
            "HTTP 4xx naming the bad fields",
            f"{bad.describe()}, fields named: {[d.get('field') for d in details] if named else 'none'}",
        )
    )
    return checks
