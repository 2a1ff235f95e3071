"""The audit store on Azure Blob Storage: the same append-only contract as the SQLite log, in a container.

On Azure the pipeline's tasks and the scoring containers run on different machines, so the audit log
cannot be a local SQLite file; a storage container is what all of them can reach (Airflow through the
provider's ``WasbHook``, a scoring container through its managed identity). The store only ever
creates blobs and appends to append blobs, each write carrying a condition that makes the service
refuse it if it would replace anything, so neither a retry nor a concurrent writer can rewrite history.

Layout in the container:

* ``events/log-000000.jsonl``, ``events/log-000001.jsonl``, ...: append blobs, one JSON line per
  event ``{"event_key", "kind", "payload", "recorded_at", "seq", "subject"}`` (payload serialised with
  ``sort_keys`` and ``default=str``, as in the SQLite store). ``seq`` is the event's line number in the
  whole log, from 1. A writer appends with ``appendpos_condition`` = the length it has read, so the
  append succeeds only if nobody appended since: that both serialises concurrent writers (a 412 makes
  the loser re-read the tail and retry) and proves the key was not in the log (the writer has read all
  of it). A segment is closed by *sealing* it (again at a known length) once it holds
  ``events_per_segment`` events or ``max_segment_bytes`` bytes, and the log goes on in the next one;
  an append blob takes at most 50,000 blocks, so without segments the log would stop after 50,000
  events. Readers follow the seal, so writers with different segment limits still agree.
* ``predictions/<request_id>.json``: one block blob per scoring request, created with
  ``If-None-Match: *``; a repeated request id leaves the first blob and gets it back. Blob metadata
  ``stored_at_ns`` and ``release_id`` let :meth:`BlobAuditLog.predictions` order and filter from a
  listing without reading every record.

The code never overwrites, but anyone holding the account key could; on Azure, make the container
immutable with a time-based retention policy that allows protected append writes, which lets exactly
these operations through (create, append) and refuses every overwrite and delete.

No Airflow import here: the DAG side builds the client with ``WasbHook(conn_id).get_conn()`` and passes
it to :meth:`BlobAuditLog.from_service_client`; a scoring container uses
:meth:`BlobAuditLog.from_account_url` with its managed identity.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings

from mlrelease.domain.records import AuditEvent, PredictionRecord

EVENTS_PREFIX = "events/"
PREDICTIONS_PREFIX = "predictions/"
MAX_APPEND_BLOCK_BYTES = 4 * 1024 * 1024  # Append Block's limit for older service versions and Azurite
MAX_BLOCKS_PER_APPEND_BLOB = 50_000
DEFAULT_EVENTS_PER_SEGMENT = 10_000
DEFAULT_MAX_SEGMENT_BYTES = 512 * 1024 * 1024
MAX_APPEND_ATTEMPTS = 64
PREDICTION_READ_WORKERS = 8
# The scoring services' X-Request-ID rule, widened: no '/', so a request id is always one name segment,
# and the '.json' suffix keeps '.' and '..' from being path segments.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,128}")
log = logging.getLogger(__name__)
_EVENT_FIELDS = ("event_key", "kind", "payload", "recorded_at", "seq", "subject")


class AuditStoreError(RuntimeError):
    """The audit container could not be read or written; the message names the blob and the next step."""


def segment_name(index: int) -> str:
    return f"{EVENTS_PREFIX}log-{index:06d}.jsonl"


def prediction_blob_name(request_id: str) -> str:
    """``predictions/<request_id>.json``; ValueError for an id that could escape that name."""
    if not isinstance(request_id, str) or not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise ValueError(
            f"request id {request_id!r} cannot name a prediction blob: use 1-128 characters of [A-Za-z0-9._-]"
        )
    return f"{PREDICTIONS_PREFIX}{request_id}.json"


def _error_code(error: HttpResponseError) -> str:
    code = getattr(error, "error_code", None) or ""
    return str(getattr(code, "value", code))  # StorageErrorCode members, or a plain string


def _is(error: HttpResponseError, code: str) -> bool:
    return _error_code(error).lower().replace("_", "") == code.lower()


@dataclass
class _Segment:
    """What this process has read of one event segment."""

    index: int
    exists: bool = False
    length: int = 0  # bytes read (all complete lines)
    count: int = 0  # events in it


class BlobAuditLog:
    """:class:`~mlrelease.backends.base.AuditLog` on one Azure Blob Storage container.

    Thread-safe; one instance caches what it has read of the event log and reads only the new tail.
    Several instances and processes may write the same container at once.
    """

    def __init__(
        self,
        container: ContainerClient,
        *,
        create_container: bool = True,
        events_per_segment: int = DEFAULT_EVENTS_PER_SEGMENT,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
    ) -> None:
        """Use ``container`` (created on first use if missing and ``create_container``); no I/O here."""
        if not 1 <= events_per_segment <= MAX_BLOCKS_PER_APPEND_BLOB:
            raise ValueError(f"events_per_segment must be 1..{MAX_BLOCKS_PER_APPEND_BLOB}")
        if max_segment_bytes < MAX_APPEND_BLOCK_BYTES:
            raise ValueError(f"max_segment_bytes must be at least {MAX_APPEND_BLOCK_BYTES}")
        self.container = container
        self.create_container = create_container
        self.events_per_segment = events_per_segment
        self.max_segment_bytes = max_segment_bytes
        self._lock = threading.RLock()
        self._container_ready = False
        self._loaded = False
        self._events: list[AuditEvent] = []
        self._by_key: dict[str, AuditEvent] = {}
        self._segment = _Segment(0)

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def from_service_client(
        cls, service_client: BlobServiceClient, container: str, **options: Any
    ) -> BlobAuditLog:
        """From a ``BlobServiceClient``, e.g. Airflow's ``WasbHook(wasb_conn_id).get_conn()``."""
        return cls(service_client.get_container_client(container), **options)

    @classmethod
    def from_connection_string(
        cls, conn_str: str, container: str, *, client_options: dict[str, Any] | None = None, **options: Any
    ) -> BlobAuditLog:
        """From a storage connection string (Azurite's, or a key-based one kept in a secret store);
        ``client_options`` go to the Blob client (retries, timeouts)."""
        return cls(
            ContainerClient.from_connection_string(conn_str, container, **(client_options or {})), **options
        )

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        credential: Any,
        container: str,
        *,
        client_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> BlobAuditLog:
        """From ``https://<account>.blob.core.windows.net`` and a credential (a scoring container's
        ``ManagedIdentityCredential``/``DefaultAzureCredential``, or a SAS token)."""
        return cls(
            ContainerClient(account_url, container, credential=credential, **(client_options or {})),
            **options,
        )

    @property
    def location(self) -> str:
        """``<account>/<container>`` for messages: never the URL, which may carry a SAS token."""
        return f"{self.container.account_name}/{self.container.container_name}"

    def __repr__(self) -> str:
        return f"BlobAuditLog({self.location!r})"

    # ---- events --------------------------------------------------------------------------------

    def append(self, event_key: str, kind: str, subject: str, payload: dict[str, Any]) -> AuditEvent:
        """Append an event once; appending the same key again returns the stored event unchanged."""
        recorded_at = datetime.now(UTC).isoformat(timespec="seconds")
        with self._lock:
            self._ensure_container()
            if not self._loaded:
                self._refresh()
            for attempt in range(MAX_APPEND_ATTEMPTS):
                stored = self._by_key.get(event_key)
                if stored is not None:
                    return stored
                line = self._line(len(self._events) + 1, event_key, kind, subject, recorded_at, payload)
                segment = self._segment
                if segment.count and (
                    segment.count >= self.events_per_segment
                    or segment.length + len(line) > self.max_segment_bytes
                ):
                    self._seal(segment)
                elif self._try_append(segment, line):
                    event = self._parse(line, segment, segment.length)
                    self._remember(event, segment, len(line))
                    return event
                # Someone else appended or sealed: read what they wrote and try again.
                self._refresh()
                if attempt >= 3:
                    time.sleep(random.uniform(0, 0.05 * min(attempt, 20)))
        raise AuditStoreError(
            f"Could not append event {event_key!r} to {self.location}/{segment_name(self._segment.index)} "
            f"after {MAX_APPEND_ATTEMPTS} attempts: other writers kept appending first; retry the task"
        )

    def events(self, kind: str | None = None, subject: str | None = None) -> list[AuditEvent]:
        """Events in the order they were appended, optionally of one kind and/or one subject."""
        with self._lock:
            self._ensure_container()
            self._refresh()
            events = list(self._events)
        return [e for e in events if (not kind or e.kind == kind) and (not subject or e.subject == subject)]

    def _line(
        self, seq: int, event_key: str, kind: str, subject: str, recorded_at: str, payload: dict[str, Any]
    ) -> bytes:
        event = {
            "event_key": event_key,
            "kind": kind,
            "payload": payload,
            "recorded_at": recorded_at,
            "seq": seq,
            "subject": subject,
        }
        line = (json.dumps(event, sort_keys=True, default=str) + "\n").encode()
        if len(line) > MAX_APPEND_BLOCK_BYTES:
            raise ValueError(
                f"audit event {event_key!r} is {len(line)} bytes as JSON, more than the "
                f"{MAX_APPEND_BLOCK_BYTES} bytes one append-blob block takes: store the large part "
                "elsewhere (an artifact) and put its URI and sha256 in the payload"
            )
        return line

    def _try_append(self, segment: _Segment, line: bytes) -> bool:
        """Append ``line`` at the known end of ``segment``; False when someone got there first."""
        name = segment_name(segment.index)
        blob = self.container.get_blob_client(name)
        if not segment.exists:
            try:
                blob.create_append_blob(if_none_match="*")  # never resets an existing log
            except ResourceExistsError:
                pass  # another writer created it; the conditional append below finds out what it holds
            except HttpResponseError as e:
                raise self._failure("create", name, e) from e
            segment.exists = True
        try:
            blob.append_block(
                line, appendpos_condition=segment.length, maxsize_condition=self.max_segment_bytes
            )
        except HttpResponseError as e:
            if (
                _is(e, "AppendPositionConditionNotMet")
                or _is(e, "BlobIsSealed")
                or _is(e, "MaxBlobSizeConditionNotMet")
                or _is(e, "BlockCountExceedsLimit")
            ):
                if _is(e, "BlockCountExceedsLimit") or _is(e, "MaxBlobSizeConditionNotMet"):
                    self._seal(segment)
                return False
            if isinstance(e, ResourceNotFoundError):
                raise AuditStoreError(
                    f"The audit log segment {self.location}/{name} disappeared while appending: an "
                    "append-only log was deleted outside this store; restore it from a backup "
                    "(soft delete / versioning) before writing again"
                ) from e
            raise self._failure("append to", name, e) from e
        return True

    def _seal(self, segment: _Segment) -> None:
        """Close a full segment at the length this process has read (412/409: someone else moved on)."""
        name = segment_name(segment.index)
        try:
            self.container.get_blob_client(name).seal_append_blob(appendpos_condition=segment.length)
        except HttpResponseError as e:
            if not (_is(e, "AppendPositionConditionNotMet") or _is(e, "BlobIsSealed")):
                raise self._failure("seal", name, e) from e

    def _refresh(self) -> None:
        """Read what was appended since the last read, following sealed segments to the current one."""
        while True:
            segment = self._segment
            name = segment_name(segment.index)
            blob = self.container.get_blob_client(name)
            try:
                properties = blob.get_blob_properties()
            except ResourceNotFoundError as e:
                if _is(e, "ContainerNotFound"):
                    raise self._failure("read", name, e) from e
                segment.exists = False  # not created yet: the log is empty, or the last segment is sealed
                break
            except HttpResponseError as e:
                raise self._failure("read", name, e) from e
            segment.exists = True
            size = int(properties.size)
            if size < segment.length:
                raise AuditStoreError(
                    f"The audit log segment {self.location}/{name} is {size} bytes, shorter than the "
                    f"{segment.length} already read from it: it was rewritten outside this store; "
                    "restore it from a backup (blob versions / soft delete) and investigate who wrote it"
                )
            if size > segment.length:
                try:
                    data = blob.download_blob(offset=segment.length).readall()
                except HttpResponseError as e:
                    raise self._failure("read", name, e) from e
                self._take_lines(segment, data)
            if not properties.is_append_blob_sealed:
                break
            if segment.length != size:
                raise AuditStoreError(
                    f"The sealed audit log segment {self.location}/{name} ends in a partial line (byte "
                    f"{segment.length} of {size}): something other than this store appended to it; "
                    "investigate before writing again"
                )
            self._segment = _Segment(segment.index + 1)
        self._loaded = True

    def _take_lines(self, segment: _Segment, data: bytes) -> None:
        offset = segment.length
        start = 0
        # Each append block is whole lines; a partial tail (only a foreign writer makes one) stays unread.
        while (end := data.find(b"\n", start) + 1) > 0:
            raw, start = data[start:end], end
            event = self._parse(raw, segment, offset)
            if event.seq != len(self._events) + 1 or event.event_key in self._by_key:
                raise AuditStoreError(
                    f"The audit log {self.location}/{segment_name(segment.index)} at byte {offset} holds "
                    f"event {event.event_key!r} with seq {event.seq}, expected seq {len(self._events) + 1} "
                    "and a new key: something other than this store appended to it; investigate before "
                    "writing again"
                )
            self._remember(event, segment, len(raw))
            offset += len(raw)

    def _parse(self, raw: bytes, segment: _Segment, offset: int) -> AuditEvent:
        try:
            data = json.loads(raw)
            return AuditEvent.from_dict({name: data[name] for name in _EVENT_FIELDS})
        except (ValueError, KeyError, TypeError) as e:
            raise AuditStoreError(
                f"The audit log {self.location}/{segment_name(segment.index)} at byte {offset} is not an "
                f"event line ({e}): something other than this store appended to it; investigate before "
                "writing again"
            ) from e

    def _remember(self, event: AuditEvent, segment: _Segment, size: int) -> None:
        self._events.append(event)
        self._by_key[event.event_key] = event
        segment.length += size
        segment.count += 1

    # ---- predictions ---------------------------------------------------------------------------

    def append_prediction(self, record: PredictionRecord) -> PredictionRecord:
        """Store one request's record; a second write of the same request id keeps (and returns) the first."""
        name = prediction_blob_name(record.request_id)
        data = json.dumps(record.to_dict(), sort_keys=True, default=str).encode()
        metadata = {"stored_at_ns": str(time.time_ns())}
        if record.release_id is not None:
            metadata["release_id"] = quote(str(record.release_id), safe="")
        self._ensure_container()
        try:
            self.container.upload_blob(
                name,
                data,
                overwrite=False,  # If-None-Match: *: the service refuses to replace a stored record
                metadata=metadata,
                content_settings=ContentSettings(content_type="application/json"),
            )
        except (ResourceExistsError, ResourceModifiedError):
            stored = self.get_prediction(record.request_id)
            if stored is None:
                raise AuditStoreError(
                    f"{self.location}/{name} was reported as existing but could not be read back; "
                    "check the container's delete/lifecycle policies"
                ) from None
            return stored
        except HttpResponseError as e:
            raise self._failure("write", name, e) from e
        return PredictionRecord.from_dict(json.loads(data))

    def get_prediction(self, request_id: str) -> PredictionRecord | None:
        """The stored record of ``request_id``, or None (also for an id no record can have)."""
        try:
            name = prediction_blob_name(request_id)
        except ValueError:
            return None
        self._ensure_container()
        return self._read_prediction(name)

    def predictions(self, release_id: str | None = None, limit: int = 100) -> list[PredictionRecord]:
        """The latest predictions (newest first), optionally only those served under one release.

        O(number of stored predictions): it lists every ``predictions/`` blob (with metadata, 5,000 per
        page) and then reads the newest ``limit``. Fine for demos and audits of a modest log; for a
        large one, partition the names by date or query a blob inventory instead. "Newest" is the
        writer's clock at write time (``stored_at_ns``), so writers' clock skew can reorder neighbours.
        """
        if limit <= 0:
            return []
        self._ensure_container()
        wanted = quote(release_id, safe="") if release_id else None
        candidates: list[tuple[int, str]] = []
        try:
            for blob in self.container.list_blobs(name_starts_with=PREDICTIONS_PREFIX, include=["metadata"]):
                metadata = blob.metadata or {}
                if wanted is not None and metadata.get("release_id") != wanted:
                    continue
                stored_at = metadata.get("stored_at_ns")
                if stored_at is None or not stored_at.isdigit():
                    created = blob.creation_time or blob.last_modified
                    stored_at = str(int(created.timestamp() * 1e9)) if created else "0"
                candidates.append((int(stored_at), blob.name))
        except HttpResponseError as e:
            raise self._failure("list", PREDICTIONS_PREFIX, e) from e
        newest = [name for _, name in sorted(candidates, reverse=True)[:limit]]
        with ThreadPoolExecutor(max_workers=min(PREDICTION_READ_WORKERS, max(len(newest), 1))) as pool:
            records = list(pool.map(self._read_prediction, newest))
        return [record for record in records if record is not None]

    def _read_prediction(self, name: str) -> PredictionRecord | None:
        try:
            data = self.container.download_blob(name).readall()
        except ResourceNotFoundError as e:
            if _is(e, "ContainerNotFound"):
                raise self._failure("read", name, e) from e
            return None
        except HttpResponseError as e:
            raise self._failure("read", name, e) from e
        try:
            return PredictionRecord.from_dict(json.loads(data))
        except (ValueError, TypeError) as e:
            raise AuditStoreError(
                f"{self.location}/{name} is not a prediction record ({e}): it was written outside this "
                "store; investigate"
            ) from e

    # ---- shared --------------------------------------------------------------------------------

    def _ensure_container(self) -> None:
        if self._container_ready or not self.create_container:
            return
        with self._lock:
            if self._container_ready:
                return
            try:
                self.container.create_container()
            except ResourceExistsError:
                pass
            except HttpResponseError as e:
                if e.status_code != 403:
                    raise self._failure("create container", "", e) from e
                # An identity may hold a role on this container alone (and a SAS may be scoped to it):
                # it can write blobs but neither create nor even read the container's properties. Go on;
                # if the container really is missing, the first read or write fails naming it.
                log.info(
                    "Not allowed to create the audit container %s (%s); assuming it exists",
                    self.location,
                    _error_code(e) or e.status_code,
                )
            self._container_ready = True

    def _failure(self, action: str, name: str, error: HttpResponseError) -> AuditStoreError:
        where = f"{self.location}/{name}" if name else self.location
        hint = {
            401: "the credential was refused: check the connection/identity",
            403: "the identity lacks permission: grant 'Storage Blob Data Contributor' on the container",
            404: "the container does not exist: create it (az storage container create), or let the "
            "store create it (create_container=True with an identity allowed to)",
        }.get(error.status_code or 0, "retry; if it persists, check the storage account's health")
        return AuditStoreError(
            f"Could not {action} {where}: {error.status_code} {_error_code(error) or error.reason}; {hint}"
        )
