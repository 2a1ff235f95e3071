"""Credentials from Airflow connections, for the backends of the task (or ``mlrelease`` command) that needs them.

Secrets live only in Airflow connections. A task that talks to the Databricks workspace (the MLflow
client, the Databricks SDK's Files API) gets the workspace URL and a token from the connection named
in the settings, through the provider's hook, which knows every auth mode (PAT, Azure service
principal, managed identity, OAuth). Airflow masks the connection's password in task logs.

The Azure backends get credential *objects* instead: the Microsoft Azure provider's ``AzureBaseHook``
turns the ``azure`` connection into an azure-identity credential (a service principal, or managed /
workload identity through DefaultAzureCredential), and its ``WasbHook`` the ``wasb`` connection into a
Blob client. The workspace's coordinates (subscription, resource group, workspace) are extras of the
``azure`` connection: ``subscriptionId``, ``resource_group``, ``workspace_name``.
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


AZURE_CONCERNS = {"registry": "azureml", "endpoints": "aks", "audit": "azure"}


def uses_azure(settings: Settings) -> bool:
    return any(getattr(settings, concern) == choice for concern, choice in AZURE_CONCERNS.items())


def azure_access(settings: Settings):
    """An ``AzureAccess`` from the ``azure`` and ``wasb`` connections the settings name."""
    from airflow.providers.microsoft.azure.hooks.base_azure import AzureBaseHook
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    from mlrelease.backends.azure.workspace import AzureAccess, WorkspaceCoordinates

    conn_id, storage_conn_id = settings.azureml.conn_id, settings.azureml.storage_conn_id
    hook = AzureBaseHook(conn_id=conn_id)
    conn = hook.get_connection(conn_id)
    extra = conn.extra_dejson
    missing = [key for key in ("subscriptionId", "resource_group", "workspace_name") if not extra.get(key)]
    if missing:
        raise ValueError(
            f"Airflow connection {conn_id!r} lacks the extras {missing}: set subscriptionId, resource_group and "
            "workspace_name to the Azure ML workspace's coordinates (docs/azure.md)"
        )
    storage = WasbHook(wasb_conn_id=storage_conn_id)
    connection_string = storage.get_connection(storage_conn_id).extra_dejson.get("connection_string")
    coordinates = WorkspaceCoordinates(
        extra["subscriptionId"], extra["resource_group"], extra["workspace_name"]
    )
    log.info(
        "Azure ML workspace %s (resource group %s, subscription %s) through connection %s; storage through %s",
        coordinates.workspace_name,
        coordinates.resource_group,
        coordinates.subscription_id,
        conn_id,
        storage_conn_id,
    )
    if not extra.get("use_azure_identity_object"):
        # Without it the hook builds msrestazure's legacy credentials (which azure-ai-ml cannot use, and
        # which fetch a token as soon as they are made).
        raise ValueError(
            f'Airflow connection {conn_id!r} lacks the extra "use_azure_identity_object": true; set it, so '
            "the hook gives an azure-identity credential (service principal or DefaultAzureCredential) that "
            "azure-ai-ml can use (docs/azure.md)"
        )
    credential = hook.get_credential(conn=conn)
    return AzureAccess(
        coordinates=coordinates,
        credential=credential,
        blob_service=storage.get_conn,
        blob_connection_string=connection_string or None,
    )


def task_backends(settings: Settings):
    """The backends a task uses, with the credentials they need from the Airflow connections."""
    from mlrelease.backends import get_backends

    export_backend_credentials(settings)
    return get_backends(settings, azure_access(settings) if uses_azure(settings) else None)
