"""The workspace's default Blob datastore, backed by whatever Blob endpoint the emulator was given.

Azure ML keeps model and code assets in the workspace storage account and the service downloads them
into the inference container when a deployment is provisioned. The emulator does the same with
``azure-storage-blob`` and a connection string (Azurite's in tests), so a model registered by
``azureml://datastores/workspaceblobstore/paths/...`` reaches the scoring process exactly as uploaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient

DATASTORE_URI = re.compile(
    r"^azureml://(?:subscriptions/[^/]+/resource[gG]roups/[^/]+/(?:providers/Microsoft\.MachineLearningServices/)?"
    r"workspaces/[^/]+/)?datastores/(?P<datastore>[^/]+)/paths/(?P<path>.*)$",
    re.IGNORECASE,
)


class AssetDownloadError(RuntimeError):
    """An asset path that names no blob, or a Blob endpoint that does not answer."""


@dataclass(frozen=True)
class BlobStore:
    """One storage account/container, as the ``workspaceblobstore`` datastore describes it."""

    connection_string: str
    container: str

    def client(self) -> BlobServiceClient:
        return BlobServiceClient.from_connection_string(self.connection_string)

    @property
    def account_name(self) -> str:
        return str(self.client().account_name)

    @property
    def account_key(self) -> str:
        credential = self.client().credential
        key = getattr(credential, "account_key", None)
        if not key:
            raise ValueError("The Blob connection string has no AccountKey; the datastore needs a key")
        return str(key)

    @property
    def blob_endpoint(self) -> str:
        """``http://127.0.0.1:10000/devstoreaccount1`` (Azurite) or ``https://acct.blob.core.windows.net``."""
        return self.client().url.rstrip("/")

    def datastore_endpoint(self) -> tuple[str, str]:
        """The datastore's ``(endpoint, protocol)``.

        On Azure the endpoint is the storage suffix (``core.windows.net``) and the account URL is
        ``{protocol}://{account}.blob.{endpoint}``. A path-style endpoint (Azurite: the account is the
        first path segment, the host an IP) has no such suffix: the endpoint is then ``host:port`` and
        the account URL is ``{protocol}://{endpoint}/{account}``.
        """
        parts = urlsplit(self.blob_endpoint)
        host = parts.netloc
        prefix = f"{self.account_name}.blob."
        if host.lower().startswith(prefix.lower()):
            return host[len(prefix) :], parts.scheme
        return host, parts.scheme

    def ensure_container(self) -> None:
        container = self.client().get_container_client(self.container)
        if not container.exists():
            container.create_container()

    def download_prefix(self, blob_path: str, destination: Path, keep_basename: bool) -> list[Path]:
        """Download the blob ``blob_path`` or every blob under the folder ``blob_path``.

        With ``keep_basename`` the folder (or file) name is kept below ``destination``, as Azure ML lays
        a model out under ``AZUREML_MODEL_DIR``; without it the folder's content lands in
        ``destination`` directly, as a code asset does.
        """
        blob_path = blob_path.strip("/")
        container = self.client().get_container_client(self.container)
        written: list[Path] = []
        base = PurePosixPath(blob_path).name if blob_path else ""
        single = container.get_blob_client(blob_path) if blob_path else None
        if single is not None:
            try:
                single.get_blob_properties()
            except ResourceNotFoundError:
                pass
            else:
                target = destination / (base if keep_basename else PurePosixPath(blob_path).name)
                written.append(_download(single, target))
                return written
        prefix = blob_path + "/" if blob_path else ""
        for blob in container.list_blobs(name_starts_with=prefix):
            relative = PurePosixPath(blob.name[len(prefix) :])
            if not relative.parts or ".." in relative.parts:
                continue
            target = destination.joinpath(*((base,) if keep_basename and base else ()), *relative.parts)
            written.append(_download(container.get_blob_client(blob.name), target))
        if not written:
            raise AssetDownloadError(
                f"No blob named {blob_path!r} and none under {prefix!r} in container {self.container!r} "
                f"of {self.blob_endpoint}; upload the asset there before deploying it"
            )
        return written


def _download(blob_client, target: Path) -> Path:  # type: ignore[no-untyped-def]
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        blob_client.download_blob().readinto(out)
    return target


def parse_datastore_uri(uri: str) -> tuple[str, str] | None:
    """``(datastore, path)`` of an ``azureml://[subscriptions/.../workspaces/w/]datastores/d/paths/p`` URI."""
    match = DATASTORE_URI.match(uri)
    if not match:
        return None
    return match.group("datastore"), unquote(match.group("path"))


def parse_blob_url(url: str, store: BlobStore) -> str | None:
    """The blob path of an ``https://.../<container>/<path>`` URL in ``store``'s container, else None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    segments = [unquote(s) for s in parts.path.split("/") if s]
    endpoint = urlsplit(store.blob_endpoint)
    account_segments = [s for s in endpoint.path.split("/") if s]
    if (
        parts.netloc.lower() == endpoint.netloc.lower()
        and segments[: len(account_segments)] == account_segments
    ):
        segments = segments[len(account_segments) :]
    elif not parts.netloc.lower().startswith(f"{store.account_name.lower()}.blob."):
        return None
    if not segments or segments[0] != store.container:
        return None
    return "/".join(segments[1:])
