"""A loopback Databricks workspace emulator: Jobs API runs executed with local spark-submit, the Files API
on a local /Volumes tree, and Databricks-hosted MLflow backed by a real ``mlflow server``.

It exists so the official Airflow Databricks provider and the MLflow client in ``databricks`` mode can
be exercised end to end without a workspace. Start it with :func:`start` (or
``python -m emulators.databricks start --home H``); the runtime package ``mlrelease`` never imports it.
"""

from __future__ import annotations

from emulators.databricks.control import DEFAULT_TOKEN, Emulator, running, start, stop

__all__ = ["DEFAULT_TOKEN", "Emulator", "running", "start", "stop"]
