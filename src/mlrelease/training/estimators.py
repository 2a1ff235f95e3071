"""The candidate classifiers: which algorithms a candidate may name, and its validation.

A candidate is ``{"name", "algorithm", "params"}`` (``mlrelease.domain.candidates`` holds the catalogue).
Every problem is reported before any Spark work, naming the candidate and the offending field.
"""

from __future__ import annotations

import json
from typing import Any

from pyspark.ml.base import Estimator
from pyspark.ml.classification import (
    DecisionTreeClassifier,
    GBTClassifier,
    LogisticRegression,
    RandomForestClassifier,
)

from mlrelease.training.features import FEATURES_COL, TARGET_COL

ALGORITHMS: dict[str, type[Estimator]] = {
    "LogisticRegression": LogisticRegression,
    "DecisionTreeClassifier": DecisionTreeClassifier,
    "RandomForestClassifier": RandomForestClassifier,
    "GBTClassifier": GBTClassifier,
}
# Column wiring is owned by this job; a candidate may not redirect it.
RESERVED_PARAMS = frozenset(
    {"featuresCol", "labelCol", "predictionCol", "probabilityCol", "rawPredictionCol", "weightCol"}
)


def make_estimator(candidate: dict[str, Any], seed: int = 42) -> Estimator:
    """Build the pyspark.ml classifier described by ``candidate`` ({"name", "algorithm", "params"}).

    Raises ValueError naming the candidate and the offending field for an unknown algorithm, an unknown
    or reserved param, or a value the estimator rejects.
    """
    name = candidate.get("name") if isinstance(candidate, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"candidate {candidate!r}: field 'name' must be a non-empty string")
    algorithm = candidate.get("algorithm")
    if algorithm not in ALGORITHMS:
        raise ValueError(
            f"candidate {name!r}: unknown algorithm {algorithm!r} (field 'algorithm'); "
            f"expected one of {sorted(ALGORITHMS)}"
        )
    params = candidate.get("params") or {}
    if not isinstance(params, dict):
        raise ValueError(f"candidate {name!r}: field 'params' must be a JSON object, got {params!r}")
    unknown_fields = set(candidate) - {"name", "algorithm", "params"}
    if unknown_fields:
        raise ValueError(f"candidate {name!r}: unknown field(s) {sorted(unknown_fields)}")

    estimator = ALGORITHMS[algorithm](featuresCol=FEATURES_COL, labelCol=TARGET_COL)
    if estimator.hasParam("seed"):
        estimator._set(seed=seed)
    for param, value in params.items():
        if param in RESERVED_PARAMS:
            raise ValueError(f"candidate {name!r}: param {param!r} is reserved (set by the job)")
        if not estimator.hasParam(param):
            raise ValueError(
                f"candidate {name!r}: unknown param {param!r} for {algorithm}; "
                f"valid params: {sorted(p.name for p in estimator.params if p.name not in RESERVED_PARAMS)}"
            )
        try:
            estimator._set(**{param: value})
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"candidate {name!r}: invalid value {value!r} for param {param!r} of {algorithm}: {exc}"
            ) from exc
    return estimator


def parse_candidates(value: str) -> list[dict[str, Any]]:
    """Parse --candidates-json (inline JSON or ``@path``) and validate names are unique."""
    if value.startswith("@"):
        with open(value[1:], encoding="utf-8") as handle:
            value = handle.read()
    try:
        candidates = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--candidates-json is not valid JSON: {exc}") from exc
    if not isinstance(candidates, list) or not candidates:
        raise ValueError("--candidates-json must be a non-empty JSON list of candidate objects")
    seen: set[str] = set()
    for candidate in candidates:
        if not isinstance(candidate, dict):
            raise ValueError(f"candidate {candidate!r}: must be a JSON object")
        name = candidate.get("name")
        if name in seen:
            raise ValueError(f"candidate {name!r}: duplicate candidate name")
        seen.add(name)
    return candidates
