"""Test session set-up: every test session gets its own MLRELEASE_HOME (and Airflow home) in a temp dir.

The environment is set at import time, before any test imports Airflow, because Airflow reads its
configuration when it is first imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlrelease-test-"))

from mlrelease.localenv import airflow_env  # noqa: E402

os.environ.update(airflow_env(SESSION_HOME, ROOT))
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def session_home() -> Path:
    return SESSION_HOME


@pytest.fixture(scope="session")
def airflow_db(session_home: Path) -> Path:
    """A migrated Airflow metadata DB for this session (real SQLite, real migrations)."""
    result = subprocess.run(
        [str(BIN / "airflow"), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy()
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return session_home / "airflow" / "airflow.db"


def pytest_sessionfinish(session, exitstatus):
    if exitstatus == 0 and not os.environ.get("MLRELEASE_KEEP_TEST_HOME"):
        shutil.rmtree(SESSION_HOME, ignore_errors=True)
