"""The JSON the emulator answers with, shaped on recorded Azure ML responses.

The shapes follow public recordings of the service (Azure/azure-powershell
``src/MachineLearningServices/**/*.Recording.json``): ARM envelopes (``id``, ``name``, ``type``,
``properties``, ``systemData``), the fields the service fills in itself (``flavors`` on models,
``scaleSettings``/``requestSettings``/probes on deployments, ``scoringUri`` on endpoints) and the
``{"error": {"code", "message"}}`` error shape that azure-mgmt-core's ``ARMErrorFormat`` reads. The SDK
deserialises these into its entities, so a missing field surfaces as an SDK crash, not as a test
failure that explains itself: fill what the service fills.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

PROVIDER = "Microsoft.MachineLearningServices"
TENANT_ID = "00000000-0000-0000-0000-0000000000aa"
EMULATOR_USER = "Azure ML emulator"

DEFAULT_PROBE = {
    "failureThreshold": 30,
    "successThreshold": 1,
    "timeout": "PT2S",
    "period": "PT10S",
    "initialDelay": "PT10S",
}
DEFAULT_REQUEST_SETTINGS = {
    "maxQueueWait": "PT0.5S",
    "requestTimeout": "PT5S",
    "maxConcurrentRequestsPerInstance": 1,
}
DEFAULT_INSTANCE_TYPE = "defaultinstancetype"
DEFAULT_INSTANCE_RESOURCES = {
    "requests": {"cpu": "100m", "memory": "2Gi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": [], "additionalInfo": []}}


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def system_data(created_at: str | None = None) -> dict[str, Any]:
    stamp = now()
    return {
        "createdAt": created_at or stamp,
        "createdBy": EMULATOR_USER,
        "createdByType": "User",
        "lastModifiedAt": stamp,
        "lastModifiedBy": EMULATOR_USER,
        "lastModifiedByType": "User",
    }


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass
class Scope:
    """The workspace the emulator serves and the URL clients reach it at."""

    subscription_id: str
    resource_group: str
    workspace: str
    location: str
    public_url: str  # https://127.0.0.1:<port>, used in scoring URIs and operation URLs
    workspace_guid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def workspace_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/{PROVIDER}/workspaces/{self.workspace}"
        )

    def child_id(self, *segments: str) -> str:
        return self.workspace_id + "/" + "/".join(segments)

    def operation_url(self, kind: str, operation_id: str, api_version: str) -> str:
        return (
            f"{self.public_url}/subscriptions/{self.subscription_id}/providers/{PROVIDER}"
            f"/locations/{self.location}/{kind}/{operation_id}?api-version={api_version}"
        )


def workspace(scope: Scope, storage_account: str) -> dict[str, Any]:
    rg_id = f"/subscriptions/{scope.subscription_id}/resourceGroups/{scope.resource_group}"
    return {
        "id": scope.workspace_id,
        "name": scope.workspace,
        "type": f"{PROVIDER}/workspaces",
        "location": scope.location,
        "kind": "Default",
        "tags": {},
        "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": TENANT_ID},
        "sku": {"name": "Basic", "tier": "Basic"},
        "systemData": system_data(),
        "properties": {
            "friendlyName": scope.workspace,
            "description": "Azure ML workspace emulated on loopback",
            "workspaceId": scope.workspace_guid,
            "storageAccount": f"{rg_id}/providers/Microsoft.Storage/storageAccounts/{storage_account}",
            "keyVault": f"{rg_id}/providers/Microsoft.Keyvault/vaults/{scope.workspace}-kv",
            "applicationInsights": f"{rg_id}/providers/Microsoft.insights/components/{scope.workspace}-ai",
            "containerRegistry": f"{rg_id}/providers/Microsoft.ContainerRegistry/registries/{scope.workspace}acr",
            "discoveryUrl": f"{scope.public_url}/discovery",
            "mlFlowTrackingUri": (
                f"azureml://{scope.location}.api.azureml.ms/mlflow/v1.0{scope.workspace_id}"
            ),
            "provisioningState": "Succeeded",
            "hbiWorkspace": False,
            "publicNetworkAccess": "Enabled",
            "v1LegacyMode": False,
            "storageHnsEnabled": False,
            "enableDataIsolation": False,
        },
    }


def datastore(
    scope: Scope, name: str, account: str, container: str, endpoint: str, protocol: str
) -> dict[str, Any]:
    return {
        "id": scope.child_id("datastores", name),
        "name": name,
        "type": f"{PROVIDER}/workspaces/datastores",
        "systemData": system_data(),
        "properties": {
            "description": None,
            "tags": {},
            "properties": {},
            "isDefault": name == "workspaceblobstore",
            "credentials": {"credentialsType": "AccountKey"},
            "datastoreType": "AzureBlob",
            "accountName": account,
            "containerName": container,
            "endpoint": endpoint,
            "protocol": protocol,
            "serviceDataAccessAuthIdentity": "WorkspaceSystemAssignedIdentity",
        },
    }


def kubernetes_compute(scope: Scope, name: str) -> dict[str, Any]:
    return {
        "id": scope.child_id("computes", name),
        "name": name,
        "type": f"{PROVIDER}/workspaces/computes",
        "location": scope.location,
        "tags": {},
        "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid4()), "tenantId": TENANT_ID},
        "systemData": system_data(),
        "properties": {
            "computeType": "Kubernetes",
            "computeLocation": scope.location,
            "description": "Attached AKS cluster (emulated: deployments run as local processes)",
            "provisioningState": "Succeeded",
            "provisioningErrors": None,
            "isAttachedCompute": True,
            "disableLocalAuth": True,
            "resourceId": (
                f"/subscriptions/{scope.subscription_id}/resourceGroups/{scope.resource_group}"
                f"/providers/Microsoft.ContainerService/managedClusters/{name}"
            ),
            "properties": {
                "namespace": "azureml",
                "defaultInstanceType": DEFAULT_INSTANCE_TYPE,
                "instanceTypes": {DEFAULT_INSTANCE_TYPE: {"resources": DEFAULT_INSTANCE_RESOURCES}},
                "extensionInstanceReleaseTrain": "stable",
                "relayConnectionString": None,
                "serviceBusConnectionString": None,
                "vcName": None,
            },
        },
    }


def container(
    scope: Scope, collection: str, name: str, versions: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """An asset container (``models/{name}``, ``codes/{name}``, ``environments/{name}``)."""
    latest = _latest_version(versions)
    created = min((v["systemData"]["createdAt"] for v in versions.values()), default=now())
    properties: dict[str, Any] = {
        "description": None,
        "tags": {},
        "properties": {},
        "isArchived": False,
        "latestVersion": latest,
        "nextVersion": _next_version(versions),
    }
    return {
        "id": scope.child_id(collection, name),
        "name": name,
        "type": f"{PROVIDER}/workspaces/{collection}",
        "systemData": system_data(created),
        "properties": properties,
    }


def _latest_version(versions: dict[str, dict[str, Any]]) -> str | None:
    if not versions:
        return None
    return max(versions.values(), key=lambda v: v["systemData"]["createdAt"])["name"]


def _next_version(versions: dict[str, dict[str, Any]]) -> str:
    numeric = [int(v) for v in versions if v.isdigit()]
    return str(max(numeric) + 1) if numeric else "1"


def asset_version(
    scope: Scope,
    collection: str,
    name: str,
    version: str,
    properties: dict[str, Any],
    created_at: str | None = None,
) -> dict[str, Any]:
    return {
        "id": scope.child_id(collection, name, "versions", version),
        "name": version,
        "type": f"{PROVIDER}/workspaces/{collection}/versions",
        "systemData": system_data(created_at),
        "properties": properties,
    }


def model_properties(body: dict[str, Any]) -> dict[str, Any]:
    """What the service stores for a model version: the request plus the fields it fills."""
    properties = _asset_properties(body)
    properties["flavors"] = properties.get("flavors") or {}
    properties.setdefault("modelType", "custom_model")
    properties.setdefault("jobName", None)
    properties.setdefault("stage", "Development")
    properties["provisioningState"] = "Succeeded"
    return properties


def _asset_properties(body: dict[str, Any]) -> dict[str, Any]:
    """The fields the service fills in on every versioned asset (model, code, environment)."""
    properties = dict(body)
    properties.setdefault("description", None)
    properties["tags"] = properties.get("tags") or {}
    properties["properties"] = properties.get("properties") or {}
    properties.setdefault("isArchived", False)
    properties.setdefault("isAnonymous", False)
    return properties


def code_properties(body: dict[str, Any]) -> dict[str, Any]:
    properties = _asset_properties(body)
    properties["provisioningState"] = "Succeeded"
    return properties


def environment_properties(body: dict[str, Any]) -> dict[str, Any]:
    properties = _asset_properties(body)
    properties.setdefault("osType", "Linux")
    properties.setdefault("autoRebuild", "Disabled")
    properties["environmentType"] = "UserCreated"
    properties["provisioningState"] = "Succeeded"
    return properties


def endpoint(
    scope: Scope,
    name: str,
    body: dict[str, Any],
    provisioning_state: str,
    principal_id: str,
    created_at: str | None,
    operation_url: str | None,
) -> dict[str, Any]:
    request = body.get("properties") or {}
    extra = dict(request.get("properties") or {})
    endpoint_id = scope.child_id("onlineEndpoints", name)
    extra["azureml.onlineendpointid"] = endpoint_id.lower()
    if operation_url:
        extra["AzureAsyncOperationUri"] = operation_url
    properties = {
        "description": request.get("description"),
        "properties": extra,
        "scoringUri": f"{scope.public_url}/endpoints/{name}/score",
        "swaggerUri": f"{scope.public_url}/endpoints/{name}/swagger.json",
        "authMode": request.get("authMode") or "Key",
        "provisioningState": provisioning_state,
        "compute": request.get("compute"),
        "publicNetworkAccess": request.get("publicNetworkAccess") or "Enabled",
        "traffic": dict(request.get("traffic") or {}),
        "mirrorTraffic": dict(request.get("mirrorTraffic") or {}),
    }
    return {
        "id": endpoint_id,
        "name": name,
        "type": f"{PROVIDER}/workspaces/onlineEndpoints",
        "location": body.get("location") or scope.location,
        "kind": body.get("kind") or ("K8S" if request.get("compute") else "Managed"),
        "tags": body.get("tags") or {},
        "identity": {
            "type": (body.get("identity") or {}).get("type") or "SystemAssigned",
            "principalId": principal_id,
            "tenantId": TENANT_ID,
        },
        "systemData": system_data(created_at),
        "properties": properties,
    }


def deployment(
    scope: Scope,
    endpoint_name: str,
    name: str,
    body: dict[str, Any],
    provisioning_state: str,
    created_at: str | None,
    operation_url: str | None,
) -> dict[str, Any]:
    properties = dict(body.get("properties") or {})
    extra = dict(properties.get("properties") or {})
    if operation_url:
        extra["AzureAsyncOperationUri"] = operation_url
    properties["properties"] = extra
    properties.setdefault("description", None)
    properties["environmentVariables"] = properties.get("environmentVariables") or {}
    properties["scaleSettings"] = properties.get("scaleSettings") or {"scaleType": "Default"}
    properties["requestSettings"] = {**DEFAULT_REQUEST_SETTINGS, **(properties.get("requestSettings") or {})}
    properties["livenessProbe"] = {**DEFAULT_PROBE, **(properties.get("livenessProbe") or {})}
    properties["readinessProbe"] = {**DEFAULT_PROBE, **(properties.get("readinessProbe") or {})}
    properties.setdefault("appInsightsEnabled", False)
    properties.setdefault("modelMountPath", None)
    properties.setdefault("egressPublicNetworkAccess", "Enabled")
    compute_type = properties.get("endpointComputeType") or "Kubernetes"
    properties["endpointComputeType"] = compute_type
    if compute_type == "Kubernetes":
        properties["instanceType"] = properties.get("instanceType") or DEFAULT_INSTANCE_TYPE
        if not properties.get("containerResourceRequirements"):
            properties["containerResourceRequirements"] = {
                "containerResourceRequests": {
                    "cpu": DEFAULT_INSTANCE_RESOURCES["requests"]["cpu"],
                    "memory": DEFAULT_INSTANCE_RESOURCES["requests"]["memory"],
                    "gpu": None,
                },
                "containerResourceLimits": {
                    "cpu": DEFAULT_INSTANCE_RESOURCES["limits"]["cpu"],
                    "memory": DEFAULT_INSTANCE_RESOURCES["limits"]["memory"],
                    "gpu": None,
                },
            }
    properties["provisioningState"] = provisioning_state
    sku = dict(body.get("sku") or {})
    sku.setdefault("name", "Default")
    sku.setdefault("tier", "Standard")
    sku.setdefault("capacity", 1)
    return {
        "id": scope.child_id("onlineEndpoints", endpoint_name, "deployments", name),
        "name": name,
        "type": f"{PROVIDER}/workspaces/onlineEndpoints/deployments",
        "location": body.get("location") or scope.location,
        "kind": body.get("kind") or ("Kubernetes" if compute_type == "Kubernetes" else "Managed"),
        "tags": body.get("tags") or {},
        "sku": sku,
        "systemData": system_data(created_at),
        "properties": properties,
    }


def operation_status(
    operation_id: str,
    scope: Scope,
    status: str,
    started: str,
    ended: str | None,
    error: dict[str, Any] | None,
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": (
            f"/subscriptions/{scope.subscription_id}/providers/{PROVIDER}/locations/{scope.location}"
            f"/mfeOperationsStatus/{operation_id}"
        ),
        "name": operation_id,
        "status": status,
        "startTime": started,
        "percentComplete": 100.0 if ended else 0.0,
    }
    if ended:
        result["endTime"] = ended
    if error:
        result["error"] = error
    return result
