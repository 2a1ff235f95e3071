"""What a caller needs to point the real ``azure-ai-ml`` SDK at the emulator.

Two levels, verified against azure-ai-ml 1.35.2 with every call of a release (models, code,
environments, endpoint, deployment, traffic, keys, invoke, logs, deletes):

* In process: ``MLClient(credential, transport=AzureMLTransport(service), enable_telemetry=False, ...)``
  (``service.ml_client_kwargs()``). Every ARM call and ``invoke``'s scoring POST go through the
  transport, whatever host they name; no redirect or certificate is needed.
* Over HTTPS: ``MLClient(..., cloud=<name>, cloud_metadata={...}, connection_verify=<ca.pem>)``
  (``Emulator.ml_client_kwargs()``) registers a cloud whose ``resource_manager`` is the emulator's URL
  and makes azure-core trust the emulator's CA (``REQUESTS_CA_BUNDLE`` works too; ``invoke`` honours
  either). ``AZUREML_DEV_URL_MFE=<url>`` also reaches every call above, but the SDK's workspace helpers
  (``_utils/_workspace_utils``: workspace creation, resource-group lookups) still take
  management.azure.com from the cloud metadata, so the cloud is the complete redirect.

SDK traps found on the way:

* Clouds live in a process-global table; the SDK refuses to redefine a name (it logs at debug level and
  keeps the old URL), hence one cloud name per emulator URL (:func:`cloud_name`). ``MLClient`` also sets
  ``AZUREML_CURRENT_CLOUD`` in ``os.environ``, so a later ``MLClient`` without ``cloud=`` in the same
  process targets the emulator too: restore it after tests.
* ``online_endpoints.invoke`` mutates the shared ``EndpointInvokeFields.DEFAULT_HEADER`` dict: after one
  call with ``deployment_name=...`` every later ``invoke`` in the process (any client, any endpoint)
  still sends ``azureml-model-deployment`` for that deployment, bypassing traffic weights.
* ``CodeConfiguration(code=...)`` takes a local directory (which the SDK uploads to
  ``https://<account>.blob.<suffix>``, unreachable for Azurite) or an existing code version; there is no
  public API registering a code version from an ``azureml://datastores/...`` URI:
  ``ml_client._code.create_or_update(Code(name, version, path="azureml://datastores/..."))`` does it and
  uploads nothing, as ``models.create_or_update`` with such a path uploads nothing.
* ``begin_regenerate_keys`` sends the current key as ``keyValue``; the emulator treats that as "regenerate".
* Long-running operations poll every ``LROConfigurations.POLL_INTERVAL`` (5 s) after an immediate first
  poll, unless the service sends a retry hint: the emulator sends ``x-ms-retry-after-ms``
  (``WorkspaceConfig.lro_retry_after_ms``, default 100), and :func:`fast_lro_polling` shortens the SDK's
  own interval (the value is read at each call) for a service that sends none.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken

TOKEN_LIFETIME_SECONDS = 3600


class EmulatorCredential:
    """A ``TokenCredential`` with a fixed bearer token: the emulator checks that one is sent, not its value."""

    def __init__(self, token: str = "emulator-arm-token") -> None:
        self._token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + TOKEN_LIFETIME_SECONDS)

    def close(self) -> None:
        return None


def cloud_name(url: str) -> str:
    """A cloud name unique to one emulator URL (the SDK will not redefine a cloud it has seen)."""
    parts = urlsplit(url)
    return f"AzureMLEmulator-{parts.hostname}-{parts.port or 443}"


def cloud_metadata(url: str) -> dict[str, str]:
    """The ``cloud_metadata`` for MLClient: every endpoint the SDK may derive from a cloud, at the emulator."""
    base = url.rstrip("/") + "/"
    return {
        "azure_portal": base,
        "resource_manager": base,
        "active_directory": base,
        "aml_resource_id": base,
        "storage_endpoint": "core.windows.net",
        "registry_discovery_endpoint": base,
    }


@contextlib.contextmanager
def fast_lro_polling(interval_s: float = 0.05) -> Iterator[None]:
    """Shorten azure-ai-ml's LRO poll interval (``LROConfigurations.POLL_INTERVAL``, read at each call)."""
    from azure.ai.ml.constants._common import LROConfigurations

    previous = LROConfigurations.POLL_INTERVAL
    LROConfigurations.POLL_INTERVAL = interval_s  # type: ignore[assignment]
    try:
        yield
    finally:
        LROConfigurations.POLL_INTERVAL = previous


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def call_lines(entries: list[dict[str, Any]], planes: tuple[str, ...] = ("arm", "data")) -> list[str]:
    """``METHOD path api-version`` per logged request, ids normalised: what a golden file compares."""
    lines = []
    for entry in entries:
        if entry.get("plane") not in planes:
            continue
        path = UUID.sub("<id>", entry["path"])
        version = (entry.get("query") or {}).get("api-version", "-")
        lines.append(f"{entry['method']} {path} {version}")
    return lines
