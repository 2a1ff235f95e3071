"""sha256 of files, read in 1 MiB blocks: data fingerprints, pinned downloads, deployed model artifacts."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path


def sha256_files(paths: Iterable[Path]) -> str:
    """sha256 of the files' bytes, concatenated in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with Path(path).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    return sha256_files([path])
