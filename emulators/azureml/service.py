"""The Azure ML workspace the emulator serves: one thread-safe in-memory state behind a pure dispatcher.

``AzureMLService.handle(method, url, headers, body) -> (status, headers, body)`` is the whole emulator;
the in-process azure-core transport (transport.py) and the HTTPS server (server.py) only carry bytes to
it, so unit tests and real-socket tests exercise the same rules. It answers the ARM/workspace API the
``azure-ai-ml`` SDK uses for a Kubernetes online-endpoint release (workspace, datastore and its secrets,
attached compute, model/code/environment versions, endpoints, keys, deployments with long-running
operations, logs), the data plane (``/endpoints/<name>/score``) and a control API for tests
(``/emulator/...``: health, faults, state).

Rules the service enforces are enforced here too, because the pipeline's error handling is what the
tests are for: asset versions are immutable, traffic must name existing deployments and sum to 100,
a deployment that still has traffic cannot be deleted, a scoring call needs the endpoint's key.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from emulators.azureml import resources as res
from emulators.azureml.blob import BlobStore
from emulators.azureml.requestlog import RequestLog
from emulators.azureml.resources import ApiError, Scope
from emulators.azureml.runtime import (
    Provisioner,
    ProvisioningError,
    ProvisionRequest,
    Runtime,
    ScoringLauncher,
    forward,
    iso_duration_seconds,
    tail,
)

log = logging.getLogger(__name__)

DEFAULT_SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
DEFAULT_RESOURCE_GROUP = "mlrelease-rg"
DEFAULT_WORKSPACE = "mlrelease-ws"
DEFAULT_LOCATION = "eastus"
DEFAULT_AKS_COMPUTE = "aks-compute"
DEFAULT_CONTAINER = "azureml-blobstore-emulator"
DEFAULT_DATASTORE = "workspaceblobstore"
ASSET_COLLECTIONS = {"models": "Model", "codes": "Code", "environments": "Environment"}
# Fields of a version that the service refuses to change once the version exists.
IMMUTABLE_FIELDS = {
    "models": ("modelUri", "modelType"),
    "codes": ("codeUri",),
    "environments": ("image", "condaFile", "build", "inferenceConfig"),
}
PATH_FIELDS = ("modelUri", "codeUri")
NO_TRAFFIC_MESSAGE = (
    "No valid deployments to route to. Please check that the endpoint has at least one deployment with "
    "positive weight values or use a deployment specific header to route."
)

WORKSPACE_ROUTE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/(?P<ws>[^/]+)(?P<rest>/.*)?$",
    re.IGNORECASE,
)
OPERATION_ROUTE = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.MachineLearningServices/locations/(?P<loc>[^/]+)"
    r"/(?P<kind>mfeOperationsStatus|mfeOperationResults)/(?P<op>[^/]+)$",
    re.IGNORECASE,
)
IDENTITY_ROUTE = "/emulator/identity/token"
SCORING_ROUTE = re.compile(r"^/endpoints/(?P<endpoint>[^/]+)/(?P<route>score|swagger\.json)$")
ARM_ID = re.compile(
    r"^(?:azureml:)?/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.MachineLearningServices"
    r"/workspaces/[^/]+/(?P<collection>models|codes|environments|computes)/(?P<name>[^/]+)"
    r"(?:/versions/(?P<version>[^/]+))?$",
    re.IGNORECASE,
)


@dataclass
class WorkspaceConfig:
    """What the emulated workspace looks like; defaults fit tests, every field can be set at start."""

    subscription_id: str = DEFAULT_SUBSCRIPTION
    resource_group: str = DEFAULT_RESOURCE_GROUP
    workspace: str = DEFAULT_WORKSPACE
    location: str = DEFAULT_LOCATION
    aks_computes: tuple[str, ...] = (DEFAULT_AKS_COMPUTE,)
    blob_connection_string: str | None = None
    blob_container: str = DEFAULT_CONTAINER
    # Where clients reach the emulator: scoring URIs and operation URLs are built on it.
    public_url: str = "https://127.0.0.1"
    # Sent as x-ms-retry-after-ms on long-running operations, which azure-core's pollers honour before their
    # own interval (5 s in azure-ai-ml): tests then poll fast without patching the SDK. None: send nothing.
    lro_retry_after_ms: int | None = 100
    liveness_timeout_s: float = 120.0
    # The App Service managed-identity protocol (IDENTITY_ENDPOINT / IDENTITY_HEADER) that
    # azure-identity's ManagedIdentityCredential speaks: a client with no secret at all (an Airflow
    # ``azure`` connection without login/password, hence DefaultAzureCredential) gets its tokens here.
    identity_header: str | None = None


@dataclass
class Faults:
    """Failures a test can inject through ``set_faults`` (or ``POST /emulator/faults``)."""

    # The next deployment provisioned fails with this message (then the fault clears).
    fail_next_provisioning: str | None = None
    # Named deployments fail provisioning with the message (each entry clears when used).
    fail_provisioning: dict[str, str] = field(default_factory=dict)
    # Provisioning holds InProgress this long first (to observe polling and "Creating" states).
    provisioning_delay_s: float = 0.0
    # Scoring requests to a deployment ("deployment" or "endpoint/deployment") answer this status as if
    # its process had, with a JSON error body, until cleared.
    scoring_status: dict[str, int] = field(default_factory=dict)


@dataclass
class Operation:
    id: str
    kind: str  # create/update/delete of endpoint/deployment, regenerateKeys
    status: str = "InProgress"
    started: str = field(default_factory=res.now)
    ended: str | None = None
    error: dict[str, Any] | None = None

    def finish(self, error: dict[str, Any] | None = None) -> None:
        self.status = "Failed" if error else "Succeeded"
        self.error = error
        self.ended = res.now()


@dataclass
class DeploymentState:
    endpoint: str
    name: str
    resource: dict[str, Any]
    runtime: Runtime | None = None
    generation: int = 0


@dataclass
class EndpointState:
    name: str
    resource: dict[str, Any]
    keys: dict[str, str]
    principal_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    deployments: dict[str, DeploymentState] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def api_version(self) -> str:
        return self.query.get("api-version", "")

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as e:
            raise ApiError(400, "BadRequest", f"The request body is not valid JSON: {e}") from e
        if not isinstance(value, dict):
            raise ApiError(400, "BadRequest", "The request body must be a JSON object")
        return value


Response = tuple[int, dict[str, str], bytes]


class AzureMLService:
    """One emulated workspace. Thread-safe; ``close()`` stops every scoring process it started."""

    def __init__(
        self,
        state_dir: Path,
        config: WorkspaceConfig | None = None,
        scoring_launcher: ScoringLauncher | None = None,
    ) -> None:
        self.config = config or WorkspaceConfig()
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.scope = Scope(
            self.config.subscription_id,
            self.config.resource_group,
            self.config.workspace,
            self.config.location,
            self.config.public_url.rstrip("/"),
        )
        self.blob_store = (
            BlobStore(self.config.blob_connection_string, self.config.blob_container)
            if self.config.blob_connection_string
            else None
        )
        self._datastore_key = self.blob_store.account_key if self.blob_store else secrets.token_urlsafe(48)
        self.faults = Faults()
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._threads: list[threading.Thread] = []
        self._assets: dict[str, dict[str, dict[str, dict[str, Any]]]] = {c: {} for c in ASSET_COLLECTIONS}
        self._endpoints: dict[str, EndpointState] = {}
        self._operations: dict[str, Operation] = {}
        self.provisioner = Provisioner(
            self.state_dir, self.blob_store, scoring_launcher, self._write_processes
        )
        self.request_log = RequestLog(self.state_dir / "requests.jsonl", self._secrets)

    # ---- public API ----------------------------------------------------------------------------

    def handle(self, method: str, url: str, headers: dict[str, str], body: bytes | None) -> Response:
        """Answer one HTTP request; ``url`` may be absolute or a path with a query string."""
        started = time.time()
        target = urlsplit(url)
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        request = Request(
            method.upper(),
            unquote(target.path) or "/",
            query,
            {k.lower(): v for k, v in headers.items()},
            body or b"",
        )
        plane = "control" if request.path.startswith("/emulator/") else "arm"
        try:
            if plane == "control":
                status, out_headers, payload = self._control(request)
            elif SCORING_ROUTE.match(request.path):
                plane = "data"
                status, out_headers, payload = self._score(request)
            else:
                status, out_headers, payload = self._arm(request)
        except ApiError as e:
            status, out_headers, payload = e.status, dict(e.headers), res.dumps(e.body())
            out_headers.setdefault("Content-Type", "application/json; charset=utf-8")
            if e.status >= 500:
                log.warning("%s %s -> %s %s", request.method, request.path, e.status, e.message)
        except Exception as e:
            log.exception("Emulator error on %s %s", request.method, request.path)
            error = ApiError(500, "InternalServerError", f"Azure ML emulator error: {type(e).__name__}: {e}")
            status, out_headers, payload = 500, {"Content-Type": "application/json"}, res.dumps(error.body())
        out_headers.setdefault("x-ms-request-id", str(uuid.uuid4()))
        out_headers["Content-Length"] = str(len(payload))
        if plane != "control" or request.path != "/emulator/health":
            self.request_log.append(
                method=request.method,
                path=request.path,
                query=request.query,
                headers=request.headers,
                body=request.body,
                status=status,
                started=started,
                plane=plane,
            )
        return status, out_headers, payload

    def ml_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``MLClient(credential, **kwargs)`` answered in process by this service."""
        from emulators.azureml.transport import AzureMLTransport

        return {
            "subscription_id": self.config.subscription_id,
            "resource_group_name": self.config.resource_group,
            "workspace_name": self.config.workspace,
            "transport": AzureMLTransport(self),
            "enable_telemetry": False,
        }

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        known = set(asdict(Faults()))
        unknown = set(faults) - known
        if unknown:
            raise ValueError(f"Unknown faults {sorted(unknown)}; known: {sorted(known)}")
        with self._lock:
            for name, value in faults.items():
                if name in ("fail_provisioning", "scoring_status"):
                    value = dict(value or {})
                    if name == "scoring_status":
                        value = {str(k): int(v) for k, v in value.items()}
                elif name == "provisioning_delay_s":
                    value = float(value or 0)
                setattr(self.faults, name, value)
            return asdict(self.faults)

    def requests(self) -> list[dict[str, Any]]:
        return self.request_log.entries()

    def endpoint_keys(self, endpoint: str) -> dict[str, str]:
        with self._lock:
            return dict(self._endpoint(endpoint).keys)

    def snapshot(self) -> dict[str, Any]:
        """Endpoints, traffic, deployments with their state, ports and pids (for tests and debugging)."""
        with self._lock:
            endpoints = {}
            for name, state in self._endpoints.items():
                endpoints[name] = {
                    "provisioningState": state.resource["properties"]["provisioningState"],
                    "traffic": dict(state.resource["properties"]["traffic"]),
                    "deployments": {
                        d.name: {
                            "provisioningState": d.resource["properties"]["provisioningState"],
                            "port": d.runtime.port if d.runtime else None,
                            "pid": d.runtime.process.pid if d.runtime else None,
                            "directory": str(self.provisioner.directory(name, d.name)),
                        }
                        for d in state.deployments.values()
                    },
                }
            return {"endpoints": endpoints, "faults": asdict(self.faults)}

    def close(self) -> None:
        """Stop provisioning and every scoring process."""
        self._closing.set()
        for thread in list(self._threads):
            thread.join(timeout=15)
        with self._lock:
            runtimes = [
                d.runtime for e in self._endpoints.values() for d in e.deployments.values() if d.runtime
            ]
            for e in self._endpoints.values():
                for d in e.deployments.values():
                    d.runtime = None
        for runtime in runtimes:
            runtime.stop()
        self._write_processes()

    # ---- helpers -------------------------------------------------------------------------------

    def _secrets(self) -> list[str]:
        with self._lock:
            values = [self._datastore_key]
            for state in self._endpoints.values():
                values.extend(state.keys.values())
                values.extend(state.tokens)
            return values

    def _write_processes(self) -> None:
        """``processes.json``: the scoring pids, so ``stop`` can clean up after a crashed emulator."""
        with self._lock:  # held while writing: provisioning threads call this concurrently
            pids = {
                f"{e.name}/{d.name}": d.runtime.process.pid
                for e in self._endpoints.values()
                for d in e.deployments.values()
                if d.runtime and d.runtime.alive()
            }
            for key, pid in self.provisioner.starting_pids().items():
                pids.setdefault(key, pid)
            path = self.state_dir / "processes.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(pids))
            os.replace(tmp, path)

    def _json(self, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        out = {"Content-Type": "application/json; charset=utf-8"}
        out.update(headers or {})
        return status, out, res.dumps(value)

    def _lro_headers(self, request: Request, operation: Operation, location: bool) -> dict[str, str]:
        api_version = request.api_version or "2023-04-01-preview"
        headers = {
            "Azure-AsyncOperation": self.scope.operation_url(
                "mfeOperationsStatus", operation.id, api_version
            ),
            "x-ms-async-operation-timeout": "PT1H",
        }
        if location:
            headers["Location"] = self.scope.operation_url("mfeOperationResults", operation.id, api_version)
        headers.update(self._retry_hint())
        return headers

    def _retry_hint(self) -> dict[str, str]:
        if self.config.lro_retry_after_ms is None:
            return {}
        return {"x-ms-retry-after-ms": str(self.config.lro_retry_after_ms)}

    def _new_operation(self, prefix: str, kind: str) -> Operation:
        operation = Operation(f"{prefix}:{uuid.uuid4()}", kind)
        with self._lock:
            self._operations[operation.id] = operation
        return operation

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    # ---- control API ---------------------------------------------------------------------------

    def _control(self, request: Request) -> Response:
        path, method = request.path, request.method
        if path == "/emulator/health" and method == "GET":
            return self._json(
                {
                    "status": "ok",
                    "pid": os.getpid(),
                    "url": self.scope.public_url,
                    "state_dir": str(self.state_dir),
                }
            )
        if path == "/emulator/faults":
            if method == "POST":
                try:
                    return self._json(self.set_faults(**request.json()))
                except (ValueError, TypeError) as e:
                    raise ApiError(400, "BadRequest", str(e)) from e
            if method == "GET":
                with self._lock:
                    return self._json(asdict(self.faults))
        if path == "/emulator/state" and method == "GET":
            return self._json(self.snapshot())
        if path == IDENTITY_ROUTE and method == "GET":
            return self._identity_token(request)
        raise ApiError(404, "NotFound", f"No emulator control route {method} {path}")

    def _identity_token(self, request: Request) -> Response:
        """A managed-identity token (App Service protocol, api-version 2019-08-01) for ``resource``."""
        expected = self.config.identity_header
        if not expected or request.headers.get("x-identity-header") != expected:
            raise ApiError(401, "Unauthorized", "X-IDENTITY-HEADER is missing or wrong")
        resource = request.query.get("resource")
        if not resource:
            raise ApiError(400, "BadRequest", "the 'resource' query parameter is required")
        return self._json(
            {
                "access_token": f"emulator-msi-{uuid.uuid4().hex}",
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": "00000000-0000-0000-0000-00000000a11f",
            }
        )

    # ---- ARM -----------------------------------------------------------------------------------

    def _authenticate_arm(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing or is not a bearer token.",
            )

    def _arm(self, request: Request) -> Response:
        if request.path == "/discovery" and request.method == "GET":
            url = self.scope.public_url
            return self._json(
                {k: url for k in ("api", "catalog", "experimentation", "history", "modelmanagement")}
            )
        self._authenticate_arm(request)
        if not request.api_version:
            raise ApiError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        match = OPERATION_ROUTE.match(request.path)
        if match:
            return self._operation(request, match.group("kind").lower(), match.group("op"))
        match = WORKSPACE_ROUTE.match(request.path)
        if not match:
            raise ApiError(
                404,
                "NotFound",
                f"The emulator serves no route {request.method} {request.path} (not an Azure ML path)",
            )
        self._check_scope(match.group("sub"), match.group("rg"), match.group("ws"))
        parts = [p for p in (match.group("rest") or "").split("/") if p]
        return self._workspace_route(request, parts)

    def _check_scope(self, subscription: str, resource_group: str, workspace: str) -> None:
        scope = self.scope
        if subscription.lower() != scope.subscription_id.lower():
            raise ApiError(
                404, "SubscriptionNotFound", f"The subscription '{subscription}' could not be found."
            )
        if resource_group.lower() != scope.resource_group.lower():
            raise ApiError(
                404, "ResourceGroupNotFound", f"Resource group '{resource_group}' could not be found."
            )
        if workspace.lower() != scope.workspace.lower():
            raise ApiError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.MachineLearningServices/workspaces/{workspace}' under resource group "
                f"'{resource_group}' was not found.",
            )

    def _workspace_route(self, request: Request, parts: list[str]) -> Response:
        method = request.method
        n = len(parts)
        if n == 0:
            self._expect(request, "GET")
            return self._json(res.workspace(self.scope, self._storage_account()))
        head = parts[0].lower()
        if head == "datastores":
            return self._datastores(request, parts[1:])
        if head == "computes":
            return self._computes(request, parts[1:])
        if head in ASSET_COLLECTIONS:
            return self._assets_route(request, head, parts[1:])
        if head == "onlineendpoints":
            return self._endpoints_route(request, parts[1:])
        raise ApiError(404, "NotFound", f"The emulated workspace serves no {method} .../{'/'.join(parts)}")

    def _expect(self, request: Request, *methods: str) -> None:
        if request.method not in methods:
            raise ApiError(
                405,
                "MethodNotAllowed",
                f"{request.method} is not supported on {request.path}; use {'/'.join(methods)}",
            )

    # ---- datastores and computes ---------------------------------------------------------------

    def _storage_account(self) -> str:
        return self.blob_store.account_name if self.blob_store else "emulatorstorage"

    def _datastore(self) -> dict[str, Any]:
        if self.blob_store:
            endpoint, protocol = self.blob_store.datastore_endpoint()
            container = self.blob_store.container
        else:
            endpoint, protocol, container = "core.windows.net", "https", self.config.blob_container
        return res.datastore(
            self.scope, DEFAULT_DATASTORE, self._storage_account(), container, endpoint, protocol
        )

    def _datastores(self, request: Request, parts: list[str]) -> Response:
        if not parts:
            self._expect(request, "GET")
            return self._json({"value": [self._datastore()]})
        name = parts[0]
        if name != DEFAULT_DATASTORE:
            raise ApiError(
                404, "UserError", f"Datastore '{name}' was not found in workspace '{self.scope.workspace}'."
            )
        if len(parts) == 1:
            self._expect(request, "GET")
            return self._json(self._datastore())
        if len(parts) == 2 and parts[1].lower() == "listsecrets":
            self._expect(request, "POST")
            return self._json({"secretsType": "AccountKey", "key": self._datastore_key})
        raise ApiError(404, "NotFound", f"No datastore route {request.method} {request.path}")

    def _computes(self, request: Request, parts: list[str]) -> Response:
        self._expect(request, "GET")
        if not parts:
            return self._json(
                {"value": [res.kubernetes_compute(self.scope, n) for n in self.config.aks_computes]}
            )
        name = parts[0]
        if len(parts) > 1 or name not in self.config.aks_computes:
            raise ApiError(
                404,
                "ResourceNotFound",
                f"Compute '{name}' is not attached to workspace '{self.scope.workspace}' (attached: "
                f"{', '.join(self.config.aks_computes) or 'none'}).",
            )
        return self._json(res.kubernetes_compute(self.scope, name))

    # ---- versioned assets ----------------------------------------------------------------------

    def _assets_route(self, request: Request, collection: str, parts: list[str]) -> Response:
        store = self._assets[collection]
        label = ASSET_COLLECTIONS[collection]
        if not parts:
            self._expect(request, "GET")
            with self._lock:
                return self._json(
                    {"value": [res.container(self.scope, collection, n, v) for n, v in store.items()]}
                )
        name = parts[0]
        if len(parts) == 1:
            self._expect(request, "GET")
            with self._lock:
                if name not in store:
                    raise ApiError(404, "UserError", f"{label} container with name: {name} not found.")
                return self._json(res.container(self.scope, collection, name, store[name]))
        if parts[1].lower() != "versions":
            raise ApiError(404, "NotFound", f"No asset route {request.method} {request.path}")
        if len(parts) == 2:
            self._expect(request, "GET")
            return self._json({"value": self._list_versions(collection, name, request.query)})
        version = parts[2]
        if len(parts) == 4 and parts[3].lower() == "startpendingupload":
            raise ApiError(
                400,
                "UserError",
                f"The emulator does not serve pending uploads ({collection}/{name}/versions/{version}): upload "
                "the files to the workspaceblobstore Blob endpoint yourself and register the asset by its "
                "azureml://datastores/workspaceblobstore/paths/... URI",
            )
        if len(parts) != 3:
            raise ApiError(404, "NotFound", f"No asset route {request.method} {request.path}")
        if request.method == "GET":
            with self._lock:
                found = store.get(name, {}).get(version)
                if found is None:
                    raise ApiError(
                        404,
                        "UserError",
                        f"{label} {name}:{version} was not found in workspace '{self.scope.workspace}'.",
                    )
                return self._json(found)
        if request.method == "PUT":
            return self._put_version(collection, name, version, request.json())
        if request.method == "DELETE":
            with self._lock:
                if store.get(name, {}).pop(version, None) is None:
                    return 204, {}, b""
                if not store[name]:
                    del store[name]
            return 200, {}, b""
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")

    def _list_versions(self, collection: str, name: str, query: dict[str, str]) -> list[dict[str, Any]]:
        with self._lock:
            versions = list(self._assets[collection].get(name, {}).values())
        if "version" in query:
            versions = [v for v in versions if v["name"] == query["version"]]
        view = query.get("listViewType", "ActiveOnly")
        if view == "ActiveOnly":
            versions = [v for v in versions if not v["properties"].get("isArchived")]
        elif view == "ArchivedOnly":
            versions = [v for v in versions if v["properties"].get("isArchived")]
        if "tags" in query:
            wanted = [t for t in query["tags"].split(",") if t]
            for tag in wanted:
                key, _, value = tag.partition("=")
                versions = [
                    v
                    for v in versions
                    if key in v["properties"]["tags"] and (not value or v["properties"]["tags"][key] == value)
                ]
        order = query.get("$orderBy", query.get("$orderby", "createdtime desc")).lower()
        versions.sort(key=lambda v: v["systemData"]["createdAt"], reverse=order.endswith("desc"))
        if "$top" in query:
            versions = versions[: int(query["$top"])]
        return versions

    def _put_version(self, collection: str, name: str, version: str, body: dict[str, Any]) -> Response:
        requested = body.get("properties")
        if not isinstance(requested, dict):
            raise ApiError(400, "UserError", f"The {collection[:-1]} version body must have 'properties'.")
        builders = {
            "models": res.model_properties,
            "codes": res.code_properties,
            "environments": res.environment_properties,
        }
        label = ASSET_COLLECTIONS[collection]
        if collection == "models" and not requested.get("modelUri"):
            raise ApiError(400, "UserError", f"Model {name}:{version} has no modelUri (the model path).")
        if collection == "environments" and not (requested.get("image") or requested.get("build")):
            raise ApiError(
                400, "UserError", f"Environment {name}:{version} needs an image or a build context."
            )
        with self._lock:
            versions = self._assets[collection].setdefault(name, {})
            existing = versions.get(version)
            if existing is not None:
                before = existing["properties"]
                for key in IMMUTABLE_FIELDS[collection]:
                    if key not in requested:
                        continue
                    old, new = before.get(key), requested.get(key)
                    if key in PATH_FIELDS:
                        old, new = self._normalise_uri(old), self._normalise_uri(new)
                    if old != new and not (key == "modelType" and new is None):
                        if key in PATH_FIELDS:
                            message = "Asset paths cannot be updated."
                        else:
                            message = (
                                f"{label} {name}:{version} already exists with {key}={before.get(key)!r}; a "
                                f"version is immutable, register the change as a new version."
                            )
                        raise ApiError(409, "UserError", message)
                merged = dict(before)
                for key in ("description", "tags", "properties", "isArchived", "stage"):
                    if key in requested and requested[key] is not None:
                        merged[key] = requested[key]
                resource = res.asset_version(
                    self.scope, collection, name, version, merged, existing["systemData"]["createdAt"]
                )
                status = 200
            else:
                resource = res.asset_version(
                    self.scope, collection, name, version, builders[collection](requested)
                )
                status = 201
            versions[version] = resource
            return self._json(resource, status)

    def _normalise_uri(self, uri: Any) -> Any:
        """Short and long azureml:// datastore URIs name the same path."""
        if not isinstance(uri, str):
            return uri
        match = re.match(
            r"^azureml://(?:subscriptions/.+?/workspaces/[^/]+/)?(datastores/.*)$", uri, re.IGNORECASE
        )
        return f"azureml://{match.group(1)}".rstrip("/") if match else uri.rstrip("/")

    def _resolve_asset(self, reference: str | None, collection: str, what: str) -> dict[str, Any]:
        if not reference:
            raise ApiError(400, "BadArgument", f"The deployment has no {what}.")
        match = ARM_ID.match(reference)
        if not match or match.group("collection").lower() != collection or not match.group("version"):
            raise ApiError(
                400,
                "BadArgument",
                f"The deployment's {what} {reference!r} is not a workspace {collection[:-1]} version ARM id "
                f"({self.scope.workspace_id}/{collection}/<name>/versions/<version>); registry and anonymous "
                "assets are not emulated",
            )
        name, version = match.group("name"), match.group("version")
        with self._lock:
            found = self._assets[collection].get(name, {}).get(version)
        if found is None:
            raise ApiError(
                404,
                "ResourceNotFound",
                f"{ASSET_COLLECTIONS[collection]} {name}:{version} ({what}) does not exist.",
            )
        return found

    # ---- online endpoints ----------------------------------------------------------------------

    def _endpoint(self, name: str) -> EndpointState:
        state = self._endpoints.get(name)
        if state is None:
            raise ApiError(
                404,
                "UserError",
                f"Online endpoint '{name}' was not found in workspace '{self.scope.workspace}'.",
            )
        return state

    def _endpoints_route(self, request: Request, parts: list[str]) -> Response:
        if not parts:
            self._expect(request, "GET")
            with self._lock:
                return self._json({"value": [e.resource for e in self._endpoints.values()]})
        name = parts[0]
        if len(parts) == 1:
            if request.method == "GET":
                with self._lock:
                    return self._json(self._endpoint(name).resource)
            if request.method == "PUT":
                return self._put_endpoint(request, name)
            if request.method == "PATCH":
                return self._patch_endpoint(request, name)
            if request.method == "DELETE":
                return self._delete_endpoint(request, name)
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        action = parts[1].lower()
        if len(parts) == 2 and action == "listkeys":
            self._expect(request, "POST")
            with self._lock:
                state = self._endpoint(name)
                self._require_auth_mode(state, "Key")
                return self._json(
                    {"primaryKey": state.keys["primary"], "secondaryKey": state.keys["secondary"]}
                )
        if len(parts) == 2 and action == "regeneratekeys":
            self._expect(request, "POST")
            return self._regenerate_keys(request, name)
        if len(parts) == 2 and action == "token":
            self._expect(request, "POST")
            with self._lock:
                state = self._endpoint(name)
                self._require_auth_mode(state, "AMLToken")
                token = secrets.token_urlsafe(48)
                state.tokens.add(token)
            expiry = time.time() + 3600
            return self._json(
                {
                    "accessToken": token,
                    "tokenType": "Bearer",
                    "expiryTimeUtc": int(expiry),
                    "refreshAfterTimeUtc": int(expiry - 600),
                }
            )
        if action == "deployments":
            return self._deployments_route(request, name, parts[2:])
        raise ApiError(404, "NotFound", f"No online endpoint route {request.method} {request.path}")

    def _require_auth_mode(self, state: EndpointState, mode: str) -> None:
        actual = state.resource["properties"]["authMode"]
        if actual.lower() != mode.lower():
            raise ApiError(
                400,
                "BadArgument",
                f"Online endpoint '{state.name}' uses auth mode {actual}, not {mode}.",
            )

    def _validate_compute(self, compute: Any) -> None:
        if not compute:
            raise ApiError(
                400,
                "BadArgument",
                "The emulator serves Kubernetes online endpoints only: set compute to the name of an attached "
                f"Kubernetes compute ({', '.join(self.config.aks_computes) or 'none attached'}).",
            )
        name = str(compute).rstrip("/").rsplit("/", 1)[-1]
        if name not in self.config.aks_computes:
            raise ApiError(
                400,
                "BadArgument",
                f"Compute '{name}' is not attached to workspace '{self.scope.workspace}' (attached: "
                f"{', '.join(self.config.aks_computes) or 'none'}).",
            )

    def _validate_traffic(
        self, state: EndpointState | None, endpoint: str, traffic: Any, field_name: str
    ) -> None:
        if traffic in (None, {}):
            return
        if not isinstance(traffic, dict):
            raise ApiError(
                400, "BadArgument", f"{field_name} must be an object of deployment name to percentage."
            )
        deployments = set(state.deployments) if state else set()
        unknown = sorted(set(traffic) - deployments)
        if unknown:
            raise ApiError(
                400,
                "BadArgument",
                f"Traffic for endpoint '{endpoint}' names deployments that do not exist: {', '.join(unknown)}. "
                f"Existing deployments: {', '.join(sorted(deployments)) or 'none'}. Create the deployment first.",
            )
        values = list(traffic.values())
        if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 or v > 100 for v in values):
            raise ApiError(
                400, "BadArgument", f"{field_name} values must be integers between 0 and 100, got {traffic}."
            )
        total = sum(values)
        if field_name == "traffic" and total not in (0, 100):
            raise ApiError(
                400,
                "BadArgument",
                f"Traffic values for endpoint '{endpoint}' must sum to 100 (or all be 0); they sum to {total}: "
                f"{traffic}.",
            )
        if field_name == "mirrorTraffic" and total > 50:
            raise ApiError(
                400, "BadArgument", f"Mirror traffic for endpoint '{endpoint}' must not exceed 50%."
            )

    def _put_endpoint(self, request: Request, name: str) -> Response:
        body = request.json()
        properties = body.get("properties") or {}
        self._validate_compute(properties.get("compute"))
        auth_mode = properties.get("authMode") or "Key"
        if auth_mode.lower() not in ("key", "amltoken"):
            raise ApiError(400, "BadArgument", f"Auth mode {auth_mode} is not emulated; use Key or AMLToken.")
        operation = self._new_operation("oe", "endpoint")
        headers = self._lro_headers(request, operation, location=False)
        with self._lock:
            existing = self._endpoints.get(name)
            self._validate_traffic(existing, name, properties.get("traffic"), "traffic")
            self._validate_traffic(existing, name, properties.get("mirrorTraffic"), "mirrorTraffic")
            if existing is None:
                keys = {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)}
                state = EndpointState(name, {}, keys)
                created_at = None
                status = 201
            else:
                state = existing
                created_at = existing.resource["systemData"]["createdAt"]
                status = 200
            state.resource = res.endpoint(
                self.scope,
                name,
                body,
                "Creating" if existing is None else "Updating",
                state.principal_id,
                created_at,
                headers["Azure-AsyncOperation"],
            )
            self._endpoints[name] = state
            # Nothing to provision for an endpoint on an attached cluster: it is ready at once.
            state.resource["properties"]["provisioningState"] = "Succeeded"
            operation.finish()
            answer = json.loads(json.dumps(state.resource))
        answer["properties"]["provisioningState"] = "Creating" if status == 201 else "Updating"
        return self._json(answer, status, headers)

    def _patch_endpoint(self, request: Request, name: str) -> Response:
        body = request.json()
        with self._lock:
            state = self._endpoint(name)
            properties = body.get("properties") or {}
            if "traffic" in properties:
                self._validate_traffic(state, name, properties["traffic"], "traffic")
                state.resource["properties"]["traffic"] = dict(properties["traffic"] or {})
            if "mirrorTraffic" in properties:
                self._validate_traffic(state, name, properties["mirrorTraffic"], "mirrorTraffic")
                state.resource["properties"]["mirrorTraffic"] = dict(properties["mirrorTraffic"] or {})
            if "tags" in body:
                state.resource["tags"] = dict(body["tags"] or {})
            state.resource["systemData"] = res.system_data(state.resource["systemData"]["createdAt"])
            resource = json.loads(json.dumps(state.resource))
        return self._json(resource)

    def _delete_endpoint(self, request: Request, name: str) -> Response:
        with self._lock:
            state = self._endpoints.get(name)
            if state is None:
                return 204, {}, b""
            state.resource["properties"]["provisioningState"] = "Deleting"
        operation = self._new_operation("oe", "endpoint-delete")

        def delete() -> None:
            with self._lock:
                runtimes = [d.runtime for d in state.deployments.values() if d.runtime]
                for d in state.deployments.values():
                    d.runtime = None
                    d.generation += 1
            for runtime in runtimes:
                runtime.stop()
            with self._lock:
                if self._endpoints.get(name) is state:
                    del self._endpoints[name]
                operation.finish()
            self._write_processes()

        self._start_thread(delete, f"delete-endpoint-{name}")
        return 202, self._lro_headers(request, operation, location=True), b""

    def _regenerate_keys(self, request: Request, name: str) -> Response:
        body = request.json()
        key_type = str(body.get("keyType") or "Primary").lower()
        if key_type not in ("primary", "secondary"):
            raise ApiError(
                400, "BadArgument", f"keyType must be Primary or Secondary, got {body.get('keyType')!r}."
            )
        operation = self._new_operation("oe", "regenerate-keys")
        with self._lock:
            state = self._endpoint(name)
            self._require_auth_mode(state, "Key")
            # azure-ai-ml 1.35.2 sends the *current* key as keyValue; a key set to itself is a regeneration.
            value = body.get("keyValue")
            if not value or value == state.keys[key_type]:
                value = secrets.token_urlsafe(32)
            state.keys[key_type] = str(value)
            operation.finish()
        return 202, self._lro_headers(request, operation, location=True), b""

    # ---- deployments ---------------------------------------------------------------------------

    def _deployments_route(self, request: Request, endpoint: str, parts: list[str]) -> Response:
        if not parts:
            self._expect(request, "GET")
            with self._lock:
                state = self._endpoint(endpoint)
                return self._json({"value": [d.resource for d in state.deployments.values()]})
        name = parts[0]
        if len(parts) == 1:
            if request.method == "GET":
                with self._lock:
                    return self._json(self._deployment(endpoint, name).resource)
            if request.method == "PUT":
                return self._put_deployment(request, endpoint, name)
            if request.method == "DELETE":
                return self._delete_deployment(request, endpoint, name)
            raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported on {request.path}")
        action = parts[1].lower()
        if len(parts) == 2 and action == "getlogs":
            self._expect(request, "POST")
            return self._get_logs(request, endpoint, name)
        if len(parts) == 2 and action == "skus":
            self._expect(request, "GET")
            return self._json({"value": []})
        raise ApiError(404, "NotFound", f"No deployment route {request.method} {request.path}")

    def _deployment(self, endpoint: str, name: str) -> DeploymentState:
        state = self._endpoint(endpoint)
        deployment = state.deployments.get(name)
        if deployment is None:
            raise ApiError(
                404,
                "UserError",
                f"Deployment '{name}' was not found in online endpoint '{endpoint}'.",
            )
        return deployment

    def _put_deployment(self, request: Request, endpoint: str, name: str) -> Response:
        body = request.json()
        properties = body.get("properties") or {}
        compute_type = properties.get("endpointComputeType") or "Kubernetes"
        with self._lock:
            endpoint_state = self._endpoint(endpoint)
            if compute_type != "Kubernetes" or not endpoint_state.resource["properties"].get("compute"):
                raise ApiError(
                    400,
                    "BadArgument",
                    f"Deployment '{name}' is {compute_type} but endpoint '{endpoint}' is a Kubernetes online "
                    "endpoint: use KubernetesOnlineDeployment.",
                )
            current = endpoint_state.deployments.get(name)
            if current is not None and current.resource["properties"]["provisioningState"] in (
                "Creating",
                "Updating",
                "Deleting",
            ):
                raise ApiError(
                    409,
                    "Conflict",
                    f"Deployment '{name}' of endpoint '{endpoint}' is {current.resource['properties']['provisioningState']}; "
                    "wait for that operation to finish before changing it.",
                )
        model = self._resolve_asset(properties.get("model"), "models", "model")
        code_config = properties.get("codeConfiguration") or {}
        code = (
            self._resolve_asset(code_config["codeId"], "codes", "code") if code_config.get("codeId") else None
        )
        if properties.get("environmentId"):
            self._resolve_asset(properties["environmentId"], "environments", "environment")
        instance_type = properties.get("instanceType")
        if instance_type and instance_type != res.DEFAULT_INSTANCE_TYPE:
            raise ApiError(
                400,
                "BadArgument",
                f"Instance type '{instance_type}' does not exist on compute "
                f"'{endpoint_state.resource['properties']['compute'].rsplit('/', 1)[-1]}' (instance types: "
                f"{res.DEFAULT_INSTANCE_TYPE}).",
            )
        model_name, model_version = model["id"].split("/models/", 1)[1].split("/versions/")
        provision = ProvisionRequest(
            endpoint=endpoint,
            deployment=name,
            model_name=model_name,
            model_version=model_version,
            model_uri=model["properties"]["modelUri"],
            code_uri=code["properties"]["codeUri"] if code else None,
            scoring_script=code_config.get("scoringScript"),
            environment_variables={
                str(k): str(v) for k, v in (properties.get("environmentVariables") or {}).items()
            },
            liveness_timeout_s=self.config.liveness_timeout_s,
        )
        operation = self._new_operation("od", "deployment")
        headers = self._lro_headers(request, operation, location=False)
        with self._lock:
            endpoint_state = self._endpoint(endpoint)
            existing = endpoint_state.deployments.get(name)
            state_name = "Updating" if existing else "Creating"
            resource = res.deployment(
                self.scope,
                endpoint,
                name,
                body,
                state_name,
                existing.resource["systemData"]["createdAt"] if existing else None,
                headers["Azure-AsyncOperation"],
            )
            if existing is None:
                existing = DeploymentState(endpoint, name, resource)
                endpoint_state.deployments[name] = existing
                status = 201
            else:
                existing.resource = resource
                status = 200
            existing.generation += 1
            generation = existing.generation
            fault = self._take_provisioning_fault(name)
            delay = self.faults.provisioning_delay_s
            answer = json.loads(json.dumps(resource))
        self._start_thread(
            lambda: self._provision(existing, generation, provision, operation, fault, delay),
            f"provision-{endpoint}-{name}",
        )
        return self._json(answer, status, headers)

    def _take_provisioning_fault(self, deployment: str) -> str | None:
        if deployment in self.faults.fail_provisioning:
            return self.faults.fail_provisioning.pop(deployment)
        if self.faults.fail_next_provisioning:
            message, self.faults.fail_next_provisioning = self.faults.fail_next_provisioning, None
            return message
        return None

    def _provision(
        self,
        deployment: DeploymentState,
        generation: int,
        request: ProvisionRequest,
        operation: Operation,
        fault: str | None,
        delay: float,
    ) -> None:
        previous = None
        with self._lock:
            if deployment.runtime is not None:
                # Updating in place: the old process goes first (its files are replaced).
                previous, deployment.runtime = deployment.runtime, None
        if previous is not None:
            previous.stop()
        runtime: Runtime | None = None
        error: dict[str, Any] | None = None
        try:
            if delay and self._closing.wait(delay):
                raise ProvisioningError(
                    "OperationCanceled", "Provisioning was cancelled: the emulator is stopping"
                )
            if fault:
                raise ProvisioningError("DeploymentFailed", fault)
            runtime = self.provisioner.provision(request, self._closing)
        except ProvisioningError as e:
            error = {"code": e.code, "message": e.message}
            log.info("Deployment %s/%s failed: %s", request.endpoint, request.deployment, e.message)
        except Exception as e:
            log.exception("Provisioning %s/%s failed", request.endpoint, request.deployment)
            error = {"code": "InternalServerError", "message": f"Provisioning failed in the emulator: {e}"}
        with self._lock:
            current = deployment.generation == generation and not self._closing.is_set()
            if current:
                deployment.runtime = runtime
                deployment.resource["properties"]["provisioningState"] = "Failed" if error else "Succeeded"
                operation.finish(error)
            else:
                operation.finish(error or {"code": "OperationCanceled", "message": "Superseded or cancelled"})
        if not current and runtime is not None:
            runtime.stop()
        self._write_processes()

    def _delete_deployment(self, request: Request, endpoint: str, name: str) -> Response:
        with self._lock:
            endpoint_state = self._endpoint(endpoint)
            deployment = endpoint_state.deployments.get(name)
            if deployment is None:
                return 204, {}, b""
            traffic = endpoint_state.resource["properties"]["traffic"].get(name, 0)
            mirror = endpoint_state.resource["properties"]["mirrorTraffic"].get(name, 0)
            if traffic or mirror:
                kind = "traffic" if traffic else "mirror traffic"
                raise ApiError(
                    400,
                    "BadArgument",
                    f"Deployment '{name}' cannot be deleted: it still receives {traffic or mirror}% of endpoint "
                    f"'{endpoint}' {kind}. Update the endpoint's traffic to route nothing to it, then delete it.",
                )
            deployment.resource["properties"]["provisioningState"] = "Deleting"
            deployment.generation += 1
            runtime, deployment.runtime = deployment.runtime, None
        operation = self._new_operation("od", "deployment-delete")

        def delete() -> None:
            if runtime is not None:
                runtime.stop()
            with self._lock:
                if endpoint_state.deployments.get(name) is deployment:
                    del endpoint_state.deployments[name]
                operation.finish()
            self._write_processes()

        self._start_thread(delete, f"delete-{endpoint}-{name}")
        return 202, self._lro_headers(request, operation, location=True), b""

    def _get_logs(self, request: Request, endpoint: str, name: str) -> Response:
        body = request.json()
        lines = int(body.get("tail") or 5000)
        container = str(body.get("containerType") or "InferenceServer").lower()
        with self._lock:
            self._deployment(endpoint, name)
        if container == "storageinitializer":
            path = self.provisioner.storage_log(endpoint, name)
        else:
            path = self.provisioner.inference_log(endpoint, name)
        return self._json({"content": tail(path, lines)})

    # ---- long-running operations ---------------------------------------------------------------

    def _operation(self, request: Request, kind: str, operation_id: str) -> Response:
        self._expect(request, "GET")
        with self._lock:
            operation = self._operations.get(operation_id)
            if operation is None:
                raise ApiError(404, "NotFound", f"Operation {operation_id} does not exist.")
            status, error = operation.status, operation.error
            body = res.operation_status(
                operation.id, self.scope, status, operation.started, operation.ended, error
            )
        hint = self._retry_hint() if status == "InProgress" else {}
        if kind == "mfeoperationresults":
            if status == "InProgress":
                return 202, self._lro_headers(request, operation, location=True), b""
            if status == "Failed":
                raise ApiError(400, error["code"], error["message"])  # type: ignore[index]
            return 200, {}, b""
        return self._json(body, 200, hint)

    # ---- data plane ----------------------------------------------------------------------------

    def _score(self, request: Request) -> Response:
        match = SCORING_ROUTE.match(request.path)
        assert match is not None
        endpoint, route = match.group("endpoint"), match.group("route")
        with self._lock:
            state = self._endpoints.get(endpoint)
            if state is None:
                raise ApiError(404, "EndpointNotFound", f"Online endpoint '{endpoint}' does not exist.")
            self._authenticate_scoring(state, request)
            requested = request.headers.get("azureml-model-deployment")
            if requested:
                deployment = state.deployments.get(requested)
                if deployment is None:
                    raise ApiError(
                        404,
                        "DeploymentNotFound",
                        f"Deployment '{requested}' (header azureml-model-deployment) does not exist in endpoint "
                        f"'{endpoint}'; deployments: {', '.join(sorted(state.deployments)) or 'none'}.",
                    )
            else:
                weights = {
                    name: weight
                    for name, weight in state.resource["properties"]["traffic"].items()
                    if weight > 0 and name in state.deployments
                }
                if not weights:
                    raise ApiError(404, "NoValidDeployments", NO_TRAFFIC_MESSAGE)
                chosen = random.choices(list(weights), weights=list(weights.values()))[0]
                deployment = state.deployments[chosen]
            runtime = deployment.runtime
            status_fault = self.faults.scoring_status.get(
                f"{endpoint}/{deployment.name}", self.faults.scoring_status.get(deployment.name)
            )
            timeout = iso_duration_seconds(
                deployment.resource["properties"]["requestSettings"].get("requestTimeout"), 5.0
            )
            provisioning_state = deployment.resource["properties"]["provisioningState"]
        tag = {"azureml-model-deployment": deployment.name}
        if status_fault:
            error = ApiError(
                status_fault,
                "ModelError",
                f"Deployment '{deployment.name}' answered {status_fault} (emulator fault scoring_status)",
                tag,
            )
            raise error
        if runtime is None or not runtime.alive():
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"Deployment '{deployment.name}' of endpoint '{endpoint}' has no running scoring process "
                f"(provisioningState {provisioning_state}); see ml_client.online_deployments.get_logs.",
                tag,
            )
        path = "/score" if route == "score" else "/swagger.json"
        status, headers, payload = forward(
            runtime, request.method, path, request.headers, request.body, timeout
        )
        headers = {k: v for k, v in headers.items() if k.lower() != "azureml-model-deployment"}
        headers.update(tag)
        return status, headers, payload

    def _authenticate_scoring(self, state: EndpointState, request: Request) -> None:
        scheme, _, credential = request.headers.get("authorization", "").partition(" ")
        credential = credential.strip()
        auth_mode = state.resource["properties"]["authMode"].lower()
        valid = set(state.keys.values()) if auth_mode == "key" else state.tokens
        if (
            scheme.lower() != "bearer"
            or not credential
            or not any(secrets.compare_digest(credential, v) for v in valid)
        ):
            what = "key" if auth_mode == "key" else "token"
            raise ApiError(
                401,
                "Unauthorized",
                f"Missing or invalid {what} for endpoint '{state.name}': send 'Authorization: Bearer <{what}>' "
                f"(ml_client.online_endpoints.get_keys('{state.name}')).",
            )
