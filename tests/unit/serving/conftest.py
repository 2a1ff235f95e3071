"""Fixtures for the scoring service: a hand-built logistic-regression document and a deploy of it.

The document is the ``mlrelease.portable.v1`` shape the Spark exporter writes, built by hand so that a
test can compute the expected probability itself: one-hot blocks in schema order (an unseen value is
all zeros), then the six numerics, and P(>50K) = sigmoid(w . x + b).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.domain.payload import EXAMPLE_RECORD
from mlrelease.domain.schema import CATEGORICAL_FEATURES, NEGATIVE_LABEL, NUMERIC_FEATURES, POSITIVE_LABEL

LABELS: dict[str, list[str]] = {
    "workclass": ["Private", "Self-emp-not-inc", "State-gov", "Federal-gov", "?"],
    "education": ["HS-grad", "Bachelors", "Masters", "Doctorate", "?"],
    "marital_status": ["Married-civ-spouse", "Never-married", "Divorced", "?"],
    "occupation": ["Exec-managerial", "Adm-clerical", "Handlers-cleaners", "Prof-specialty", "?"],
    "relationship": ["Husband", "Not-in-family", "Own-child", "Wife", "?"],
    "race": ["White", "Black", "Asian-Pac-Islander", "?"],
    "sex": ["Male", "Female", "?"],
    "native_country": ["United-States", "Mexico", "India", "?"],
}
SURROGATES: dict[str, float] = {
    "age": 37.0,
    "fnlwgt": 178356.0,
    "education_num": 10.0,
    "capital_gain": 0.0,
    "capital_loss": 0.0,
    "hours_per_week": 40.0,
}
# Weights on the raw (unscaled) numerics, chosen so that probabilities stay well inside (0, 1).
NUMERIC_WEIGHTS: dict[str, float] = {
    "age": 0.03,
    "fnlwgt": 1e-7,
    "education_num": 0.25,
    "capital_gain": 0.0003,
    "capital_loss": 0.0006,
    "hours_per_week": 0.03,
}
CATEGORY_WEIGHTS: dict[str, float] = {
    "marital_status=Married-civ-spouse": 1.2,
    "education=Masters": 0.6,
    "education=Doctorate": 0.9,
    "occupation=Exec-managerial": 0.7,
    "occupation=Handlers-cleaners": -0.8,
    "sex=Female": -0.4,
    "workclass=?": -0.3,
}
INTERCEPT = -7.0


def lr_document(
    intercept: float = INTERCEPT,
    category_weights: dict[str, float] | None = None,
    numeric_weights: dict[str, float] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """A portable LR document; weights are keyed ``"field=value"`` (one-hot) or by numeric field name."""
    category_weights = CATEGORY_WEIGHTS if category_weights is None else category_weights
    numeric_weights = NUMERIC_WEIGHTS if numeric_weights is None else numeric_weights
    coefficients: list[float] = []
    for name in CATEGORICAL_FEATURES:
        coefficients += [category_weights.get(f"{name}={label}", 0.0) for label in LABELS[name]]
    coefficients += [numeric_weights.get(name, 0.0) for name in NUMERIC_FEATURES]
    return {
        "format": "mlrelease.portable.v1",
        "algorithm": "LogisticRegression",
        "spark_version": "4.3.0",
        "positive_label": POSITIVE_LABEL,
        "negative_label": NEGATIVE_LABEL,
        "missing_category": "?",
        "categorical": [{"name": name, "labels": list(LABELS[name])} for name in CATEGORICAL_FEATURES],
        "numeric": [{"name": name, "surrogate": SURROGATES[name]} for name in NUMERIC_FEATURES],
        "num_features": sum(len(labels) for labels in LABELS.values()) + len(NUMERIC_FEATURES),
        "model": {"coefficients": coefficients, "intercept": intercept, "threshold": threshold},
    }


def expected_probability(document: dict[str, Any], record: dict[str, Any]) -> float:
    """P(>50K) computed straight from the document, independently of the scorer under test."""
    x: list[float] = []
    for block in document["categorical"]:
        x += [1.0 if record[block["name"]] == label else 0.0 for label in block["labels"]]
    x += [float(record[spec["name"]]) for spec in document["numeric"]]
    model = document["model"]
    z = sum(w * v for w, v in zip(model["coefficients"], x, strict=True)) + model["intercept"]
    return 1.0 / (1.0 + math.exp(-z))


def record(**overrides: Any) -> dict[str, Any]:
    return {**EXAMPLE_RECORD, **overrides}


@dataclass(frozen=True)
class Deploy:
    artifact: Path
    desired: dict[str, Any]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_deploy(
    state_dir: Path,
    document: dict[str, Any] | bytes,
    version: str = "1",
    release_id: str = "rel-1",
    sha256: str | None = None,
    stage: str = "test",
) -> Deploy:
    """Write the artifact and desired.json as the deployer does (artifact path absolute, sha256 of its bytes)."""
    artifacts = state_dir.parent / "artifacts" / f"v{version}-{release_id}"
    artifacts.mkdir(parents=True, exist_ok=True)
    artifact = artifacts / "portable_model.json"
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    artifact.write_bytes(data)
    desired = {
        "model": {"name": "income-classifier", "version": version},
        "release_id": release_id,
        "artifact": str(artifact.resolve()),
        "artifact_sha256": sha256 or sha256_bytes(data),
        "lineage": {"training_run": f"run-{version}", "dataset_sha256": "abc123"},
        "deployed_at": "2025-11-26T10:00:00+00:00",
        "stage": stage,
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "desired.json").write_text(json.dumps(desired))
    return Deploy(artifact, desired)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "endpoints" / "test"
    path.mkdir(parents=True)
    return path


@pytest.fixture
def audit(tmp_path: Path) -> SqliteAuditLog:
    return SqliteAuditLog(tmp_path / "audit.db")


@pytest.fixture
def deploy(state_dir: Path) -> Callable[..., Deploy]:
    def _deploy(document: dict[str, Any] | bytes | None = None, **kwargs: Any) -> Deploy:
        return write_deploy(state_dir, lr_document() if document is None else document, **kwargs)

    return _deploy
