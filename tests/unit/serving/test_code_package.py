"""The scoring code asset: deterministic, self-contained, and free of modules the scoring venv cannot import.

The proof with the real scoring venv and inference server is in
tests/integration/test_azureml_scoring_host.py; here the snapshot is imported in an isolated
interpreter whose only project code is the snapshot.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from mlrelease.serving import code_package
from mlrelease.serving.code_package import (
    SCORING_SCRIPT,
    CodePackageError,
    build_scoring_code,
    code_digest,
    code_files,
    scoring_modules,
    scoring_requirements,
)

from .conftest import expected_probability, lr_document, record

ROOT = Path(__file__).resolve().parents[3]
SRC = ROOT / "src"


def test_the_asset_holds_the_script_at_the_top_and_the_modules_it_imports(tmp_path):
    code_dir = build_scoring_code(tmp_path / "code")
    files = code_files(code_dir)
    assert (code_dir / SCORING_SCRIPT).read_bytes() == (
        SRC / "mlrelease/serving/azureml_score.py"
    ).read_bytes()
    for needed in (
        "mlrelease/__init__.py",
        "mlrelease/serving/__init__.py",
        "mlrelease/serving/core.py",
        "mlrelease/serving/portable.py",
        "mlrelease/domain/payload.py",
        "mlrelease/domain/records.py",
        "mlrelease/domain/schema.py",
        "mlrelease/hashing.py",
        "mlrelease/tags.py",
        "mlrelease/backends/azure/blob_audit.py",
    ):
        assert needed in files
        assert (code_dir / needed).read_bytes() == (SRC / needed).read_bytes()
    # The inference server's logging set-up, plus the project's loggers (else only warnings are seen).
    logging_config = json.loads((code_dir / "logging.json").read_text())
    assert logging_config["loggers"]["mlrelease"]["level"] == "INFO"
    assert set(logging_config["loggers"]) >= {"azmlinfsrv", "gunicorn.access", "gunicorn.error"}
    # Not the service, not the orchestration, not training: none of it is imported, and all of it
    # needs packages (FastAPI, Airflow, pyspark, MLflow, pandas) the scoring environment lacks.
    for absent in ("mlrelease/serving/app.py", "mlrelease/serving/azureml_score.py", "mlrelease/cli.py"):
        assert absent not in files
    assert not [
        f
        for f in files
        if f.startswith(("mlrelease/airflow/", "mlrelease/training/", "mlrelease/backends/local/"))
    ]


def test_the_asset_is_deterministic(tmp_path):
    first = build_scoring_code(tmp_path / "a")
    second = build_scoring_code(tmp_path / "b")
    assert code_files(first) == code_files(second)
    for relative in code_files(first):
        assert (first / relative).read_bytes() == (second / relative).read_bytes()
        assert (first / relative).stat().st_mode & 0o777 == 0o644
    assert code_digest(first) == code_digest(second)
    assert re.fullmatch(r"[0-9a-f]{64}", code_digest(first))
    assert not list(first.rglob("__pycache__")) and not list(first.rglob("*.pyc"))


def test_the_digest_follows_the_content_but_not_pycache(tmp_path):
    code_dir = build_scoring_code(tmp_path / "code")
    before = code_digest(code_dir)
    (code_dir / "mlrelease" / "__pycache__").mkdir()
    (code_dir / "mlrelease" / "__pycache__" / "tags.cpython-311.pyc").write_bytes(b"\0")
    assert code_digest(code_dir) == before
    tags = code_dir / "mlrelease" / "tags.py"
    tags.write_bytes(tags.read_bytes() + b"\n")
    edited = code_digest(code_dir)
    assert edited != before
    tags.rename(code_dir / "mlrelease" / "tags2.py")  # same bytes under another name
    assert code_digest(code_dir) not in (before, edited)


def test_it_builds_only_into_a_fresh_directory(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "stale.py").write_text("")
    with pytest.raises(FileExistsError, match="is not an empty directory"):
        build_scoring_code(tmp_path / "used")
    (tmp_path / "empty").mkdir()
    assert build_scoring_code(tmp_path / "empty") == tmp_path / "empty"


def test_the_snapshot_imports_and_scores_with_no_other_project_code(tmp_path):
    code_dir = build_scoring_code(tmp_path / "code")
    model_dir = tmp_path / "azureml-models" / "income-classifier" / "4"
    model_dir.mkdir(parents=True)
    (model_dir / "portable_model.json").write_text(json.dumps(lr_document()))
    # -I: no PYTHONPATH, no user site, no cwd; -S: no site-packages until we add this venv's own
    # (which has numpy), so the only mlrelease on sys.path is the snapshot's.
    script = (
        "import json, sys\n"
        f"sys.path[:0] = [{str(code_dir)!r}]\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        "import azureml_score, mlrelease\n"
        f"assert mlrelease.__file__.startswith({str(code_dir)!r}), mlrelease.__file__\n"
        "azureml_score.init(prediction_log=azureml_score.NoPredictionLog())\n"
        f"print(json.dumps(azureml_score.run(json.dumps({{'data': [{record()!r}]}}))))\n"
    )
    environment = {
        "PATH": os.environ["PATH"],
        "AZUREML_MODEL_DIR": str(model_dir),
        "MLRELEASE_ENDPOINT": "test",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    result = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout.strip().splitlines()[-1])
    assert body["model"] == {"name": "income-classifier", "version": "4"}
    assert body["predictions"][0]["probability"] == pytest.approx(
        expected_probability(lr_document(), record())
    )


def _fake_source_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_module_needing_a_package_the_scoring_venv_lacks_is_refused(tmp_path, monkeypatch):
    _fake_source_tree(
        tmp_path,
        {
            "mlrelease/__init__.py": "",
            "mlrelease/serving/__init__.py": "",
            "mlrelease/serving/azureml_score.py": "from mlrelease.serving import core\n",
            "mlrelease/serving/core.py": "import numpy\nfrom . import helpers\n",
            "mlrelease/serving/helpers.py": "import pandas as pd\n",
        },
    )
    monkeypatch.setattr(code_package, "_source_root", lambda: tmp_path)
    with pytest.raises(
        CodePackageError, match=r"mlrelease\.serving\.helpers .* imports 'pandas' at import time"
    ):
        scoring_modules(["mlrelease.serving.azureml_score"])


def test_imports_inside_functions_and_type_checking_blocks_are_not_followed(tmp_path, monkeypatch):
    _fake_source_tree(
        tmp_path,
        {
            "mlrelease/__init__.py": "",
            "mlrelease/serving/__init__.py": "",
            "mlrelease/serving/azureml_score.py": (
                "from typing import TYPE_CHECKING\n"
                "try:\n    import numpy\nexcept ImportError:\n    from mlrelease import fallback\n"
                "if TYPE_CHECKING:\n    from mlrelease import typing_only\n"
                "def init():\n    from mlrelease import lazy\n    import pyspark\n"
                "class Holder:\n    from mlrelease import in_class\n"
            ),
            "mlrelease/fallback.py": "",
            "mlrelease/typing_only.py": "import pandas\n",
            "mlrelease/lazy.py": "import mlflow\n",
            "mlrelease/in_class.py": "",
        },
    )
    monkeypatch.setattr(code_package, "_source_root", lambda: tmp_path)
    assert sorted(scoring_modules(["mlrelease.serving.azureml_score"])) == [
        "mlrelease",
        "mlrelease.fallback",
        "mlrelease.in_class",
        "mlrelease.serving",
        "mlrelease.serving.azureml_score",
    ]


def test_a_missing_root_module_is_named(tmp_path, monkeypatch):
    _fake_source_tree(tmp_path, {"mlrelease/__init__.py": ""})
    monkeypatch.setattr(code_package, "_source_root", lambda: tmp_path)
    with pytest.raises(CodePackageError, match="module mlrelease.backends.azure.blob_audit is not in"):
        scoring_modules(["mlrelease.backends.azure.blob_audit"])


def _pins(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{path}: {line!r} is not pinned with =="
            pins[name.lower()] = version
    return pins


def test_the_scoring_requirements_are_pinned_like_the_project():
    scoring = _pins(scoring_requirements())
    project = _pins(ROOT / "requirements.txt")
    assert scoring["azureml-inference-server-http"] == "1.5.1"
    for shared in ("numpy", "azure-storage-blob", "azure-identity", "azure-core"):
        assert scoring[shared] == project[shared], shared
    assert (
        "uv pip compile --python-version 3.11 azureml-requirements.in" in scoring_requirements().read_text()
    )
