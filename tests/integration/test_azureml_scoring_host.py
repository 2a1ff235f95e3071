"""The score script under the real Azure ML inference server, in the pinned scoring venv, as AKS runs it.

What a deployment relies on: the code asset built by ``serving.code_package`` imports and scores with
nothing but the scoring venv (azureml-inference-server-http 1.5.1 and the pins beside it); ``POST
/score`` answers with the same predictions as the in-process scorer and with 4xx bodies naming the bad
fields; every answer is in the prediction log when it arrives, and a log that fails means 503; an
``init()`` that fails stops the server and ``wait_until_live`` shows why.

The scoring venv is built on first use (a few seconds; cached under ~/.cache/mlrelease). If it cannot
be built these tests fail with uv's output: nothing here is skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from emulators.azureml import scoring_host
from emulators.azureml.scoring_host import (
    ensure_scoring_venv,
    start_scoring_process,
    stop_scoring_process,
    wait_until_live,
)
from emulators.azurite import ACCOUNT_KEY
from emulators.azurite import start as start_azurite
from mlrelease.backends.azure.blob_audit import BlobAuditLog
from mlrelease.domain.payload import MAX_BODY_BYTES, validate_payload
from mlrelease.serving.code_package import SCORING_SCRIPT, build_scoring_code
from mlrelease.serving.core import predictions_for
from mlrelease.serving.portable import PortableModel
from tests.conftest import free_port
from tests.unit.serving.conftest import lr_document, record

ENVIRONMENT = {
    "MLRELEASE_ENDPOINT": "test",
    "MLRELEASE_RELEASE_ID": "rel-3",
    "MLRELEASE_PREDICTION_LOG": "none",
}

# A score script that wraps ours with a prediction log on a local file (the deployment's Blob store
# needs Azurite): how the test sees what was recorded, and makes the log fail on demand.
RECORDING_SCRIPT = """
import json
import os
from pathlib import Path

import azureml_score
from azureml_score import run  # decorated with @rawhttp: the server hands it the request


class FileLog:
    def __init__(self, path, fail_flag):
        self.path, self.fail_flag = Path(path), Path(fail_flag)

    def append_prediction(self, record):
        if self.fail_flag.exists():
            raise OSError("audit store unreachable (test)")
        with self.path.open("a") as handle:
            handle.write(json.dumps(record.to_dict()) + "\\n")
            handle.flush()
            os.fsync(handle.fileno())
        return record


def init():
    azureml_score.init(FileLog(os.environ["TEST_PREDICTION_LOG"], os.environ["TEST_PREDICTION_LOG_FAIL"]))
"""


@pytest.fixture(scope="module")
def scoring_venv() -> Path:
    return ensure_scoring_venv()


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    return build_scoring_code(tmp_path / "code")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "azureml-models" / "income-classifier" / "3"
    (directory / "model").mkdir(parents=True)
    (directory / "model" / "portable_model.json").write_text(json.dumps(lr_document()))
    return directory


@contextmanager
def serving(
    code_dir: Path,
    model_dir: Path,
    log_path: Path,
    environment: dict[str, str] | None = None,
    script: str = SCORING_SCRIPT,
) -> Iterator[str]:
    port = free_port()
    process = start_scoring_process(
        code_dir, script, model_dir, {**ENVIRONMENT, **(environment or {})}, port, log_path
    )
    try:
        wait_until_live(port, process, timeout_s=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_scoring_process(process)


def in_process_predictions(model_dir: Path, records: list[dict]) -> list[dict]:
    model = PortableModel.load(model_dir / "model" / "portable_model.json")
    return predictions_for(model, validate_payload({"data": records}).records)


def test_the_snapshot_imports_and_scores_in_the_scoring_venv_alone(scoring_venv, code_dir, model_dir):
    script = (
        "import json, sys, sysconfig\n"
        f"sys.path.insert(0, {str(code_dir)!r})\n"
        "import azureml_score, mlrelease, numpy\n"
        "site = sysconfig.get_paths()['purelib']\n"
        f"assert mlrelease.__file__.startswith({str(code_dir)!r}), mlrelease.__file__\n"
        "assert numpy.__file__.startswith(site), numpy.__file__\n"
        "foreign = [p for p in sys.path if 'site-packages' in p and not p.startswith(site)]\n"
        "assert not foreign, foreign\n"
        "azureml_score.init()\n"
        f"print(json.dumps(azureml_score.run(json.dumps({{'data': [{record()!r}]}}))))\n"
    )
    environment = {
        "PATH": os.environ["PATH"],
        "AZUREML_MODEL_DIR": str(model_dir),
        "PYTHONDONTWRITEBYTECODE": "1",
        **ENVIRONMENT,
    }
    result = subprocess.run(
        [str(scoring_venv / "bin" / "python"), "-I", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["predictions"] == in_process_predictions(model_dir, [record()])


def test_scores_like_the_portable_model_in_process(scoring_venv, code_dir, model_dir, tmp_path):
    records = [
        record(),
        record(marital_status="Married-civ-spouse", education="Doctorate", age=50),
        record(native_country="Atlantis"),
    ]
    with serving(code_dir, model_dir, tmp_path / "server.log") as url:
        response = httpx.post(
            f"{url}/score", json={"data": records}, headers={"x-request-id": "it-1"}, timeout=30
        )
        anonymous = httpx.post(f"{url}/score", json={"data": records}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body == {
        "request_id": "it-1",
        "model": {"name": "income-classifier", "version": "3"},
        "release_id": "rel-3",
        "predictions": in_process_predictions(model_dir, records),
    }
    assert response.headers["x-request-id"] == "it-1"
    assert anonymous.status_code == 200
    assert anonymous.headers["x-request-id"] == anonymous.json()["request_id"]
    server_log = (tmp_path / "server.log").read_text()
    # Loopback only, and init() said what it loaded.
    assert "Listening at: http://127.0.0.1:" in server_log
    assert f"Loaded logging config from {code_dir / 'logging.json'}" in server_log
    assert "Loaded income-classifier version 3 (release rel-3, LogisticRegression)" in server_log
    assert not list(code_dir.rglob("__pycache__")), "running the asset must not change it"


def test_bad_input_is_a_4xx_json_naming_the_fields(scoring_venv, code_dir, model_dir, tmp_path):
    with serving(code_dir, model_dir, tmp_path / "server.log") as url:
        invalid = httpx.post(f"{url}/score", json={"data": [{"age": -1}]}, timeout=30)
        not_json = httpx.post(
            f"{url}/score", content=b"{nope", headers={"content-type": "application/json"}, timeout=30
        )
        wrong_type = httpx.post(
            f"{url}/score", content=b"a,b", headers={"content-type": "text/csv"}, timeout=30
        )
        too_large = httpx.post(
            f"{url}/score",
            content=b" " * (MAX_BODY_BYTES + 1),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        wrong_method = httpx.get(f"{url}/score", timeout=30)
        bad_id = httpx.post(
            f"{url}/score", json={"data": [record()]}, headers={"x-request-id": "not a token"}, timeout=30
        )

    assert invalid.status_code == 422
    fields = {d["field"] for d in invalid.json()["details"]}
    assert {"data[0].age", "data[0].workclass", "data[0].native_country"} <= fields
    assert invalid.json()["error"] == "invalid request" and "predictions" not in invalid.json()
    assert (not_json.status_code, not_json.json()["details"][0]["field"]) == (400, "body")
    assert (wrong_type.status_code, wrong_type.json()["details"][0]["field"]) == (415, "Content-Type")
    assert (too_large.status_code, too_large.json()["details"][0]["field"]) == (413, "body")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "Method Not Allowed"
    for response in (invalid, not_json, wrong_type, too_large, wrong_method):
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"] == response.json()["request_id"]
    # A client id that is not a sane token is replaced, in the body and in the header alike.
    assert bad_id.status_code == 200
    assert bad_id.json()["request_id"] != "not a token"
    assert bad_id.headers["x-request-id"] == bad_id.json()["request_id"]


def test_every_answer_is_recorded_first_and_a_failing_log_means_503(
    scoring_venv, code_dir, model_dir, tmp_path
):
    (code_dir / "score_recording.py").write_text(RECORDING_SCRIPT)
    log_file, fail_flag = tmp_path / "predictions.jsonl", tmp_path / "log-is-down"
    environment = {"TEST_PREDICTION_LOG": str(log_file), "TEST_PREDICTION_LOG_FAIL": str(fail_flag)}

    def recorded() -> dict[str, dict]:
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        return {r["request_id"]: r for r in map(json.loads, lines)}

    with serving(
        code_dir, model_dir, tmp_path / "server.log", environment, script="score_recording.py"
    ) as url:
        good = httpx.post(
            f"{url}/score", json={"data": [record()]}, headers={"x-request-id": "r-1"}, timeout=30
        )
        # Recorded by the time the answer arrived (the unit tests show it is written before answering).
        assert recorded()["r-1"]["status"] == 200
        assert recorded()["r-1"]["outputs"] == good.json()["predictions"]
        assert recorded()["r-1"]["endpoint"] == "test" and recorded()["r-1"]["release_id"] == "rel-3"
        bad = httpx.post(f"{url}/score", json={"data": []}, headers={"x-request-id": "r-2"}, timeout=30)
        assert bad.status_code == 422 and recorded()["r-2"]["error"] == bad.json()
        fail_flag.touch()
        refused = httpx.post(
            f"{url}/score", json={"data": [record()]}, headers={"x-request-id": "r-3"}, timeout=30
        )
    assert refused.status_code == 503
    assert refused.json()["error"] == "prediction log unavailable" and "predictions" not in refused.json()
    assert "r-3" not in recorded()
    assert "PREDICTION LOG WRITE FAILED for request_id=r-3" in (tmp_path / "server.log").read_text()


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        ("no-artifact", "no portable_model.json under AZUREML_MODEL_DIR="),
        ("broken-artifact", "could not be loaded"),
        ("no-prediction-log-setting", "MLRELEASE_PREDICTION_LOG=''"),
    ],
)
def test_an_init_that_fails_stops_the_server_with_the_reason_in_the_log(
    scoring_venv, code_dir, model_dir, tmp_path, breakage, expected
):
    environment = dict(ENVIRONMENT)
    if breakage == "no-artifact":
        (model_dir / "model" / "portable_model.json").unlink()
    elif breakage == "broken-artifact":
        (model_dir / "model" / "portable_model.json").write_text("{broken")
    else:
        environment["MLRELEASE_PREDICTION_LOG"] = ""
    port = free_port()
    process = start_scoring_process(
        code_dir, SCORING_SCRIPT, model_dir, environment, port, tmp_path / "server.log"
    )
    try:
        with pytest.raises(RuntimeError) as raised:
            wait_until_live(port, process, timeout_s=60)
    finally:
        stop_scoring_process(process)
    message = str(raised.value)
    assert "exited with code" in message and "Log tail" in message
    assert expected in message
    assert "User's init function failed" in message


def test_the_blob_prediction_log_records_each_answer_in_azurite(scoring_venv, code_dir, model_dir, tmp_path):
    """The deployment's own path: MLRELEASE_PREDICTION_LOG=blob, the real BlobAuditLog, Blob-service HTTP.

    A Blob store that is down is not exercised here: azure-core's default retries hold the request for
    about 85 s before the 503 (the file-backed log above covers the 503 itself).
    """
    azurite = start_azurite(tmp_path / "azurite-home")
    try:
        environment = {
            "MLRELEASE_PREDICTION_LOG": "blob",
            "MLRELEASE_AUDIT_CONTAINER": "predictions",
            "MLRELEASE_AUDIT_BLOB_CONNECTION_STRING": azurite.connection_string,
        }
        log_path = tmp_path / "server.log"
        with serving(code_dir, model_dir, log_path, environment) as url:
            good = httpx.post(
                f"{url}/score", json={"data": [record()]}, headers={"x-request-id": "b-1"}, timeout=30
            )
            bad = httpx.post(
                f"{url}/score", json={"data": [{"age": 1}]}, headers={"x-request-id": "b-2"}, timeout=30
            )
        store = BlobAuditLog.from_connection_string(azurite.connection_string, "predictions")
        stored = store.get_prediction("b-1")
        refused = store.get_prediction("b-2")
    finally:
        azurite.stop()
    assert good.status_code == 200 and bad.status_code == 422
    assert stored is not None and stored.outputs == good.json()["predictions"]
    assert (stored.status, stored.endpoint, stored.model_name, stored.model_version, stored.release_id) == (
        200,
        "test",
        "income-classifier",
        "3",
        "rel-3",
    )
    assert refused is not None and refused.status == 422 and refused.error == bad.json()
    server_log = log_path.read_text()
    assert "Prediction log: Blob container predictions" in server_log
    assert ACCOUNT_KEY not in server_log


# ------------------------------------------------------------------ the venv cache, without building one


def test_parallel_callers_build_the_venv_once(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRELEASE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[str] = []

    def slow_uv(arguments: list[str], what: str) -> None:
        calls.append(arguments[0])
        time.sleep(0.2)
        if arguments[0] == "venv":
            Path(arguments[-1]).mkdir(parents=True)

    monkeypatch.setattr(scoring_host, "_run_uv", slow_uv)
    with ThreadPoolExecutor(4) as pool:
        venvs = set(pool.map(lambda _: ensure_scoring_venv(), range(4)))
    assert calls == ["venv", "pip"]
    [venv] = venvs
    assert venv.parent == tmp_path / "cache" and venv.name.startswith("azureml-scoring-")


def test_an_interrupted_build_is_redone_and_a_failed_one_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MLRELEASE_CACHE_DIR", str(tmp_path / "cache"))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("numpy==2.4.6\n")

    def failing_uv(arguments: list[str], what: str) -> None:
        if arguments[0] == "venv":
            Path(arguments[-1]).mkdir(parents=True)
            (Path(arguments[-1]) / "half-built").write_text("")
            return
        raise RuntimeError(f"{what} failed (test)")

    monkeypatch.setattr(scoring_host, "_run_uv", failing_uv)
    with pytest.raises(RuntimeError, match="failed \\(test\\)"):
        ensure_scoring_venv(requirements)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]

    monkeypatch.setattr(
        scoring_host,
        "_run_uv",
        lambda arguments, what: (
            Path(arguments[-1]).mkdir(parents=True, exist_ok=True) if arguments[0] == "venv" else None
        ),
    )
    venv = ensure_scoring_venv(requirements)
    assert not (venv / "half-built").exists()
    requirements.write_text("numpy==2.4.5\n")
    assert ensure_scoring_venv(requirements) != venv  # new pins, new venv


def test_the_scoring_process_gets_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    monkeypatch.setenv("AIRFLOW_HOME", "/airflow")
    environment = scoring_host.scoring_environment(
        tmp_path / "code",
        tmp_path / "model",
        {
            "MLRELEASE_ENDPOINT": "prod",
            "SEPERATE_HEALTH_ENDPOINT": "true",
            "GUNICORN_CMD_ARGS": "--timeout 5",
        },
        tmp_path / "venv",
    )
    assert "PYTHONPATH" not in environment and "AIRFLOW_HOME" not in environment
    assert "SEPERATE_HEALTH_ENDPOINT" not in environment
    assert environment["GUNICORN_CMD_ARGS"] == "--timeout 5 --no-control-socket"
    assert environment["AZUREML_MODEL_DIR"] == str(tmp_path / "model")
    assert environment["AML_APP_ROOT"] == str(tmp_path / "code")
    assert environment["MLRELEASE_ENDPOINT"] == "prod"
    assert environment["PATH"].startswith(str(tmp_path / "venv" / "bin"))
