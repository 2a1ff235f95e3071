"""The one switch table that picks local or cloud backends (``MLRELEASE_BACKEND``)."""

from __future__ import annotations

from dataclasses import dataclass

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


def _local(settings: Settings) -> Backends:
    from mlrelease.backends.local.audit import SqliteAuditLog
    from mlrelease.backends.local.endpoints import LocalEndpoints
    from mlrelease.backends.local.mlflow_store import MlflowRegistry, MlflowTracker
    from mlrelease.backends.local.spark import LocalSparkCompute

    settings.ensure_dirs()
    return Backends(
        compute=LocalSparkCompute(
            settings.jobs_dir, settings.logs_dir, settings.spark_master, settings.spark_driver_memory
        ),
        tracker=MlflowTracker(settings.tracking_uri, settings.artifact_root, settings.mlflow_ui_url),
        registry=MlflowRegistry(settings.tracking_uri, settings.mlflow_ui_url),
        audit=SqliteAuditLog(settings.audit_db_path),
        endpoints=LocalEndpoints(settings.endpoints_dir, settings.endpoint_ports, settings.audit_db_path),
    )


def _azure(settings: Settings) -> Backends:
    raise NotImplementedError(
        "MLRELEASE_BACKEND=azure (Databricks compute, Azure ML registry, AKS endpoints) is not built yet; "
        "it is the 'cloud backends' issue. Set MLRELEASE_BACKEND=local to run on this machine."
    )


_BACKENDS = {"local": _local, "azure": _azure}


def get_backends(settings: Settings) -> Backends:
    return _BACKENDS[settings.backend](settings)
