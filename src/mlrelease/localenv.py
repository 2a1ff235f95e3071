"""Environment for running Airflow locally against this checkout, derived from ``MLRELEASE_HOME``.

One source for the demo script (``eval "$(python -m mlrelease.localenv)"``) and the tests, so both
run Airflow the same way: SQLite metadata DB and logs under ``MLRELEASE_HOME/airflow``, this
checkout's dags/ and plugins/, no example DAGs, low parallelism for a 2-core machine, loopback only.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from mlrelease.settings import load_settings, project_root


def airflow_env(home: Path, root: Path, tracking_uri: str | None = None) -> dict[str, str]:
    airflow_home = home / "airflow"
    return {
        "MLRELEASE_HOME": str(home),
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(airflow_home / "logs"),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        # Also the process-wide MLflow default, so nothing falls back to ./mlflow.db in the cwd.
        "MLFLOW_TRACKING_URI": tracking_uri or f"sqlite:///{home / 'mlflow.db'}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "UV_COMPILE_BYTECODE": "1",
    }


def main() -> int:
    root = project_root()
    if root is None:
        print("mlrelease.localenv needs an editable install from a checkout (make venv)", file=sys.stderr)
        return 1
    settings = load_settings()
    # The home's own store, whatever MLFLOW_TRACKING_URI the calling shell had: a second home (the
    # cloud demo, a test's services) must never write into another home's MLflow database.
    tracking = "databricks" if settings.tracking == "databricks" else None
    for key, value in airflow_env(settings.home, root, tracking).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
