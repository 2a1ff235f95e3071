"""The Azure ML registry backend against the Azure ML fake (in process, azure-core transport) and Azurite.

The real azure-ai-ml SDK runs: ``models.list/get/create_or_update`` go through the SDK's pipeline into
the fake's dispatcher; the model file goes through azure-storage-blob into Azurite. What a registration
must do: upload the portable model content-addressed and create-only, register by datastore URI (the
SDK uploads nothing itself), keep the lineage in tags and properties, be idempotent per training run,
number versions without gaps even when writers race, and read "prod" from the audit store.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from emulators.azureml import AzureMLService, EmulatorCredential, WorkspaceConfig
from emulators.azureml.transport import AzureMLTransport
from mlrelease.backends.azure.azureml_registry import AzureMLRegistry
from mlrelease.backends.azure.workspace import AzureWorkspace, WorkspaceCoordinates
from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.domain.release import ALIAS_MOVED
from mlrelease.tags import PORTABLE_MODEL_ARTIFACT, TAG_LINEAGE_CHILD_RUN_ID

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Azurite needs Node.js on PATH")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    from emulators.azurite import start

    handle = start(tmp_path_factory.mktemp("azurite"))
    yield handle
    handle.stop()


@pytest.fixture
def workspace(tmp_path, azurite):
    config = WorkspaceConfig(blob_connection_string=azurite.connection_string, lro_retry_after_ms=10)
    service = AzureMLService(tmp_path / "azureml", config)
    blob = BlobServiceClient.from_connection_string(azurite.connection_string)
    datastore = blob.get_container_client(config.blob_container)  # exists in every real workspace
    if not datastore.exists():
        datastore.create_container()
    workspace = AzureWorkspace(
        WorkspaceCoordinates(config.subscription_id, config.resource_group, config.workspace),
        EmulatorCredential(),
        lambda: blob,
        transport=AzureMLTransport(service),
    )
    yield workspace, service
    service.close()


def downloader(documents: dict[str, bytes]):
    """The tracker's download_artifact, serving each run's portable model document."""

    def download(run_id: str, artifact: str, dst: Path) -> Path:
        assert artifact == PORTABLE_MODEL_ARTIFACT
        path = dst / artifact
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(documents[run_id])
        return path

    return download


def lineage(run_id: str) -> dict[str, str]:
    return {
        TAG_LINEAGE_CHILD_RUN_ID: run_id,
        "mlrelease.dataset.sha256": "ab" * 32,
        "mlrelease.compute.run_id": "7",
    }


def test_register_uploads_once_registers_by_uri_and_is_idempotent_per_run(workspace, tmp_path):
    ws, service = workspace
    documents = {"run-a": b'{"model": "a"}', "run-b": b'{"model": "b"}'}
    registry = AzureMLRegistry(ws, downloader(documents), SqliteAuditLog(tmp_path / "audit.db"))

    first = registry.register("income-classifier", "runs:/run-a/model", "run-a", lineage("run-a"))
    assert (first.version, first.run_id) == ("1", "run-a")
    assert first.source == "runs:/run-a/model"  # what the training job loads to score the champion
    model = ws.ml.models.get("income-classifier", "1")
    assert str(model.path).startswith("azureml://")  # the service expands it to the long form
    assert "/datastores/workspaceblobstore/paths/mlrelease/models/" in str(model.path)
    assert first.tags["mlrelease.compute.run_id"] == "7"
    assert model.properties[TAG_LINEAGE_CHILD_RUN_ID] == "run-a"  # immutable copy of the lineage

    # The bytes in workspace storage are the run's document, under their own digest.
    blob_path = str(model.path).split("/paths/", 1)[1].rstrip("/") + "/" + Path(PORTABLE_MODEL_ARTIFACT).name
    container = ws._container
    assert container.download_blob(blob_path).readall() == documents["run-a"]

    puts_before = [r for r in service.requests() if r["method"] == "PUT"]
    again = registry.register("income-classifier", "runs:/run-a/model", "run-a", lineage("run-a"))
    assert again == first
    assert [r for r in service.requests() if r["method"] == "PUT"] == puts_before  # nothing created twice
    # The SDK uploaded nothing itself: no pending-upload or datastore-secret calls.
    paths = [r["path"] for r in service.requests()]
    assert not any("startPendingUpload" in p or "listSecrets" in p for p in paths)

    second = registry.register("income-classifier", "runs:/run-b/model", "run-b", lineage("run-b"))
    assert second.version == "2" and registry.find_version_for_run("income-classifier", "run-b") == second
    assert registry.get_version("income-classifier", "9") is None


def test_racing_writers_get_distinct_versions_without_gaps(workspace, tmp_path):
    ws, _ = workspace
    runs = [f"run-{i}" for i in range(4)]
    registry = AzureMLRegistry(
        ws, downloader({r: json.dumps({"run": r}).encode() for r in runs}), SqliteAuditLog(tmp_path / "a.db")
    )
    results: dict[str, str] = {}

    def register(run: str) -> None:
        results[run] = registry.register("income-classifier", f"runs:/{run}/model", run, lineage(run)).version

    threads = [threading.Thread(target=register, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results.values(), key=int) == ["1", "2", "3", "4"]
    for run, version in results.items():
        assert registry.get_version("income-classifier", version).run_id == run


def test_prod_is_read_from_the_audit_store_not_from_azure_ml(workspace, tmp_path):
    ws, _ = workspace
    audit = SqliteAuditLog(tmp_path / "audit.db")
    registry = AzureMLRegistry(ws, downloader({"run-a": b"{}", "run-b": b"[]"}), audit)
    registry.register("income-classifier", "m", "run-a", lineage("run-a"))
    registry.register("income-classifier", "m", "run-b", lineage("run-b"))
    assert registry.get_by_alias("income-classifier", "prod") is None
    for version in ("1", "2"):
        registry.set_alias("income-classifier", "prod", version)  # nothing to write in Azure ML
        audit.append(f"alias:{version}", ALIAS_MOVED, "income-classifier:prod", {"version": version})
    prod = registry.get_by_alias("income-classifier", "prod")
    assert (prod.version, prod.run_id, prod.aliases) == ("2", "run-b", ("prod",))
    assert "ml.azure.com/model/income-classifier:2" in registry.version_url(prod)
