"""Runtime settings, read from the environment in one place.

Every path of local state hangs off one directory, ``MLRELEASE_HOME`` (default ``.mlrelease/`` in the
project checkout), so that a demo, a test run and a CI run can each use their own and ``rm -rf`` it to
start clean. The backend switch (``MLRELEASE_BACKEND``: ``local`` or ``azure``) is also read here and
nowhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BACKENDS = ("local", "azure")
DEFAULT_MODEL_NAME = "income-classifier"
DEFAULT_EXPERIMENT_NAME = "income-release"
ENDPOINTS = ("test", "prod")
DEFAULT_ENDPOINT_PORTS = {"test": 8701, "prod": 8702}


def project_root() -> Path | None:
    """The checkout this package was installed from in editable mode, or None for a regular install."""
    candidate = Path(__file__).resolve().parents[2]
    return candidate if (candidate / "pyproject.toml").is_file() and (candidate / "jobs").is_dir() else None


def _default_home() -> Path:
    root = project_root()
    return (root / ".mlrelease") if root else Path.home() / ".mlrelease"


def _default_jobs_dir() -> Path:
    root = project_root()
    return (root / "jobs") if root else Path("/opt/mlrelease/jobs")


@dataclass(frozen=True)
class Settings:
    """Where local state lives and which backend runs the work."""

    home: Path
    backend: str
    jobs_dir: Path
    tracking_uri: str
    artifact_root: Path
    experiment_name: str
    model_name: str
    spark_master: str
    spark_driver_memory: str
    default_data_path: str | None
    default_holdout_path: str | None
    mlflow_ui_url: str | None
    endpoint_ports: dict[str, int]

    @property
    def data_cache_dir(self) -> Path:
        return self.home / "data"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def audit_db_path(self) -> Path:
        return self.home / "audit.db"

    @property
    def endpoints_dir(self) -> Path:
        return self.home / "endpoints"

    @property
    def models_dir(self) -> Path:
        """Local copies of the registered versions' portable models, one directory per version."""
        return self.home / "models"

    def ensure_dirs(self) -> None:
        for directory in (self.home, self.data_cache_dir, self.logs_dir, self.artifact_root):
            directory.mkdir(parents=True, exist_ok=True)


def load_settings(environ: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from the environment; raises ValueError naming the bad variable."""
    env = os.environ if environ is None else environ
    home = Path(env.get("MLRELEASE_HOME") or _default_home()).expanduser().resolve()
    backend = env.get("MLRELEASE_BACKEND", "local").strip().lower()
    if backend not in BACKENDS:
        raise ValueError(
            f"MLRELEASE_BACKEND={backend!r} is not a known backend; set it to one of {', '.join(BACKENDS)}"
        )
    artifact_root = Path(env.get("MLRELEASE_ARTIFACT_ROOT") or home / "mlartifacts").expanduser().resolve()
    tracking_uri = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
    ports: dict[str, int] = {}
    for endpoint in ENDPOINTS:
        variable = f"MLRELEASE_{endpoint.upper()}_ENDPOINT_PORT"
        raw = env.get(variable) or str(DEFAULT_ENDPOINT_PORTS[endpoint])
        if not raw.isdigit() or not 0 < int(raw) < 65536:
            raise ValueError(f"{variable}={raw!r} is not a TCP port; set it to a free port number 1..65535")
        ports[endpoint] = int(raw)
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"the test and prod endpoints need different ports, got {ports}")
    return Settings(
        home=home,
        backend=backend,
        jobs_dir=Path(env.get("MLRELEASE_JOBS_DIR") or _default_jobs_dir()).expanduser().resolve(),
        tracking_uri=tracking_uri,
        artifact_root=artifact_root,
        experiment_name=env.get("MLRELEASE_EXPERIMENT", DEFAULT_EXPERIMENT_NAME),
        model_name=env.get("MLRELEASE_MODEL_NAME", DEFAULT_MODEL_NAME),
        spark_master=env.get("MLRELEASE_SPARK_MASTER", "local[*]"),
        spark_driver_memory=env.get("MLRELEASE_SPARK_DRIVER_MEMORY", "2g"),
        default_data_path=env.get("MLRELEASE_DATA_PATH") or None,
        default_holdout_path=env.get("MLRELEASE_HOLDOUT_PATH") or None,
        # Where `make mlflow-ui` serves the tracking store; used to print clickable run links.
        mlflow_ui_url=env.get("MLRELEASE_MLFLOW_UI_URL", "http://127.0.0.1:5000") or None,
        endpoint_ports=ports,
    )
