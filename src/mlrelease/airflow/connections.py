"""Credentials from Airflow connections into the process environment of the task that needs them.

Secrets live only in Airflow connections. A task that talks to the Databricks workspace (the MLflow
client, the Databricks SDK's Files API) gets the workspace URL and a token from the connection named
in the settings, through the provider's hook, which knows every auth mode (PAT, Azure service
principal, managed identity, OAuth). Airflow masks the connection's password in task logs.
"""

from __future__ import annotations

import logging
import os

from mlrelease.settings import Settings

log = logging.getLogger(__name__)


def databricks_workspace_env(conn_id: str) -> dict[str, str]:
    """``DATABRICKS_HOST`` (with scheme and port, as the hook builds it) and ``DATABRICKS_TOKEN``."""
    from airflow.providers.databricks.hooks.databricks import DatabricksHook

    hook = DatabricksHook(conn_id)
    conn = hook.databricks_conn
    if not hook.host:
        raise ValueError(
            f"Airflow connection {conn_id!r} has no host; set it to the workspace URL "
            "(e.g. adb-1234567890123456.7.azuredatabricks.net)"
        )
    port = f":{conn.port}" if conn.port else ""
    host_url = f"{conn.schema or 'https'}://{hook.host}{port}"
    # _get_token is the hook's one place that turns any of its auth modes into a bearer token.
    token = hook._get_token(raise_error=True)
    return {"DATABRICKS_HOST": host_url, "DATABRICKS_TOKEN": token}


def export_backend_credentials(settings: Settings) -> None:
    """Put the workspace credentials into this task's environment when a backend needs them."""
    if "databricks" not in (settings.compute, settings.tracking):
        return
    env = databricks_workspace_env(settings.databricks.conn_id)
    os.environ.update(env)
    log.info(
        "Databricks workspace %s (connection %s) for %s",
        env["DATABRICKS_HOST"],
        settings.databricks.conn_id,
        ", ".join(c for c in ("compute", "tracking") if getattr(settings, c) == "databricks"),
    )


def task_backends(settings: Settings):
    """The backends a task uses, with the credentials they need already in its environment."""
    from mlrelease.backends import get_backends

    export_backend_credentials(settings)
    return get_backends(settings)
