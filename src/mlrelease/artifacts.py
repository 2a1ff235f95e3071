"""Local copies of a registered version's training-run artifacts, fetched once per version.

The release code needs the held-out predictions (for the parity check) and the local endpoints need
the portable model file; both come from the version's source run through the experiment tracker,
whichever store it is (local MLflow, Databricks), and are cached under ``MLRELEASE_HOME/models``.
"""

from __future__ import annotations

from pathlib import Path

from mlrelease.backends.base import ExperimentTracker, ModelVersionRef


class ArtifactUnavailable(RuntimeError):
    """A registered version's artifact could not be fetched; the message says why and what to do."""


def fetch_run_artifact(
    tracker: ExperimentTracker, models_dir: Path, ref: ModelVersionRef, artifact: str
) -> Path:
    if not ref.run_id:
        raise ArtifactUnavailable(
            f"{ref.name} version {ref.version} has no source run id to fetch {artifact!r} from"
        )
    # Keyed by the training run too: a version number names another model in another registry (a
    # fresh Azure ML workspace numbers from 1 again), and a stale copy must never be served for it.
    target = models_dir / ref.name / ref.version / ref.run_id
    local = target / artifact
    if local.is_file():
        return local
    try:
        tracker.download_artifact(ref.run_id, artifact, target / artifact.rsplit("/", 1)[0])
    except Exception as error:
        raise ArtifactUnavailable(
            f"{ref.name} version {ref.version}: could not fetch artifact {artifact!r} of run {ref.run_id} "
            f"({error}). Models trained before the scoring service existed have no portable export: "
            "retrain (trigger the DAG) to get a deployable version."
        ) from error
    return local
