"""Azure credentials come only from Airflow connections, through the Microsoft Azure provider's hooks."""

from __future__ import annotations

import json

import pytest

from mlrelease.airflow.connections import azure_access, uses_azure
from mlrelease.settings import load_settings

COORDINATES = {"subscriptionId": "sub-1", "resource_group": "rg-1", "workspace_name": "ws-1"}
AZURITE = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_WASB_TEST", json.dumps({"conn_type": "wasb", "extra": {"connection_string": AZURITE}})
    )
    return load_settings(
        {
            "MLRELEASE_HOME": str(tmp_path),
            "MLRELEASE_BACKEND": "azure",
            "MLRELEASE_AZUREML_CONN_ID": "azure_test",
            "MLRELEASE_AZUREML_STORAGE_CONN_ID": "wasb_test",
        }
    )


def azure_connection(monkeypatch, **fields) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_AZURE_TEST", json.dumps({"conn_type": "azure", **fields}))


def test_a_service_principal_connection_gives_an_azure_identity_credential(settings, monkeypatch):
    azure_connection(
        monkeypatch,
        login="client-id",
        password="client-secret",
        extra={**COORDINATES, "tenantId": "tenant-1", "use_azure_identity_object": True},
    )
    access = azure_access(settings)
    assert type(access.credential).__name__ == "ClientSecretCredential"
    assert (access.coordinates.subscription_id, access.coordinates.workspace_name) == ("sub-1", "ws-1")
    assert access.blob_service().account_name == "devstoreaccount1"
    # Azurite's public development key may reach the emulated scoring containers; nothing else would.
    assert access.scoring_env("audit", None)["MLRELEASE_AUDIT_BLOB_CONNECTION_STRING"] == AZURITE


def test_no_secret_means_default_azure_credential(settings, monkeypatch):
    azure_connection(monkeypatch, extra={**COORDINATES, "use_azure_identity_object": True})
    assert type(azure_access(settings).credential).__name__ == "DefaultAzureCredential"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"subscriptionId": "s", "workspace_name": "w", "use_azure_identity_object": True},
            r"\['resource_group'\]",
        ),
        (COORDINATES, "use_azure_identity_object"),
    ],
)
def test_an_incomplete_connection_is_named_with_the_fix(settings, monkeypatch, extra, message):
    azure_connection(monkeypatch, login="id", password="secret", extra={**extra, "tenantId": "t"})
    with pytest.raises(ValueError, match=message):
        azure_access(settings)


def test_only_azure_concerns_need_azure_credentials(tmp_path):
    assert not uses_azure(load_settings({"MLRELEASE_HOME": str(tmp_path)}))
    assert uses_azure(load_settings({"MLRELEASE_HOME": str(tmp_path), "MLRELEASE_BACKEND": "azure"}))
