"""One Azure ML workspace as the Azure backends reach it: an ``MLClient`` and the workspace's Blob storage.

Credentials are never read here. Whoever holds them (an Airflow task through the Microsoft Azure
provider's hooks, see ``mlrelease.airflow.connections``) builds an :class:`AzureWorkspace` with a
credential object and a Blob service client, and the backends only use those.

Files that a model version or a deployment needs (the portable model document, the scoring code) are
put into the workspace's default datastore *content-addressed* (``<prefix>/<kind>/<sha256>/...``), written
create-only, and referenced by datastore URI (``azureml://datastores/<name>/paths/...``). So a retried
task uploads nothing new, a registered asset can never point at bytes that changed, and the SDK never
uploads anything itself (its storage clients are built outside its HTTP pipeline).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

EMULATOR_CLOUD = "MLRELEASE_EMULATOR"


@dataclass(frozen=True)
class WorkspaceCoordinates:
    subscription_id: str
    resource_group: str
    workspace_name: str

    def studio_query(self) -> str:
        return (
            f"wsid=/subscriptions/{self.subscription_id}/resourcegroups/{self.resource_group}"
            f"/workspaces/{self.workspace_name}"
        )


def directory_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order: the same tree, the same digest."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class AzureWorkspace:
    """An Azure ML workspace: an MLClient (built once) and its default datastore's Blob container.

    ``transport`` (an azure-core transport), ``resource_manager_url`` and ``ca_bundle`` exist for the
    emulators the tests and ``make demo-cloud`` run; on Azure all three are None.
    """

    coordinates: WorkspaceCoordinates
    credential: Any
    blob_service: Callable[[], Any]  # -> azure.storage.blob.BlobServiceClient
    datastore: str = "workspaceblobstore"
    path_prefix: str = "mlrelease"
    resource_manager_url: str | None = None
    ca_bundle: str | None = None
    transport: Any = None
    client_kwargs: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def ml(self):
        from azure.ai.ml import MLClient

        kwargs: dict[str, Any] = {"enable_telemetry": False, **self.client_kwargs}
        if self.transport is not None:
            kwargs["transport"] = self.transport
        if self.resource_manager_url:
            # An emulator: a cloud of its own (the SDK keeps clouds in a process-global table and never
            # redefines a name, so the name carries the URL), trusted through its CA bundle.
            base = self.resource_manager_url.rstrip("/") + "/"
            parts = urlsplit(base)
            kwargs["cloud"] = f"{EMULATOR_CLOUD}-{parts.hostname}-{parts.port or 443}"
            kwargs["cloud_metadata"] = {
                "azure_portal": base,
                "resource_manager": base,
                "active_directory": base,
                "aml_resource_id": base,
                "storage_endpoint": "core.windows.net",
                "registry_discovery_endpoint": base,
            }
        if self.ca_bundle:
            kwargs["connection_verify"] = self.ca_bundle
        return MLClient(
            self.credential,
            subscription_id=self.coordinates.subscription_id,
            resource_group_name=self.coordinates.resource_group,
            workspace_name=self.coordinates.workspace_name,
            **kwargs,
        )

    @cached_property
    def _container(self):
        """The default datastore's container, checked to be in the storage account we can write to."""
        store = self.ml.datastores.get(self.datastore)
        service = self.blob_service()
        if store.account_name and service.account_name and store.account_name != service.account_name:
            raise RuntimeError(
                f"datastore {self.datastore!r} of workspace {self.coordinates.workspace_name} is in storage "
                f"account {store.account_name!r}, but the storage connection reaches {service.account_name!r}; "
                "point the wasb connection (MLRELEASE_AZUREML_STORAGE_CONN_ID) at the workspace's account"
            )
        container = service.get_container_client(store.container_name)
        if not container.exists():
            raise RuntimeError(
                f"container {store.container_name!r} of datastore {self.datastore!r} does not exist in "
                f"{service.account_name}; the workspace's storage is not set up (docs/azure.md)"
            )
        return container

    def datastore_uri(self, path: str) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{path.strip('/')}/"

    def put_once(self, kind: str, source: Path) -> str:
        """Upload a file or a directory tree content-addressed and create-only; its datastore URI.

        Blobs that exist already are left alone: their name is their content's digest.
        """
        from azure.core.exceptions import ResourceExistsError

        if source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file())
            digest, root = directory_digest(source), source
        else:
            files, root = [source], source.parent
            digest = hashlib.sha256(source.read_bytes()).hexdigest()
        prefix = f"{self.path_prefix}/{kind}/{digest}"
        container = self._container
        uploaded = 0
        for path in files:
            blob = container.get_blob_client(f"{prefix}/{path.relative_to(root).as_posix()}")
            if blob.exists():
                continue
            try:
                with path.open("rb") as data:
                    blob.upload_blob(data, overwrite=False)
                uploaded += 1
            except ResourceExistsError:
                pass  # written concurrently by a retry of the same task: same name, same bytes
        log.info(
            "%s %s: %d of %d files uploaded to %s (the rest were there)",
            kind,
            digest[:12],
            uploaded,
            len(files),
            self.datastore_uri(prefix),
        )
        return self.datastore_uri(prefix)


# Azurite's account: a public, documented development key, never a real secret. The scoring containers
# of the emulated AKS endpoints get Azurite's connection string; real ones use their managed identity.
AZURITE_ACCOUNT = "devstoreaccount1"


@dataclass
class AzureAccess:
    """Credentialed access to Azure, made by whoever holds the credentials (an Airflow task, the CLI).

    ``blob_service`` builds the Blob client of the workspace's storage account (the provider's
    ``WasbHook(...).get_conn()``); ``blob_connection_string`` is set only for Azurite.
    """

    coordinates: WorkspaceCoordinates
    credential: Any
    blob_service: Callable[[], Any]
    blob_connection_string: str | None = None
    transport: Any = None

    def scoring_env(self, container: str, account_url: str | None) -> dict[str, str]:
        """How a scoring container reaches the prediction log: its managed identity, or Azurite's
        public development key when the storage is the emulator."""
        from mlrelease.serving import azureml_score as script  # the variables it reads are its contract

        env = {script.ENV_PREDICTION_LOG: "blob", script.ENV_AUDIT_CONTAINER: container}
        if self.blob_connection_string and AZURITE_ACCOUNT in self.blob_connection_string:
            env[script.ENV_AUDIT_CONNECTION_STRING] = self.blob_connection_string
        else:
            env[script.ENV_AUDIT_ACCOUNT_URL] = account_url or self.blob_service().url
        return env
