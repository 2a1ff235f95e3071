"""The client side of the endpoint checks: make the HTTP calls, collect what came back.

Never raises for an endpoint that misbehaves (refuses connections, answers 500, answers garbage): every
outcome becomes an :class:`~mlrelease.domain.endpoint_checks.HttpObservation`, so the checks report
"expected X, actual Y" instead of a stack trace.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from mlrelease.domain.endpoint_checks import (
    MALFORMED_REQUEST,
    SEED_PERSONS,
    CheckReport,
    Expectation,
    HttpObservation,
    Observations,
    evaluate,
)


def _call(client: httpx.Client, method: str, url: str, json_body: Any = None) -> HttpObservation:
    started = time.perf_counter()
    try:
        response = client.request(method, url, json=json_body)
    except httpx.HTTPError as error:
        return HttpObservation(
            None, None, (time.perf_counter() - started) * 1000, f"{type(error).__name__}: {error}"
        )
    elapsed = (time.perf_counter() - started) * 1000
    try:
        body = response.json()
    except ValueError:
        body = response.text[:500]
    return HttpObservation(response.status_code, body, elapsed)


def observe(base_url: str, expect: Expectation, timeout_s: float = 30.0) -> Observations:
    with httpx.Client(timeout=timeout_s) as client:
        # One warm-up call so the latency check measures scoring, not the first connection.
        _call(client, "GET", f"{base_url}/health")
        return Observations(
            health=_call(client, "GET", f"{base_url}/health"),
            metadata=_call(client, "GET", f"{base_url}/metadata"),
            persons=_call(client, "POST", f"{base_url}/score", {"data": list(SEED_PERSONS)}),
            holdout=_call(client, "POST", f"{base_url}/score", {"data": expect.holdout_records}),
            malformed=_call(client, "POST", f"{base_url}/score", MALFORMED_REQUEST),
        )


def check_endpoint(endpoint: str, base_url: str, expect: Expectation) -> CheckReport:
    """Run every endpoint check against ``base_url`` and return the named results."""
    return CheckReport(endpoint, base_url, evaluate(observe(base_url, expect), expect))
