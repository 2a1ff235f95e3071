from __future__ import annotations

import pytest

from mlrelease.domain.candidates import CANDIDATES, DEFAULT_CANDIDATES, resolve_candidates


def test_default_set_has_the_required_families_and_grids():
    by_algorithm: dict[str, list] = {}
    for candidate in CANDIDATES.values():
        by_algorithm.setdefault(candidate.algorithm, []).append(candidate.params)
    assert sorted(p["regParam"] for p in by_algorithm["LogisticRegression"]) == [0.0, 0.01, 0.5, 2.0]
    assert sorted(p["maxDepth"] for p in by_algorithm["DecisionTreeClassifier"]) == [1, 3, 5, 10]
    assert by_algorithm["GBTClassifier"] and by_algorithm["RandomForestClassifier"]


def test_empty_selection_means_defaults_and_order_is_kept_without_duplicates():
    assert [c.name for c in resolve_candidates([])] == list(DEFAULT_CANDIDATES)
    assert [c.name for c in resolve_candidates(None)] == list(DEFAULT_CANDIDATES)
    picked = resolve_candidates(["dt_depth_5", "lr_reg_0.01", "dt_depth_5"])
    assert [c.name for c in picked] == ["dt_depth_5", "lr_reg_0.01"]


def test_unknown_candidate_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match=r"Unknown candidate\(s\) \['svm'\].*lr_reg_0.01"):
        resolve_candidates(["lr_reg_0.01", "svm"])
