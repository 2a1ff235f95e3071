"""Local copies of a version's training-run artifacts: fetched once, never confused across runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlrelease.artifacts import ArtifactUnavailable, fetch_run_artifact
from mlrelease.backends.base import ModelVersionRef


class Tracker:
    def __init__(self) -> None:
        self.downloads: list[str] = []

    def download_artifact(self, run_id: str, artifact_path: str, dst_dir: Path) -> Path:
        self.downloads.append(run_id)
        dst_dir.mkdir(parents=True, exist_ok=True)
        path = dst_dir / Path(artifact_path).name
        path.write_text(f"from {run_id}")
        return path


def test_a_copy_is_reused_for_its_run_and_never_for_another_run_with_the_same_version(tmp_path):
    tracker = Tracker()
    old = ModelVersionRef("income-classifier", "1", run_id="run-old", source="s")
    new = ModelVersionRef("income-classifier", "1", run_id="run-new", source="s")  # a fresh registry
    assert fetch_run_artifact(tracker, tmp_path, old, "portable/a.json").read_text() == "from run-old"
    assert fetch_run_artifact(tracker, tmp_path, old, "portable/a.json").read_text() == "from run-old"
    assert fetch_run_artifact(tracker, tmp_path, new, "portable/a.json").read_text() == "from run-new"
    assert tracker.downloads == ["run-old", "run-new"]


def test_a_version_without_a_run_is_named():
    ref = ModelVersionRef("income-classifier", "2", run_id=None, source="s")
    with pytest.raises(ArtifactUnavailable, match="version 2 has no source run id"):
        fetch_run_artifact(Tracker(), Path("/nonexistent"), ref, "portable/a.json")
