"""The client side of the endpoint checks: make the contract's HTTP calls, collect what came back.

Shared by the endpoint backends (each adds its platform checks): a ``Target`` is where the calls go
and with which headers (a key, Azure ML's ``azureml-model-deployment`` to reach a deployment that has
no traffic yet). Never raises for an endpoint that misbehaves (refuses connections, answers 500,
answers garbage): every outcome becomes an
:class:`~mlrelease.domain.endpoint_checks.HttpObservation`, so the checks report "expected X, actual
Y" instead of a stack trace. Headers are never logged or recorded (they may hold a key).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from mlrelease.domain.endpoint_checks import (
    MALFORMED_REQUEST,
    SEED_PERSONS,
    EndpointCheck,
    Expectation,
    HttpObservation,
    Observations,
    contract_checks,
)


@dataclass(frozen=True)
class Target:
    """Where the checks send their requests: ``base_url`` + ``/score``, with these headers."""

    base_url: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    verify: bool | str = True  # a CA bundle path for an endpoint with a private certificate


def call(client: httpx.Client, method: str, url: str, json_body: Any = None) -> HttpObservation:
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


def client_for(target: Target, timeout_s: float = 30.0) -> httpx.Client:
    return httpx.Client(timeout=timeout_s, headers=target.headers, verify=target.verify)


def observe(target: Target, expect: Expectation, timeout_s: float = 30.0) -> Observations:
    score = f"{target.base_url}/score"
    with client_for(target, timeout_s) as client:
        # One warm-up call so the latency check measures scoring, not the first connection.
        call(client, "POST", score, {"data": [SEED_PERSONS[0]]})
        return Observations(
            persons=call(client, "POST", score, {"data": list(SEED_PERSONS)}),
            holdout=call(client, "POST", score, {"data": expect.holdout_records}),
            malformed=call(client, "POST", score, MALFORMED_REQUEST),
        )


def run_contract_checks(target: Target, expect: Expectation) -> list[EndpointCheck]:
    """The contract checks (the same on every platform) against ``target``."""
    return contract_checks(observe(target, expect), expect)
