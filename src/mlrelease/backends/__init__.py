"""The one switch table that picks a backend per concern (see ``mlrelease.settings``).

``MLRELEASE_BACKEND=local|azure`` is the profile; ``MLRELEASE_COMPUTE``, ``MLRELEASE_TRACKING`` (and
the others) override one concern. Each entry builds its backend lazily: nothing cloud is imported on
the local path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlrelease.backends.base import (
    AuditLog,
    ComputeBackend,
    EndpointBackend,
    ExperimentTracker,
    ModelRegistry,
)
from mlrelease.settings import Settings


@dataclass(frozen=True)
class Backends:
    compute: ComputeBackend
    tracker: ExperimentTracker
    registry: ModelRegistry
    audit: AuditLog
    endpoints: EndpointBackend


def _local_compute(settings: Settings, built: dict[str, Any]) -> ComputeBackend:
    from mlrelease.backends.local.spark import LocalSparkCompute

    return LocalSparkCompute(
        settings.jobs_dir, settings.compute_runs_dir, settings.spark_master, settings.spark_driver_memory
    )


def _databricks_compute(settings: Settings, built: dict[str, Any]) -> ComputeBackend:
    from mlrelease.backends.azure.databricks import DatabricksCompute

    return DatabricksCompute(settings.databricks, settings.jobs_dir, settings.home)


def _local_tracker(settings: Settings, built: dict[str, Any]) -> ExperimentTracker:
    from mlrelease.backends.local.mlflow_store import MlflowTracker

    return MlflowTracker(settings.tracking_uri, settings.artifact_root.as_uri(), settings.mlflow_ui_url)


def _databricks_tracker(settings: Settings, built: dict[str, Any]) -> ExperimentTracker:
    from mlrelease.backends.local.mlflow_store import DatabricksMlflowTracker

    return DatabricksMlflowTracker(settings.databricks.artifact_location)


def _mlflow_registry(settings: Settings, built: dict[str, Any]) -> ModelRegistry:
    """The local MLflow registry (SQLite in MLRELEASE_HOME), also when runs are tracked on Databricks.

    Not the Databricks workspace registry: MLflow refuses aliases there (only Unity Catalog has them),
    and ``prod`` is an alias.
    """
    from mlrelease.backends.local.mlflow_store import MlflowRegistry

    return MlflowRegistry(settings.registry_uri, settings.mlflow_ui_url)


def _local_audit(settings: Settings, built: dict[str, Any]) -> AuditLog:
    from mlrelease.backends.local.audit import SqliteAuditLog

    return SqliteAuditLog(settings.audit_db_path)


def _local_endpoints(settings: Settings, built: dict[str, Any]) -> EndpointBackend:
    """Scoring processes on loopback, which load the portable model file fetched from the training run."""
    from mlrelease.artifacts import fetch_run_artifact
    from mlrelease.backends.local.endpoints import LocalEndpoints

    return LocalEndpoints(
        settings.endpoints_dir,
        settings.endpoint_ports,
        settings.audit_db_path,
        fetch_artifact=lambda ref, artifact: fetch_run_artifact(
            built["tracking"], settings.models_dir, ref, artifact
        ),
    )


def _access(built: dict[str, Any]):
    access = built.get("azure_access")
    if access is None:
        raise RuntimeError(
            "the Azure backends need credentials from the Airflow connections (docs/azure.md); build the "
            "backends with mlrelease.airflow.connections.task_backends(settings), as the DAG's tasks and "
            "the mlrelease command do"
        )
    return access


def _azure_workspace(settings: Settings, built: dict[str, Any]):
    if "azure_workspace" not in built:
        from mlrelease.backends.azure.workspace import AzureWorkspace

        access = _access(built)
        built["azure_workspace"] = AzureWorkspace(
            access.coordinates,
            access.credential,
            access.blob_service,
            datastore=settings.azureml.datastore,
            path_prefix=settings.azureml.path_prefix,
            resource_manager_url=settings.azureml.resource_manager_url,
            ca_bundle=settings.azureml.ca_bundle,
            transport=access.transport,
        )
    return built["azure_workspace"]


def _azureml_registry(settings: Settings, built: dict[str, Any]) -> ModelRegistry:
    """Azure ML models, registered by datastore URI; "prod" is kept in the audit store."""
    from mlrelease.backends.azure.azureml_registry import AzureMLRegistry

    return AzureMLRegistry(
        _azure_workspace(settings, built), built["tracking"].download_artifact, built["audit"]
    )


def _aks_endpoints(settings: Settings, built: dict[str, Any]) -> EndpointBackend:
    """Kubernetes online endpoints of the Azure ML workspace (blue/green deployments)."""
    from mlrelease.backends.azure.aks import AksEndpoints

    scoring_env = _access(built).scoring_env(
        settings.azureml.audit_container, settings.azureml.audit_account_url
    )
    return AksEndpoints(_azure_workspace(settings, built), settings.azureml, scoring_env)


def _blob_audit(settings: Settings, built: dict[str, Any]) -> AuditLog:
    """Append-only records in Azure Blob Storage (append blobs and create-only blobs)."""
    from mlrelease.backends.azure.blob_audit import BlobAuditLog

    return BlobAuditLog.from_service_client(_access(built).blob_service(), settings.azureml.audit_container)


# concern -> choice -> builder(settings, the concerns built before it). Built in this order, so a
# builder may use an earlier concern (endpoints fetch artifacts through the tracker).
# settings.CONCERN_CHOICES lists the same choices (and refuses others).
SWITCH: dict[str, dict[str, Callable[[Settings, dict[str, Any]], Any]]] = {
    "compute": {"local": _local_compute, "databricks": _databricks_compute},
    "tracking": {"local": _local_tracker, "databricks": _databricks_tracker},
    "audit": {"local": _local_audit, "azure": _blob_audit},
    "registry": {"local": _mlflow_registry, "azureml": _azureml_registry},
    "endpoints": {"local": _local_endpoints, "aks": _aks_endpoints},
}


def get_backends(settings: Settings, azure_access: Any = None) -> Backends:
    """The backends ``settings`` choose; ``azure_access`` (an ``AzureAccess``) when any of them is Azure."""
    settings.ensure_dirs()
    built: dict[str, Any] = {"azure_access": azure_access}
    for concern, choices in SWITCH.items():
        built[concern] = choices[getattr(settings, concern)](settings, built)
    return Backends(
        compute=built["compute"],
        tracker=built["tracking"],
        registry=built["registry"],
        audit=built["audit"],
        endpoints=built["endpoints"],
    )
