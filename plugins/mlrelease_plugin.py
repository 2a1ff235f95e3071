"""Registers mlrelease's extra links with Airflow so the UI can show them on task pages."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from mlrelease.airflow.links import MlflowRunLink


class MlreleasePlugin(AirflowPlugin):
    name = "mlrelease"
    operator_extra_links = [MlflowRunLink()]
