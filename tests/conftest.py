"""Test session set-up: every test session gets its own MLRELEASE_HOME (and Airflow home) in a temp dir.

The environment is set at import time, before any test imports Airflow, because Airflow reads its
configuration when it is first imported.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION_HOME = Path(tempfile.mkdtemp(prefix="mlrelease-test-"))

from mlrelease.localenv import airflow_env  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


os.environ.update(airflow_env(SESSION_HOME, ROOT))
# The tests' endpoints must not collide with a demo's (8701/8702) running on the same machine.
os.environ["MLRELEASE_TEST_ENDPOINT_PORT"] = str(free_port())
os.environ["MLRELEASE_PROD_ENDPOINT_PORT"] = str(free_port())
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


def stop_session_endpoints() -> None:
    """Endpoints are detached on purpose (they outlive `make demo`); the tests must not leave any."""
    for pid_file in SESSION_HOME.glob("endpoints/*/service.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


def pytest_sessionfinish(session, exitstatus):
    stop_session_endpoints()
    if exitstatus == 0 and not os.environ.get("MLRELEASE_KEEP_TEST_HOME"):
        shutil.rmtree(SESSION_HOME, ignore_errors=True)
