"""Choosing the winner among the child runs of one training run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SELECTION_METRICS = ("areaUnderROC", "areaUnderPR", "f1", "accuracy", "precision", "recall")
DEFAULT_SELECTION_METRIC = "areaUnderROC"


@dataclass(frozen=True)
class CandidateResult:
    """One finished child run: its candidate, parameters and metrics (``val_*``, ``test_*``, ``fit_seconds``)."""

    candidate: str
    run_id: str
    algorithm: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str | None = None

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or math.isnan(value) else float(value)


class NoEligibleCandidateError(RuntimeError):
    """No child run has the selection metric; nothing can be chosen."""


def select_winner(results: list[CandidateResult], metric: str = DEFAULT_SELECTION_METRIC) -> CandidateResult:
    """The best child run on the *validation* metric (``val_<metric>``).

    Ties break on the candidate name so the choice is deterministic across retries. The held-out
    metrics are deliberately not used here: they are reserved for the gate, so the gate's check is not
    biased by having picked the winner on the same data.
    """
    if metric not in SELECTION_METRICS:
        raise ValueError(f"selection metric {metric!r} is not one of {SELECTION_METRICS}")
    key = f"val_{metric}"
    eligible = [r for r in results if r.metric(key) is not None]
    if not eligible:
        names = [r.candidate for r in results] or "none"
        raise NoEligibleCandidateError(
            f"No child run has metric {key!r} (child runs: {names}); check the training task's log"
        )
    return sorted(eligible, key=lambda r: (-r.metric(key), r.candidate))[0]


def rank(results: list[CandidateResult], metric: str = "areaUnderROC") -> list[CandidateResult]:
    key = f"val_{metric}"
    return sorted(
        results,
        key=lambda r: (r.metric(key) is None, -(r.metric(key) or 0.0), r.candidate),
    )
