"""Which code produced a model: the git commit of the checkout and whether it had local changes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mlrelease.domain.lineage import GitInfo


def _git(repo: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(repo: Path | None) -> GitInfo:
    """``MLRELEASE_GIT_COMMIT`` wins (images built without .git set it at build time); else ask git."""
    pinned = os.environ.get("MLRELEASE_GIT_COMMIT")
    if pinned:
        dirty = os.environ.get("MLRELEASE_GIT_DIRTY")
        return GitInfo(pinned, None if dirty is None else dirty.lower() == "true")
    if repo is None:
        return GitInfo("unknown", None)
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return GitInfo("unknown", None)
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return GitInfo(commit, None if status is None else bool(status))
