from __future__ import annotations

import pytest

from mlrelease.domain.gate import GateDecision, GateMode, GatePolicy, decide


def test_enforce_approves_above_bar_with_no_champion_yet():
    decision = decide(GatePolicy(), challenger_value=0.90)
    assert decision.approved and decision.checks_passed
    assert [c.name for c in decision.checks] == ["quality_bar", "champion"]
    assert "no model is aliased 'prod'" in decision.checks[1].detail


def test_enforce_rejects_below_bar_and_says_both_numbers():
    decision = decide(GatePolicy(min_value=0.88), challenger_value=0.8712)
    assert not decision.approved and not decision.checks_passed
    assert "0.8712" in decision.reason and "0.8800" in decision.reason
    assert decision.reason.startswith("rejected")


def test_bar_is_inclusive():
    assert decide(GatePolicy(min_value=0.88), challenger_value=0.88).approved


def test_champion_comparison_within_tolerance_passes():
    decision = decide(
        GatePolicy(champion_tolerance=0.005),
        challenger_value=0.900,
        champion_version="3",
        champion_value=0.904,
    )
    assert decision.approved
    assert "v3" in decision.checks[1].detail


def test_champion_comparison_beyond_tolerance_rejects_with_numbers():
    decision = decide(
        GatePolicy(champion_tolerance=0.005),
        challenger_value=0.890,
        champion_version="3",
        champion_value=0.900,
    )
    assert not decision.approved
    champion_check = decision.checks[1]
    assert not champion_check.passed
    assert "0.8900" in champion_check.detail and "0.9000" in champion_check.detail
    assert "0.0050" in champion_check.detail and "0.8950" in champion_check.detail


def test_champion_without_a_held_out_score_fails_closed():
    decision = decide(GatePolicy(), challenger_value=0.95, champion_version="2", champion_value=None)
    assert not decision.approved


def test_missing_challenger_metric_fails_closed():
    assert not decide(GatePolicy(), challenger_value=None).approved


def test_dry_run_passes_but_records_the_would_be_rejection():
    decision = decide(GatePolicy(mode="dry_run"), challenger_value=0.5)
    assert decision.approved
    assert not decision.checks_passed
    assert decision.reason.startswith("DRY RUN, would have rejected")


def test_disabled_passes_and_says_so_loudly():
    decision = decide(GatePolicy(mode=GateMode.DISABLED), challenger_value=0.1)
    assert decision.approved and decision.checks == []
    assert "DISABLED" in decision.reason
    assert decision.mode == "disabled"


def test_unknown_mode_and_bad_tolerance_are_rejected():
    with pytest.raises(ValueError):
        GatePolicy(mode="yolo")
    with pytest.raises(ValueError, match="champion_tolerance"):
        GatePolicy(champion_tolerance=-0.1)


def test_decision_round_trips_through_xcom_form():
    decision = decide(GatePolicy(), challenger_value=0.91, champion_version="1", champion_value=0.9)
    assert GateDecision.from_dict(decision.to_dict()) == decision


def test_promotion_is_refused_when_prod_moved_after_the_gate_compared():
    from mlrelease.domain.gate import stale_champion

    assert stale_champion(compared="3", current="3", challenger="5") is None
    assert stale_champion(compared=None, current=None, challenger="1") is None  # first release
    assert stale_champion(compared="3", current="5", challenger="5") is None  # retry after promotion
    message = stale_champion(compared="3", current="4", challenger="5")
    assert message and "prod moved to version 4" in message and "with version 3" in message
    assert stale_champion(compared=None, current="2", challenger="3").startswith("prod moved to version 2")
