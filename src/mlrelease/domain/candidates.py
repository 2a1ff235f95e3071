"""The candidate models: the one file to edit to change what the nightly run tries.

Each candidate is a name, a Spark ML algorithm and its constructor parameters. The DAG's
``candidates`` Param picks a subset by name for one run; an empty selection means
:data:`DEFAULT_CANDIDATES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

ALGORITHMS = (
    "LogisticRegression",
    "DecisionTreeClassifier",
    "RandomForestClassifier",
    "GBTClassifier",
)


@dataclass(frozen=True)
class Candidate:
    name: str
    algorithm: str
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "algorithm": self.algorithm, "params": dict(self.params)}


CANDIDATES: dict[str, Candidate] = {
    c.name: c
    for c in (
        *(
            Candidate(f"lr_reg_{reg:g}", "LogisticRegression", {"regParam": reg, "maxIter": 100})
            for reg in (0.0, 0.01, 0.5, 2.0)
        ),
        *(
            Candidate(f"dt_depth_{depth}", "DecisionTreeClassifier", {"maxDepth": depth})
            for depth in (1, 3, 5, 10)
        ),
        Candidate("rf_100_depth_8", "RandomForestClassifier", {"numTrees": 100, "maxDepth": 8}),
        Candidate("gbt_50_depth_5", "GBTClassifier", {"maxIter": 50, "maxDepth": 5, "stepSize": 0.1}),
    )
}
DEFAULT_CANDIDATES: tuple[str, ...] = tuple(CANDIDATES)


def resolve_candidates(names: Iterable[str] | None) -> list[Candidate]:
    """Turn a selection of names (None or empty: all defaults) into candidates, rejecting unknown names."""
    selected = list(dict.fromkeys(n.strip() for n in (names or []) if n and n.strip()))
    if not selected:
        selected = list(DEFAULT_CANDIDATES)
    unknown = [name for name in selected if name not in CANDIDATES]
    if unknown:
        raise ValueError(
            f"Unknown candidate(s) {unknown} in the 'candidates' param; choose from {sorted(CANDIDATES)} "
            "or add them to src/mlrelease/domain/candidates.py"
        )
    for name in selected:
        if CANDIDATES[name].algorithm not in ALGORITHMS:
            raise ValueError(f"Candidate {name!r} uses unsupported algorithm {CANDIDATES[name].algorithm!r}")
    return [CANDIDATES[name] for name in selected]
