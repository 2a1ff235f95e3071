from __future__ import annotations

from mlrelease.domain.release import AliasInterval, alias_intervals, lineage_summary, release_id_for


def test_release_id_is_deterministic_per_dag_run_and_version():
    first = release_id_for("income_release/manual__1", "income-classifier", "3")
    assert first == release_id_for("income_release/manual__1", "income-classifier", "3")
    assert first.startswith("income-classifier-v3-") and len(first.rsplit("-", 1)[1]) == 8
    assert first != release_id_for("income_release/manual__2", "income-classifier", "3")
    assert first != release_id_for("income_release/manual__1", "income-classifier", "4")


def test_alias_intervals_say_which_version_was_prod_from_when_to_when():
    moves = [("t1", "1", "r1"), ("t2", "2", "r2"), ("t2b", "2", "r2"), ("t3", "1", "r3")]
    assert alias_intervals(moves) == [
        AliasInterval("1", "r1", "t1", "t2"),
        AliasInterval("2", "r2", "t2", "t3"),  # the replayed move to 2 does not open a new interval
        AliasInterval("1", "r3", "t3", None),
    ]
    assert alias_intervals([]) == []


def test_lineage_summary_reads_the_version_tags():
    summary = lineage_summary({"mlrelease.dataset.sha256": "abc", "mlrelease.triggered_by": "alice"})
    assert summary["dataset_sha256"] == "abc" and summary["triggered_by"] == "alice"
    assert summary["git_commit"] is None
