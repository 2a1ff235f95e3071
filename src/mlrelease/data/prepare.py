"""Read the training and held-out data, normalise it, validate it and fingerprint it.

The output is a pair of Parquet files with the seed's column names and clean values ('?' and empty
strings become missing, labels lose adult.test's trailing '.'), plus a fingerprint of the *source*
bytes. No row is ever dropped: for the Adult files the parsed row counts are checked against the
published counts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mlrelease.data.adult import EXPECTED_ROWS, ensure_adult_files
from mlrelease.domain.schema import (
    CATEGORICAL_FEATURES,
    LABEL,
    NUMERIC_FEATURES,
    RAW_COLUMN_ORDER,
    expected_schema,
    normalise_column_name,
)
from mlrelease.domain.validation import (
    DataValidationError,
    ValidationPolicy,
    ValidationReport,
    validate_frame,
)
from mlrelease.hashing import sha256_file, sha256_files

log = logging.getLogger(__name__)

# Bump when the normalisation below changes, so cached Parquet files are rebuilt.
NORMALISATION_VERSION = "1"
_MISSING_TOKENS = ["?", ""]


@dataclass(frozen=True)
class DataSource:
    """Where one data set comes from: the built-in Adult files or a user's CSV/Parquet path."""

    path: Path
    uri: str
    kind: str  # "adult-train", "adult-test" or "user"
    role: str  # "train" or "holdout"


@dataclass(frozen=True)
class PreparedDataset:
    fingerprint: dict
    train_path: Path
    holdout_path: Path
    reports: tuple[ValidationReport, ValidationReport]


def resolve_sources(
    cache_dir: Path, data_path: str | None, holdout_path: str | None
) -> tuple[DataSource, DataSource]:
    """Pick the user's files when given, else the verified Adult files."""
    if data_path or holdout_path:
        if not (data_path and holdout_path):
            raise ValueError(
                "data_path and holdout_path go together: set both (training file and held-out file, "
                f"CSV or Parquet with a header), or neither to use the Adult data. Got data_path={data_path!r}, "
                f"holdout_path={holdout_path!r}."
            )
        sources = []
        for role, value in (("train", data_path), ("holdout", holdout_path)):
            path = Path(value).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(
                    f"{role} data file {value!r} does not exist; fix the '{'data_path' if role == 'train' else 'holdout_path'}' "
                    "DAG param (or MLRELEASE_DATA_PATH / MLRELEASE_HOLDOUT_PATH)"
                )
            if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
                raise ValueError(f"{role} data file {value!r}: only .csv and .parquet files are supported")
            sources.append(DataSource(path, path.as_uri(), "user", role))
        return sources[0], sources[1]
    files = ensure_adult_files(cache_dir)
    return (
        DataSource(files.train, files.source_uri.replace("{data,test}", "data"), "adult-train", "train"),
        DataSource(files.test, files.source_uri.replace("{data,test}", "test"), "adult-test", "holdout"),
    )


def _clean(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.rename(columns=normalise_column_name)
    for column in frame.columns:
        if frame[column].dtype == object:
            stripped = frame[column].astype("string").str.strip()
            frame[column] = stripped.mask(stripped.isin(_MISSING_TOKENS)).astype(object)
    if LABEL in frame.columns and frame[LABEL].dtype == object:
        frame[LABEL] = frame[LABEL].where(frame[LABEL].isna(), frame[LABEL].astype(str).str.rstrip("."))
    for column in CATEGORICAL_FEATURES:
        if column in frame.columns:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    return frame


def read_source(source: DataSource) -> pd.DataFrame:
    """Read one source into a normalised DataFrame (every input row kept)."""
    if source.kind.startswith("adult-"):
        member = "adult.data" if source.kind == "adult-train" else "adult.test"
        frame = pd.read_csv(
            source.path,
            header=None,
            names=list(RAW_COLUMN_ORDER),
            skiprows=1 if member == "adult.test" else 0,  # adult.test's first line is "|1x3 Cross validator"
            skipinitialspace=True,
            na_values=_MISSING_TOKENS,
            keep_default_na=False,
            dtype={c: str for c in (*CATEGORICAL_FEATURES, LABEL)},
        )
        if len(frame) != EXPECTED_ROWS[member]:
            raise RuntimeError(
                f"{member}: parsed {len(frame)} rows, the published file has {EXPECTED_ROWS[member]}; "
                "the parser lost or invented rows, which must not happen"
            )
    elif source.path.suffix.lower() == ".csv":
        frame = pd.read_csv(
            source.path, skipinitialspace=True, na_values=_MISSING_TOKENS, keep_default_na=False
        )
    else:
        frame = pd.read_parquet(source.path)
    return _clean(frame)


def dataset_sha256(paths: list[Path]) -> str:
    """sha256 of the source files' bytes, concatenated in order (training file first)."""
    return sha256_files(paths)


def build_fingerprint(
    train: DataSource, holdout: DataSource, train_frame: pd.DataFrame, holdout_frame: pd.DataFrame
) -> dict:
    return {
        "dataset_sha256": dataset_sha256([train.path, holdout.path]),
        "source": "adult" if train.kind.startswith("adult") else "user",
        "schema": expected_schema(),
        "train": {
            "uri": train.uri,
            "sha256": sha256_file(train.path),
            "rows": len(train_frame),
            "bytes": train.path.stat().st_size,
        },
        "holdout": {
            "uri": holdout.uri,
            "sha256": sha256_file(holdout.path),
            "rows": len(holdout_frame),
            "bytes": holdout.path.stat().st_size,
        },
        "normalisation_version": NORMALISATION_VERSION,
    }


def _write_parquet(frame: pd.DataFrame, target: Path) -> None:
    columns = [c for c in RAW_COLUMN_ORDER if c in frame.columns]
    typed = frame[columns].copy()
    for column in NUMERIC_FEATURES:
        typed[column] = pd.to_numeric(typed[column]).astype("float64")
    partial = target.with_name(target.name + ".partial")
    typed.to_parquet(partial, index=False)
    partial.replace(target)


def prepare_dataset(
    cache_dir: Path,
    data_path: str | None = None,
    holdout_path: str | None = None,
    policy: ValidationPolicy | None = None,
) -> PreparedDataset:
    """Resolve, read, validate and fingerprint the data; raise DataValidationError listing every rule broken."""
    policy = policy or ValidationPolicy()
    train_source, holdout_source = resolve_sources(cache_dir, data_path, holdout_path)
    train_frame = read_source(train_source)
    holdout_frame = read_source(holdout_source)
    reports = (
        validate_frame(train_frame, f"training data {train_source.uri}", policy),
        validate_frame(holdout_frame, f"held-out data {holdout_source.uri}", policy),
    )
    if not all(report.ok for report in reports):
        raise DataValidationError(
            list(reports),
            hint="Nothing was trained and prod is untouched. Fix the data (or the thresholds, "
            "deliberately) and trigger the DAG again.",
        )
    fingerprint = build_fingerprint(train_source, holdout_source, train_frame, holdout_frame)
    fingerprint["validation"] = [report.to_dict() for report in reports]
    target_dir = cache_dir / "prepared" / f"{fingerprint['dataset_sha256'][:16]}-v{NORMALISATION_VERSION}"
    target_dir.mkdir(parents=True, exist_ok=True)
    train_parquet, holdout_parquet = target_dir / "train.parquet", target_dir / "holdout.parquet"
    _write_parquet(train_frame, train_parquet)
    _write_parquet(holdout_frame, holdout_parquet)
    fingerprint["prepared"] = {"train_path": str(train_parquet), "holdout_path": str(holdout_parquet)}
    log.info(
        "Dataset %s: train %s rows (%s), held-out %s rows (%s); prepared Parquet in %s",
        fingerprint["dataset_sha256"],
        fingerprint["train"]["rows"],
        train_source.uri,
        fingerprint["holdout"]["rows"],
        holdout_source.uri,
        target_dir,
    )
    return PreparedDataset(fingerprint, train_parquet, holdout_parquet, reports)
