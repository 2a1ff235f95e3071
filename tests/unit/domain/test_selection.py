from __future__ import annotations

import math

import pytest

from mlrelease.domain.selection import CandidateResult, NoEligibleCandidateError, rank, select_winner


def result(name: str, val_auc: float | None, test_auc: float = 0.9, **metrics: float) -> CandidateResult:
    values = {"test_areaUnderROC": test_auc, **metrics}
    if val_auc is not None:
        values["val_areaUnderROC"] = val_auc
    return CandidateResult(
        candidate=name, run_id=f"run-{name}", algorithm="LogisticRegression", metrics=values
    )


def test_winner_is_best_on_validation_not_on_held_out():
    results = [result("a", 0.90, test_auc=0.99), result("b", 0.92, test_auc=0.80), result("c", 0.91)]
    assert select_winner(results).candidate == "b"


def test_selection_metric_is_configurable():
    results = [
        result("a", 0.95, val_f1=0.60),
        result("b", 0.90, val_f1=0.70),
    ]
    assert select_winner(results, "f1").candidate == "b"
    assert select_winner(results, "areaUnderROC").candidate == "a"


def test_ties_break_on_name_so_retries_choose_the_same_winner():
    results = [result("zeta", 0.9), result("alpha", 0.9), result("mid", 0.9)]
    assert select_winner(results).candidate == "alpha"
    assert select_winner(list(reversed(results))).candidate == "alpha"


def test_runs_without_the_metric_or_with_nan_are_ignored():
    results = [result("no-metric", None), result("nan", math.nan), result("ok", 0.7)]
    assert select_winner(results).candidate == "ok"


def test_no_eligible_candidate_is_a_clear_error():
    with pytest.raises(NoEligibleCandidateError, match="val_areaUnderROC"):
        select_winner([result("a", None)])
    with pytest.raises(NoEligibleCandidateError, match="none"):
        select_winner([])


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="selection metric"):
        select_winner([result("a", 0.9)], "logloss")


def test_rank_puts_missing_metrics_last():
    ranked = rank([result("x", None), result("y", 0.5), result("z", 0.8)])
    assert [r.candidate for r in ranked] == ["z", "y", "x"]
