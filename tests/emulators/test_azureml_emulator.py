"""The Azure ML emulator driven by the real azure-ai-ml SDK, in process (azure-core transport) and over HTTPS.

Both levels run the same scenarios, because they share one dispatcher and the pipeline will use both:
contract tests in process, Airflow tasks over HTTPS. Assets live in Azurite (the shared launcher in
``emulators.azurite``); deployments run a stand-in inference server (``azureml_scoring_standin``) so
these tests need no scoring venv. The golden test pins the list of calls the SDK makes for a release,
so an SDK upgrade that changes them shows up as a diff: regenerate with
``AZUREML_GOLDEN_REGENERATE=1 pytest tests/emulators/test_azureml_emulator.py -k golden``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.ai.ml import MLClient
from azure.ai.ml.constants._endpoint import EndpointInvokeFields
from azure.ai.ml.entities import (
    CodeConfiguration,
    Environment,
    KubernetesOnlineDeployment,
    KubernetesOnlineEndpoint,
    Model,
)
from azure.ai.ml.entities._assets._artifacts.code import Code
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobServiceClient

from emulators.azureml import (
    AzureMLService,
    Emulator,
    EmulatorCredential,
    WorkspaceConfig,
    call_lines,
    fast_lro_polling,
    start,
)
from emulators.azureml.service import NO_TRAFFIC_MESSAGE

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "azureml_sdk_calls.txt"
STANDIN = "tests.emulators.azureml_scoring_standin:start_scoring_process"
CONTAINER = "azureml-blobstore-emulator"
IMAGE = "mcr.microsoft.com/azureml/minimal-ubuntu22.04-py311-cpu-inference:latest"
RETRY_AFTER_MS = 20

SCORE_PY = b"""
import json, os

def init():
    global WEIGHT
    with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "toy", "model.json")) as f:
        WEIGHT = json.load(f)["weight"]

def run(raw_data):
    data = json.loads(raw_data)["data"]
    return {"color": os.environ.get("COLOR"), "predictions": [x * WEIGHT for x in data]}
"""
FAILING_SCORE_PY = b"""
def init():
    raise RuntimeError("cannot load the model: boom-marker-1234")

def run(raw_data):
    return raw_data
"""

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="Azurite needs Node.js on PATH")


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def azurite_connection_string(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from emulators.azurite import start as start_azurite

    azurite = start_azurite(tmp_path_factory.mktemp("azurite-home"))
    try:
        container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
            CONTAINER
        )
        if not container.exists():
            container.create_container()
        container.upload_blob("models/toy/model.json", b'{"weight": 3}', overwrite=True)
        container.upload_blob("models/toy/README.md", b"a toy model", overwrite=True)
        container.upload_blob("code/good/score.py", SCORE_PY, overwrite=True)
        container.upload_blob("code/bad/score.py", FAILING_SCORE_PY, overwrite=True)
        yield azurite.connection_string
    finally:
        azurite.stop()


@pytest.fixture(autouse=True)
def clean_sdk_globals(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLClient(cloud=...) sets AZUREML_CURRENT_CLOUD in os.environ, and invoke() mutates the SDK's shared
    # EndpointInvokeFields.DEFAULT_HEADER (its azureml-model-deployment sticks to later calls): undo both.
    monkeypatch.setenv("AZUREML_CURRENT_CLOUD", "AzureCloud")
    monkeypatch.setattr(EndpointInvokeFields, "DEFAULT_HEADER", {"Content-Type": "application/json"})


@dataclass
class Level:
    """One way of reaching the emulator: what a test needs, whatever the level."""

    name: str
    ml: MLClient
    set_faults: Callable[..., Any]
    requests: Callable[[], list[dict[str, Any]]]
    post: Callable[[str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]
    state_dir: Path


def _https_post(ca_bundle: str) -> Callable[[str, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]:
    def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        response = requests.post(url, headers=headers, data=body, verify=ca_bundle, timeout=30)
        return response.status_code, {k.lower(): v for k, v in response.headers.items()}, response.content

    return post


@pytest.fixture(scope="module")
def https_emulator(
    tmp_path_factory: pytest.TempPathFactory, azurite_connection_string: str
) -> Iterator[Emulator]:
    emulator = start(
        tmp_path_factory.mktemp("azureml-home"),
        blob_connection_string=azurite_connection_string,
        scoring_launcher=STANDIN,
        lro_retry_after_ms=RETRY_AFTER_MS,
        liveness_timeout_s=30,
    )
    yield emulator
    emulator.stop()


@pytest.fixture
def service(tmp_path: Path, azurite_connection_string: str) -> Iterator[AzureMLService]:
    from tests.emulators.azureml_scoring_standin import start_scoring_process

    config = WorkspaceConfig(
        blob_connection_string=azurite_connection_string,
        public_url="https://127.0.0.1:8443",
        lro_retry_after_ms=RETRY_AFTER_MS,
        liveness_timeout_s=30,
    )
    service = AzureMLService(tmp_path / "azureml", config, scoring_launcher=start_scoring_process)
    yield service
    service.close()


@pytest.fixture(params=["in_process", "https"])
def level(request: pytest.FixtureRequest) -> Level:
    if request.param == "in_process":
        service: AzureMLService = request.getfixturevalue("service")

        def post(url: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
            status, answer, content = service.handle("POST", url, headers, body)
            return status, {k.lower(): v for k, v in answer.items()}, content

        return Level(
            "in_process",
            MLClient(EmulatorCredential(), **service.ml_client_kwargs()),
            service.set_faults,
            service.requests,
            post,
            service.state_dir,
        )
    emulator: Emulator = request.getfixturevalue("https_emulator")
    emulator.set_faults(fail_next_provisioning=None, fail_provisioning={}, scoring_status={})
    return Level(
        "https",
        MLClient(EmulatorCredential(), **emulator.ml_client_kwargs()),
        emulator.set_faults,
        emulator.requests,
        _https_post(emulator.ca_bundle),
        emulator.state_dir,
    )


# ---- helpers -------------------------------------------------------------------------------------


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 1000}-{time.monotonic_ns() % 10**6}"


def register_assets(ml: MLClient, code_path: str = "code/good") -> tuple[Model, str, str]:
    model = ml.models.create_or_update(
        Model(
            name="toy",
            version=str(time.monotonic_ns()),
            path="azureml://datastores/workspaceblobstore/paths/models/toy",
            type="custom_model",
        )
    )
    # No public MLClient API registers a code version from a datastore URI: CodeConfiguration(code=...)
    # takes a local directory (uploaded by the SDK) or an existing code asset's id.
    code = ml._code.create_or_update(
        Code(
            name="toy-score",
            version=str(time.monotonic_ns()),
            path=f"azureml://datastores/workspaceblobstore/paths/{code_path}",
        )
    )
    environment = ml.environments.create_or_update(
        Environment(name="toy-env", version="1", image=IMAGE, conda_file={"dependencies": ["python=3.11"]})
    )
    return model, str(code.id), str(environment.id)


def create_endpoint(ml: MLClient, name: str) -> KubernetesOnlineEndpoint:
    return ml.online_endpoints.begin_create_or_update(
        KubernetesOnlineEndpoint(name=name, compute="aks-compute", auth_mode="key")
    ).result()


def deployment(
    name: str, endpoint: str, model: Model, code_id: str, environment_id: str
) -> KubernetesOnlineDeployment:
    return KubernetesOnlineDeployment(
        name=name,
        endpoint_name=endpoint,
        model=model.id,
        code_configuration=CodeConfiguration(code=code_id, scoring_script="score.py"),
        environment=environment_id,
        environment_variables={"COLOR": name},
        instance_count=1,
    )


def set_traffic(ml: MLClient, endpoint: str, traffic: dict[str, int]) -> KubernetesOnlineEndpoint:
    current = ml.online_endpoints.get(endpoint)
    current.traffic = traffic
    return ml.online_endpoints.begin_create_or_update(current).result()


# ---- tests ---------------------------------------------------------------------------------------


def test_model_versions_are_immutable_and_need_no_upload(level: Level) -> None:
    ml = level.ml
    name = unique("model")
    path = "azureml://datastores/workspaceblobstore/paths/models/toy"
    first = ml.models.create_or_update(
        Model(name=name, version="1", path=path, description="first", tags={"stage": "a"})
    )
    ml.models.create_or_update(Model(name=name, version="2", path=path, type="custom_model"))
    assert first.description == "first" and first.tags == {"stage": "a"}
    assert sorted(m.version for m in ml.models.list(name)) == ["1", "2"]
    assert ml.models.get(name, version="1").path.endswith("/datastores/workspaceblobstore/paths/models/toy")

    # The same definition again is accepted (idempotent re-run); another path is not.
    again = ml.models.create_or_update(Model(name=name, version="1", path=path, description="first"))
    assert again.version == "1"
    with pytest.raises(ResourceExistsError, match="Asset paths cannot be updated"):
        ml.models.create_or_update(
            Model(name=name, version="1", path="azureml://datastores/workspaceblobstore/paths/models/other")
        )

    # Registering by datastore URI uploads nothing: no datastore lookup, no pending upload, no blob call.
    paths = [e["path"] for e in level.requests()]
    assert not [p for p in paths if "/datastores/" in p or "startPendingUpload" in p]


def test_datastore_points_at_the_blob_endpoint(level: Level, azurite_connection_string: str) -> None:
    datastore = level.ml.datastores.get("workspaceblobstore")
    blob = BlobServiceClient.from_connection_string(azurite_connection_string)
    assert datastore.account_name == "devstoreaccount1" == blob.account_name
    assert datastore.container_name == CONTAINER
    assert (datastore.protocol, datastore.endpoint) == ("http", blob.url.split("//")[1].split("/")[0])
    secrets = level.ml.datastores._list_secrets("workspaceblobstore")
    assert secrets.key == blob.credential.account_key
    assert level.ml.compute.get("aks-compute").type == "kubernetes"


def test_deploy_invoke_and_traffic_rules(level: Level) -> None:
    ml = level.ml
    endpoint_name = unique("ep")
    model, code_id, environment_id = register_assets(ml)
    endpoint = create_endpoint(ml, endpoint_name)
    assert endpoint.provisioning_state.lower() == "succeeded"
    assert endpoint.scoring_uri.endswith(f"/endpoints/{endpoint_name}/score")

    blue = ml.online_deployments.begin_create_or_update(
        deployment("blue", endpoint_name, model, code_id, environment_id)
    ).result()
    assert blue.provisioning_state.lower() == "succeeded"
    assert blue.instance_type == "defaultinstancetype"
    got = ml.online_deployments.get("blue", endpoint_name)
    assert got.scale_settings is not None and got.resources is not None
    model_dir = level.state_dir / "deployments" / endpoint_name / "blue" / "model" / "azureml-models" / "toy"
    assert (model_dir / model.version / "toy" / "model.json").read_bytes() == b'{"weight": 3}'
    assert (level.state_dir / "deployments" / endpoint_name / "blue" / "code" / "score.py").exists()

    # Traffic may only name existing deployments and must sum to 100.
    with pytest.raises(HttpResponseError, match="do not exist: green"):
        set_traffic(ml, endpoint_name, {"blue": 50, "green": 50})
    with pytest.raises(HttpResponseError, match="must sum to 100"):
        set_traffic(ml, endpoint_name, {"blue": 60})
    assert set_traffic(ml, endpoint_name, {"blue": 100}).traffic == {"blue": 100}

    keys = ml.online_endpoints.get_keys(endpoint_name)
    assert keys.primary_key and keys.secondary_key and keys.primary_key != keys.secondary_key
    request_file = level.state_dir / f"{endpoint_name}-request.json"
    request_file.write_text(json.dumps({"data": [1, 2]}))
    answer = ml.online_endpoints.invoke(endpoint_name, request_file=str(request_file), deployment_name="blue")
    assert json.loads(answer) == {"color": "blue", "predictions": [3, 6]}

    # The data plane: the key is required, the header routes, the request id reaches the process.
    uri = endpoint.scoring_uri
    body = json.dumps({"data": [5]}).encode()
    status, _, content = level.post(uri, {"Content-Type": "application/json"}, body)
    assert status == 401 and "invalid key" in json.loads(content)["error"]["message"]
    status, _, _ = level.post(uri, {"Authorization": "Bearer not-the-key"}, body)
    assert status == 401
    auth = {"Authorization": f"Bearer {keys.secondary_key}", "Content-Type": "application/json"}
    status, headers, content = level.post(uri, {**auth, "x-request-id": "req-42"}, body)
    assert status == 200 and json.loads(content)["predictions"] == [15]
    assert headers["azureml-model-deployment"] == "blue" and headers["x-ms-request-id"] == "req-42"
    status, _, content = level.post(uri, {**auth, "azureml-model-deployment": "green"}, body)
    assert status == 404 and "green" in json.loads(content)["error"]["message"]

    logs = ml.online_deployments.get_logs("blue", endpoint_name, lines=20)
    assert "POST /score" in logs
    storage_logs = ml.online_deployments.get_logs(
        "blue", endpoint_name, lines=20, container_type="storage-initializer"
    )
    assert "Downloading model toy" in storage_logs

    # A deployment that still receives traffic cannot be deleted; without traffic it can.
    with pytest.raises(HttpResponseError, match="still receives 100%"):
        ml.online_deployments.begin_delete("blue", endpoint_name).result()
    set_traffic(ml, endpoint_name, {"blue": 0})
    status, _, content = level.post(uri, auth, body)
    assert status == 404 and json.loads(content)["error"]["message"] == NO_TRAFFIC_MESSAGE
    ml.online_deployments.begin_delete("blue", endpoint_name).result()
    assert [d.name for d in ml.online_deployments.list(endpoint_name)] == []
    ml.online_endpoints.begin_delete(endpoint_name).result()


def test_failed_provisioning_surfaces_the_service_message(level: Level) -> None:
    ml = level.ml
    endpoint_name = unique("epfail")
    model, code_id, environment_id = register_assets(ml)
    create_endpoint(ml, endpoint_name)

    level.set_faults(fail_next_provisioning="ImagePullBackOff: injected by the test")
    with pytest.raises(HttpResponseError, match="ImagePullBackOff: injected by the test"):
        ml.online_deployments.begin_create_or_update(
            deployment("green", endpoint_name, model, code_id, environment_id)
        ).result()
    assert ml.online_deployments.get("green", endpoint_name).provisioning_state.lower() == "failed"

    # A scoring script whose init() raises: the process dies, the error carries its log tail.
    _, bad_code_id, _ = register_assets(ml, code_path="code/bad")
    with pytest.raises(HttpResponseError, match="boom-marker-1234") as failure:
        ml.online_deployments.begin_create_or_update(
            deployment("red", endpoint_name, model, bad_code_id, environment_id)
        ).result()
    assert "User container has crashed or terminated" in str(failure.value)
    assert "boom-marker-1234" in ml.online_deployments.get_logs("red", endpoint_name, lines=50)


def test_scoring_fault_answers_like_a_failing_model(service: AzureMLService) -> None:
    ml = MLClient(EmulatorCredential(), **service.ml_client_kwargs())
    model, code_id, environment_id = register_assets(ml)
    create_endpoint(ml, "ep-fault")
    ml.online_deployments.begin_create_or_update(
        deployment("blue", "ep-fault", model, code_id, environment_id)
    ).result()
    set_traffic(ml, "ep-fault", {"blue": 100})
    request_file = service.state_dir / "fault-request.json"
    request_file.write_text(json.dumps({"data": [2]}))
    assert json.loads(ml.online_endpoints.invoke("ep-fault", request_file=str(request_file)))[
        "predictions"
    ] == [6]

    service.set_faults(scoring_status={"blue": 500})
    scored_before = len([e for e in service.requests() if e["plane"] == "data"])
    fast_retries = MLClient(EmulatorCredential(), **service.ml_client_kwargs(), retry_backoff_factor=0.01)
    with pytest.raises(HttpResponseError, match="answered 500") as failure:
        fast_retries.online_endpoints.invoke("ep-fault", request_file=str(request_file))
    assert failure.value.status_code == 500
    # azure-core retries a POST answered 500/503/504 (3 retries by default): the scoring request is sent
    # four times, so a scoring script must tolerate repeats.
    assert len([e for e in service.requests() if e["plane"] == "data"]) - scored_before == 4
    assert failure.value.response.headers["azureml-model-deployment"] == "blue"
    service.set_faults(scoring_status={})
    assert (
        json.loads(ml.online_endpoints.invoke("ep-fault", request_file=str(request_file)))["color"] == "blue"
    )


def test_fast_lro_polling_helper_for_a_service_without_retry_hint(tmp_path: Path) -> None:
    # Without the emulator's x-ms-retry-after-ms the SDK waits LROConfigurations.POLL_INTERVAL (5 s)
    # between polls; fast_lro_polling shortens that for code that must poll a hint-less service.
    service = AzureMLService(tmp_path / "azureml", WorkspaceConfig(lro_retry_after_ms=None))
    try:
        ml = MLClient(EmulatorCredential(), **service.ml_client_kwargs())
        create_endpoint(ml, "ep-slow")
        model = ml.models.create_or_update(
            Model(name="slow", version="1", path="azureml://datastores/workspaceblobstore/paths/models/toy")
        )
        service.set_faults(fail_next_provisioning="held, then failed", provisioning_delay_s=0.5)
        started = time.monotonic()
        with fast_lro_polling(0.05), pytest.raises(HttpResponseError, match="held, then failed"):
            ml.online_deployments.begin_create_or_update(
                KubernetesOnlineDeployment(name="blue", endpoint_name="ep-slow", model=model.id)
            ).result()
        assert time.monotonic() - started < 3
    finally:
        service.close()


def test_request_log_holds_no_secret(https_emulator: Emulator) -> None:
    ml = MLClient(
        EmulatorCredential("arm-token-that-must-not-be-logged"), **https_emulator.ml_client_kwargs()
    )
    endpoint_name = unique("epsecret")
    create_endpoint(ml, endpoint_name)
    keys = ml.online_endpoints.get_keys(endpoint_name)
    account_key = ml.datastores._list_secrets("workspaceblobstore").key
    requests.post(
        https_emulator.scoring_uri(endpoint_name),
        headers={"Authorization": f"Bearer {keys.primary_key}"},
        json={"password": "hunter2-secret", "apiKey": "x" * 20, "data": [1]},
        verify=https_emulator.ca_bundle,
        timeout=10,
    )
    ml.online_endpoints.begin_regenerate_keys(endpoint_name, key_type="secondary").result()
    regenerated = ml.online_endpoints.get_keys(endpoint_name)
    assert regenerated.primary_key == keys.primary_key and regenerated.secondary_key != keys.secondary_key
    text = (https_emulator.state_dir / "requests.jsonl").read_text()
    secrets = (keys.primary_key, keys.secondary_key, regenerated.secondary_key, account_key)
    for secret in (*secrets, "arm-token-that-must-not-be-logged", "hunter2"):
        assert secret not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert all({"method", "path", "query", "body"} <= set(e) for e in entries)
    scored = [e for e in entries if e["path"] == f"/endpoints/{endpoint_name}/score"]
    assert scored and scored[-1]["body"]["password"] == "***" and scored[-1]["body"]["data"] == [1]


def test_golden_sdk_calls(service: AzureMLService) -> None:
    """The calls azure-ai-ml makes for one release, pinned: an SDK upgrade that changes them fails here."""
    ml = MLClient(EmulatorCredential(), **service.ml_client_kwargs())
    path = "azureml://datastores/workspaceblobstore/paths/models/toy"
    model = ml.models.create_or_update(Model(name="golden-model", version="1", path=path))
    list(ml.models.list("golden-model"))
    code = ml._code.create_or_update(
        Code(name="golden-code", version="1", path="azureml://datastores/workspaceblobstore/paths/code/good")
    )
    environment = ml.environments.create_or_update(Environment(name="golden-env", version="1", image=IMAGE))
    create_endpoint(ml, "golden-ep")
    ml.online_deployments.begin_create_or_update(
        deployment("blue", "golden-ep", model, str(code.id), str(environment.id))
    ).result()
    set_traffic(ml, "golden-ep", {"blue": 100})
    ml.online_endpoints.get_keys("golden-ep")
    request_file = service.state_dir / "golden-request.json"
    request_file.write_text(json.dumps({"data": [1]}))
    ml.online_endpoints.invoke("golden-ep", request_file=str(request_file), deployment_name="blue")
    ml.online_deployments.get_logs("blue", "golden-ep", lines=10)
    set_traffic(ml, "golden-ep", {})
    ml.online_deployments.begin_delete("blue", "golden-ep").result()
    ml.online_endpoints.begin_delete("golden-ep").result()

    lines = call_lines(service.requests())
    # Long-running operations poll a timing-dependent number of times: one line per run of polls.
    calls = [line for i, line in enumerate(lines) if i == 0 or line != lines[i - 1]]
    text = "\n".join(calls) + "\n"
    if os.environ.get("AZUREML_GOLDEN_REGENERATE"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    expected = GOLDEN.read_text() if GOLDEN.exists() else ""
    assert text == expected, (
        "The azure-ai-ml SDK's calls changed (or the scenario did). Review the diff against "
        f"{GOLDEN.relative_to(ROOT)}, then regenerate it with: "
        "AZUREML_GOLDEN_REGENERATE=1 pytest tests/emulators/test_azureml_emulator.py -k golden"
    )


def test_cli_start_stop_and_stop_ends_scoring_processes(
    tmp_path: Path, azurite_connection_string: str
) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "AZUREML_EMULATOR_BLOB_CONNECTION_STRING": azurite_connection_string}
    started = subprocess.run(
        [
            sys.executable,
            "-m",
            "emulators.azureml",
            "start",
            "--home",
            str(home),
            "--scoring-launcher",
            STANDIN,
            "--lro-retry-after-ms",
            str(RETRY_AFTER_MS),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    url = started.stdout.splitlines()[0]
    state = json.loads((home / "emulators" / "azureml" / "state.json").read_text())
    assert state["url"] == url and Path(state["ca_bundle"]).exists()
    assert "AccountKey" not in " ".join(Path(f"/proc/{state['pid']}/cmdline").read_text().split("\0"))
    try:
        emulator = Emulator(home.resolve(), url, state["pid"], state)
        ml = MLClient(EmulatorCredential(), **emulator.ml_client_kwargs())
        model, code_id, environment_id = register_assets(ml)
        create_endpoint(ml, "ep-cli")
        ml.online_deployments.begin_create_or_update(
            deployment("blue", "ep-cli", model, code_id, environment_id)
        ).result()
        pid = emulator.snapshot()["endpoints"]["ep-cli"]["deployments"]["blue"]["pid"]
        os.kill(pid, 0)
    finally:
        stopped = subprocess.run(
            [sys.executable, "-m", "emulators.azureml", "stop", "--home", str(home)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert stopped.stdout.strip() == "stopped", stopped.stdout + stopped.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not (home / "emulators" / "azureml" / "state.json").exists()
