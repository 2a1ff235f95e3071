"""BlobAuditLog against a real Azurite (the emulator in emulators/azurite, one per module).

The behaviours the SQLite store's tests check run here against both stores (the ``store`` fixture is
parametrised), so the two implementations of ``AuditLog`` are held to one contract. The rest is what
only the blob store has to prove: concurrent writers in separate instances, segments, that no blob is
ever written twice (read from the proxy's request log), and the Airflow provider's WasbHook path.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)

from emulators.azurite import ACCOUNT_KEY, Azurite, start
from mlrelease.backends.azure.blob_audit import AuditStoreError, BlobAuditLog, segment_name
from mlrelease.backends.local.audit import SqliteAuditLog
from mlrelease.domain.records import PredictionRecord

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Azurite needs Node.js on PATH")


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    emulator = start(tmp_path_factory.mktemp("azurite-home"))
    yield emulator
    emulator.stop()


@pytest.fixture
def container_name() -> str:
    return f"audit-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def new_blob_store(azurite: Azurite, container_name: str) -> Callable[..., BlobAuditLog]:
    """Independent instances on one container, as separate processes would have."""

    def make(**options: Any) -> BlobAuditLog:
        return BlobAuditLog.from_connection_string(azurite.connection_string, container_name, **options)

    return make


@pytest.fixture(params=["sqlite", "blob"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        return SqliteAuditLog(tmp_path / "audit.db")
    return request.getfixturevalue("new_blob_store")()


def _prediction(request_id: str = "req-1", **changes: Any) -> PredictionRecord:
    fields = dict(
        request_id=request_id,
        received_at="2026-11-26T10:00:00+00:00",
        endpoint="prod",
        model_name="income-classifier",
        model_version="3",
        release_id="income-classifier-v3-abcd1234",
        status=200,
        latency_ms=4.2,
        inputs=[{"age": 39}],
        outputs=[{"label": ">50K", "probability": 0.9}],
    )
    return PredictionRecord(**{**fields, **changes})


# ---- the AuditLog contract, for both stores ---------------------------------------------------------


def test_append_is_idempotent_per_key(store: Any) -> None:
    first = store.append("alias:m:prod:2:run1", "alias_moved", "m:prod", {"version": "2"})
    again = store.append("alias:m:prod:2:run1", "alias_moved", "m:prod", {"version": "999"})
    assert again == first and again.payload == {"version": "2"} and first.seq == 1
    store.append("alias:m:prod:3:run2", "alias_moved", "m:prod", {"version": "3"})
    store.append("gate:run2", "gate_decision", "run2", {"approved": True})
    assert [e.payload["version"] for e in store.events(kind="alias_moved")] == ["2", "3"]
    assert [e.event_key for e in store.events(subject="run2")] == ["gate:run2"]
    assert store.events(kind="alias_moved", subject="run2") == []
    assert store.events(subject="other") == []
    seqs = [e.seq for e in store.events()]  # increasing; SQLite's may skip a number after a repeated key
    assert len(seqs) == 3 and seqs == sorted(set(seqs))


def test_payload_is_stored_as_json(store: Any) -> None:
    when = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    event = store.append("k", "release", "r1", {"b": 1, "a": [1, 2], "at": when})
    assert event.payload == {"a": [1, 2], "at": str(when), "b": 1}
    assert store.events() == [event]


def test_prediction_log_keeps_the_first_record_of_a_request(store: Any) -> None:
    first = store.append_prediction(_prediction())
    assert first == _prediction()
    again = store.append_prediction(_prediction(outputs=[{"label": "<=50K", "probability": 0.1}], status=500))
    assert again == first and again.outputs == [{"label": ">50K", "probability": 0.9}]
    store.append_prediction(_prediction("req-2", release_id="other"))
    assert store.get_prediction("missing") is None
    assert store.get_prediction("req-1") == first
    assert [p.request_id for p in store.predictions()] == ["req-2", "req-1"]
    assert [p.request_id for p in store.predictions(release_id="other")] == ["req-2"]
    assert [p.request_id for p in store.predictions(limit=1)] == ["req-2"]


def test_release_records_are_only_appended_by_the_release_code_path(store: Any) -> None:
    record = {"outcome": "promoted", "version": "3", "previous_prod_version": "2"}
    store.append("release:r1", "release", "r1", record)
    store.append(
        "release:r1", "release", "r1", {**record, "previous_prod_version": "1", "outcome": "rolled back"}
    )
    assert [e.payload for e in store.events(kind="release")] == [record]


# ---- what only the blob store has to show -----------------------------------------------------------


def test_a_second_instance_sees_the_log_and_reads_only_the_new_tail(
    new_blob_store: Callable[..., BlobAuditLog], azurite: Azurite, container_name: str
) -> None:
    writer, reader = new_blob_store(), new_blob_store()
    writer.append("k1", "kind", "s", {"n": 1})
    assert [e.event_key for e in reader.events()] == ["k1"]
    writer.append("k2", "kind", "s", {"n": 2})
    assert [e.event_key for e in reader.events()] == ["k1", "k2"]
    assert reader.events() == writer.events()
    # The reader appends a key the writer stored: it returns the stored event and writes nothing.
    assert reader.append("k1", "kind", "s", {"n": 99}).payload == {"n": 1}

    log_path = f"/{azurite.account_name}/{container_name}/{segment_name(0)}"
    entries = [e for e in azurite.requests() if e["path"] == log_path]
    appends = [e for e in entries if e["query"].get("comp") == "appendblock"]
    assert len(appends) == 2 and all(e["status"] == 201 for e in appends)
    reads = [e for e in entries if e["method"] == "GET"]
    offsets = [int(e["headers"]["x-ms-range"].split("=")[1].split("-")[0]) for e in reads]
    assert offsets == [0, appends[0]["body_bytes"]]  # the second read fetched only the new line


def test_concurrent_writers_get_unique_dense_seq(new_blob_store: Callable[..., BlobAuditLog]) -> None:
    threads, per_thread = 6, 5
    results: dict[int, list[Any]] = {}
    barrier = threading.Barrier(threads)

    def write(worker: int) -> None:
        log = new_blob_store()  # its own instance and cache, like another process
        barrier.wait()
        results[worker] = [
            log.append(f"w{worker}-{i}", "k", f"w{worker}", {"i": i}) for i in range(per_thread)
        ]

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    events = new_blob_store().events()
    assert [e.seq for e in events] == list(range(1, threads * per_thread + 1))
    assert {e.event_key for e in events} == {f"w{w}-{i}" for w in range(threads) for i in range(per_thread)}
    for worker, appended in results.items():  # what each writer got back is what was stored
        assert appended == [e for e in events if e.subject == f"w{worker}"]


def test_the_same_key_from_many_writers_is_stored_once(new_blob_store: Callable[..., BlobAuditLog]) -> None:
    threads = 8
    barrier = threading.Barrier(threads)
    returned: list[Any] = []
    shared = new_blob_store()

    def write(worker: int) -> None:
        log = shared if worker % 2 else new_blob_store()  # shared instance and separate ones
        barrier.wait()
        returned.append(log.append("release:r1", "release", "r1", {"writer": worker}))

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    events = new_blob_store().events()
    assert len(events) == 1 and len(returned) == threads and all(e == events[0] for e in returned)


def test_segments_roll_over_by_sealing(
    new_blob_store: Callable[..., BlobAuditLog], azurite: Azurite, container_name: str
) -> None:
    first, second = new_blob_store(events_per_segment=3), new_blob_store(events_per_segment=5)
    for i in range(8):
        (first if i % 2 else second).append(f"k{i}", "k", "s", {"i": i})
    events = new_blob_store().events()
    assert [e.event_key for e in events] == [f"k{i}" for i in range(8)]
    assert [e.seq for e in events] == list(range(1, 9))
    container = ContainerClient.from_connection_string(azurite.connection_string, container_name)
    names = sorted(b.name for b in container.list_blobs(name_starts_with="events/"))
    assert names[0] == segment_name(0) and len(names) >= 2
    sealed = [container.get_blob_client(n).get_blob_properties().is_append_blob_sealed for n in names]
    assert sealed == [True] * (len(names) - 1) + [False]


def test_no_blob_is_ever_written_twice(
    new_blob_store: Callable[..., BlobAuditLog], azurite: Azurite, container_name: str
) -> None:
    log = new_blob_store(events_per_segment=2)
    for i in range(5):
        log.append(f"k{i}", "k", "s", {"i": i})
        log.append(f"k{i}", "k", "s", {"i": "again"})
    new_blob_store().append("k0", "k", "s", {})
    log.append_prediction(_prediction())
    container = ContainerClient.from_connection_string(azurite.connection_string, container_name)
    etag = container.get_blob_client("predictions/req-1.json").get_blob_properties().etag
    new_blob_store().append_prediction(_prediction(status=500))
    assert container.get_blob_client("predictions/req-1.json").get_blob_properties().etag == etag

    prefix = f"/{azurite.account_name}/{container_name}/"
    writes = [e for e in azurite.requests() if e["path"].startswith(prefix) and e["method"] != "GET"]
    assert writes and all(e["method"] in ("PUT", "HEAD") for e in writes)
    created: dict[str, int] = {}
    for entry in (e for e in writes if e["method"] == "PUT"):
        comp = entry["query"].get("comp")
        if comp is None:  # Put Blob / create append blob: only ever if absent
            assert entry["headers"].get("if-none-match") == "*", entry
            if entry["status"] == 201:
                created[entry["path"]] = created.get(entry["path"], 0) + 1
        else:  # appends and seals: only at the length the writer had read
            assert comp in ("appendblock", "seal"), entry
            assert "x-ms-blob-condition-appendpos" in entry["headers"], entry
    assert created and set(created.values()) == {1}
    assert len(new_blob_store().events()) == 5


def test_an_event_too_large_for_one_block_is_refused(new_blob_store: Callable[..., BlobAuditLog]) -> None:
    log = new_blob_store()
    with pytest.raises(ValueError, match="'huge:1'.*append-blob block"):
        log.append("huge:1", "k", "s", {"blob": "x" * (4 * 1024 * 1024)})
    assert log.events() == []


@pytest.mark.parametrize("request_id", ["../x", "a/b", "", "x" * 129, "id with space", "é"])
def test_unsafe_request_ids_cannot_name_a_blob(
    new_blob_store: Callable[..., BlobAuditLog], request_id: str
) -> None:
    log = new_blob_store()
    with pytest.raises(ValueError, match="cannot name a prediction blob"):
        log.append_prediction(_prediction(request_id))
    assert log.get_prediction(request_id) is None


def test_a_log_rewritten_outside_the_store_is_reported(
    new_blob_store: Callable[..., BlobAuditLog], azurite: Azurite, container_name: str
) -> None:
    log = new_blob_store()
    log.append("k1", "k", "s", {})
    log.append("k2", "k", "s", {})
    blob = ContainerClient.from_connection_string(azurite.connection_string, container_name).get_blob_client(
        segment_name(0)
    )
    blob.delete_blob()
    blob.create_append_blob()
    with pytest.raises(AuditStoreError, match=rf"{container_name}/events/log-000000.jsonl.*rewritten"):
        log.events()


def test_a_missing_container_is_named_when_it_may_not_be_created(azurite: Azurite) -> None:
    log = BlobAuditLog.from_connection_string(
        azurite.connection_string, "no-such-audit", create_container=False
    )
    with pytest.raises(AuditStoreError, match="no-such-audit") as raised:
        log.events()
    assert "AccountKey" not in str(raised.value) and "Eby8" not in str(raised.value)


def test_through_the_airflow_wasb_hook(
    azurite: Azurite, container_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    connection = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_BLOB", json.dumps(connection))
    service = WasbHook(wasb_conn_id="audit_blob").get_conn()
    assert isinstance(service, BlobServiceClient)
    log = BlobAuditLog.from_service_client(service, container_name)
    log.append("release:r1", "release", "r1", {"version": "3"})
    log.append_prediction(_prediction())
    again = BlobAuditLog.from_connection_string(azurite.connection_string, container_name)
    assert [e.payload for e in again.events()] == [{"version": "3"}]
    assert again.get_prediction("req-1") == _prediction()


def test_from_account_url_with_a_credential_limited_to_the_container(
    azurite: Azurite, container_name: str
) -> None:
    """Like a scoring container whose identity may write the audit container but not create containers."""
    ContainerClient.from_connection_string(azurite.connection_string, container_name).create_container()
    sas = generate_container_sas(
        azurite.account_name,
        container_name,
        account_key=ACCOUNT_KEY,
        permission=ContainerSasPermissions(read=True, add=True, create=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(minutes=10),
    )
    log = BlobAuditLog.from_account_url(azurite.blob_endpoint, sas, container_name)
    assert log.append("k1", "k", "s", {"n": 1}).seq == 1
    assert log.append_prediction(_prediction()) == _prediction()
    assert [e.event_key for e in log.events()] == ["k1"] and log.predictions() == [_prediction()]
    assert sas not in repr(log) and container_name in repr(log)
    creates = [
        e
        for e in azurite.requests()
        if e["path"] == f"/{azurite.account_name}/{container_name}" and e["method"] == "PUT"
    ]
    assert [e["status"] for e in creates] == [201, 403]  # ours, then the store's refused attempt
