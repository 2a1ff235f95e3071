"""Plain-text summaries for task logs and the command line: a compact candidates table and the verdict."""

from __future__ import annotations

import json

from mlrelease.domain.selection import CandidateResult, rank

_COLUMNS = (
    ("val_areaUnderROC", "val AUC"),
    ("val_areaUnderPR", "val PR"),
    ("val_f1", "val F1"),
    ("test_areaUnderROC", "test AUC"),
    ("test_areaUnderPR", "test PR"),
    ("test_accuracy", "test acc"),
    ("test_f1", "test F1"),
    ("fit_seconds", "fit s"),
)


def _format_params(params: dict) -> str:
    shown = {k: v for k, v in params.items() if k != "algorithm"}
    return json.dumps(shown, sort_keys=True, separators=(",", "=")).strip("{}").replace('"', "")


def candidates_table(
    results: list[CandidateResult], metric: str = "areaUnderROC", winner: str | None = None
) -> str:
    """A fixed-width table, best validation metric first, the winner marked with '*'."""
    rows = [("", "candidate", "algorithm", "params", *(label for _, label in _COLUMNS))]
    for result in rank(results, metric):
        values = []
        for key, _ in _COLUMNS:
            value = result.metric(key)
            values.append(
                "-" if value is None else (f"{value:.1f}" if key == "fit_seconds" else f"{value:.4f}")
            )
        rows.append(
            (
                "*" if result.candidate == winner else "",
                result.candidate,
                result.algorithm,
                _format_params(result.params),
                *values,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
