"""The local endpoint backend against real scoring processes on loopback (no Spark: hand-built models).

What a release relies on: a deployment starts the process if needed and hot-swaps the model without a
single failed request; a model that cannot load leaves the previous one serving (and on disk, so a
restart serves it too); a rollback to "nothing" stops the endpoint; a service of another MLRELEASE_HOME
on our port is refused rather than deployed into; stopping is graceful.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from mlrelease.backends.base import DeploymentSpec, EndpointError, ModelVersionRef
from mlrelease.backends.local.endpoints import LocalEndpoints
from mlrelease.domain.served import ServedModelRef
from mlrelease.tags import PORTABLE_MODEL_ARTIFACT
from tests.conftest import free_port
from tests.unit.serving.conftest import lr_document, record


def spec(tmp_path: Path, version: str, document: dict | bytes) -> DeploymentSpec:
    """A version whose portable model file (what the backend stages) holds ``document``."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    artifact = tmp_path / "artifacts" / f"model-v{version}.json"
    artifact.parent.mkdir(exist_ok=True)
    artifact.write_bytes(data)
    ref = ModelVersionRef("income-classifier", version, run_id=f"run-{version}", source=str(artifact))
    return DeploymentSpec(
        model=ref, release_id=f"rel-{version}", lineage={"dataset_sha256": "abc"}, stage="test"
    )


def fetch_source(ref: ModelVersionRef, artifact: str) -> Path:
    assert artifact == PORTABLE_MODEL_ARTIFACT
    return Path(ref.source)


@pytest.fixture
def endpoints(tmp_path):
    backend = LocalEndpoints(
        tmp_path / "endpoints", {"test": free_port()}, tmp_path / "audit.db", fetch_artifact=fetch_source
    )
    yield backend
    backend.stop("test")


def score(url: str) -> httpx.Response:
    return httpx.post(f"{url}/score", json={"data": [record()]}, timeout=30)


def test_deploy_hot_swaps_without_a_failed_request(endpoints, tmp_path):
    first = endpoints.deploy("test", spec(tmp_path, "1", lr_document(intercept=-7.0)))
    assert first.live and first.served == ServedModelRef(
        "income-classifier", "1", "rel-1", first.served.artifact_sha256
    )
    loaded_at = endpoints.metadata("test")["loaded_at"]
    url = endpoints.url("test")
    pid = endpoints.pid("test")
    assert pid and score(url).json()["model"]["version"] == "1"
    # Deploying what is already served changes nothing (a retried task).
    assert endpoints.deploy("test", spec(tmp_path, "1", lr_document(intercept=-7.0))) == first
    assert endpoints.metadata("test")["loaded_at"] == loaded_at

    statuses: list[int] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer():
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                response = client.post(f"{url}/score", json={"data": [record()]})
                statuses.append(response.status_code)
                if response.status_code == 200:
                    versions.add(response.json()["model"]["version"])

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for version in ("2", "3"):
            endpoints.deploy("test", spec(tmp_path, version, lr_document(intercept=-6.0 + int(version))))
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}
    assert versions <= {"1", "2", "3"} and "3" in versions
    assert endpoints.pid("test") == pid  # same process: swapped, not restarted
    assert endpoints.status()["test"]["version"] == "3"


def test_a_model_that_cannot_load_leaves_the_previous_one_serving(endpoints, tmp_path):
    good = spec(tmp_path, "1", lr_document())
    endpoints.deploy("test", good)
    broken = spec(tmp_path, "2", b'{"format": "mlrelease.portable.v1", "algorithm": "NaiveBayes"}')
    with pytest.raises(EndpointError, match="still serving"):
        endpoints.deploy("test", broken)
    assert endpoints.serving("test").version == "1"
    assert endpoints.desired("test")["model"]["version"] == "1"  # a restart serves version 1 too
    endpoints.stop("test")
    assert endpoints.status()["test"]["up"] is False
    restarted = endpoints.deploy("test", good)
    assert restarted.served.version == "1"


def test_roll_back_returns_to_a_previous_deployment_or_to_nothing(endpoints, tmp_path):
    endpoints.deploy("test", spec(tmp_path, "1", lr_document()))
    previous = endpoints.restore_point("test")
    rollout = endpoints.deploy("test", spec(tmp_path, "2", lr_document(intercept=-5.0)))
    assert endpoints.find("test", rollout.served).served == rollout.served
    assert rollout.replacing.version == "1"  # what it took over from
    restored = endpoints.roll_back(rollout, previous)
    assert (restored.version, restored.release_id) == ("1", "rel-1")
    assert endpoints.find("test", rollout.served) is None
    assert endpoints.roll_back(rollout, None) is None
    assert endpoints.status()["test"]["up"] is False and endpoints.desired("test") is None


def test_a_service_of_another_home_on_our_port_is_refused(endpoints, tmp_path):
    endpoints.deploy("test", spec(tmp_path, "1", lr_document()))
    other_home = LocalEndpoints(
        tmp_path / "other", endpoints.ports, tmp_path / "other-audit.db", fetch_artifact=fetch_source
    )
    with pytest.raises(EndpointError, match="not started from"):
        other_home.deploy("test", spec(tmp_path, "9", lr_document()))
    assert endpoints.serving("test").version == "1"


def test_unknown_endpoint_is_named(endpoints):
    with pytest.raises(EndpointError, match="unknown endpoint 'staging'; known endpoints: test"):
        endpoints.url("staging")
