"""The code asset an Azure ML deployment runs: the score script plus the part of ``mlrelease`` it imports.

An online deployment runs ``azmlinfsrv --entry_script azureml_score.py`` in a directory Azure ML copies
from a registered *code asset*, with the scoring environment's packages (``azureml-requirements.txt``)
and nothing else. Shipping the whole repository would drag Airflow-, Spark- and MLflow-dependent
modules along (which that environment cannot import) and make every unrelated commit a new asset; so
:func:`build_scoring_code` copies the score script to the top of the directory and, below it, exactly
the ``mlrelease`` modules reachable from it by module-level imports (plus the packages' ``__init__``
files). A module in that closure that imports a third-party package the scoring environment does not
have is an error at build time, not at deployment time.

The directory is deterministic: the same sources give the same files with the same bytes (no
timestamps, no ``__pycache__``), and :func:`code_digest` is a sha256 over the relative paths and
contents, so the deployer can upload it content-addressed and skip an upload that already exists.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import mlrelease

SCORING_SCRIPT = "azureml_score.py"
PACKAGE = "mlrelease"
# Where the score script's imports start: the script itself and the modules it imports lazily (the
# Blob audit store, imported in init() only when the deployment logs to Blob Storage).
ROOT_MODULES: tuple[str, ...] = (
    "mlrelease.serving.azureml_score",
    "mlrelease.serving.core",
    "mlrelease.serving.portable",
    "mlrelease.domain.payload",
    "mlrelease.domain.records",
    "mlrelease.domain.schema",
    "mlrelease.hashing",
    "mlrelease.tags",
    "mlrelease.backends.azure.blob_audit",
)
# Top-level third-party names the scoring environment provides (serving/azureml-requirements.txt).
SCORING_ENVIRONMENT_PACKAGES = frozenset(
    {"numpy", "azure", "azureml", "azureml_inference_server_http", "flask", "werkzeug"}
)
LOGGING_CONFIG_FILE = "logging.json"
# The inference server replaces its logging set-up with a logging.json found beside the entry script.
# This is its own default (azureml_inference_server_http/logging.json, 1.5.1) plus the "mlrelease"
# loggers at INFO: without it, only warnings of the score script reach the deployment log (the
# server leaves the root logger at WARNING), so "Loaded <model> ..." and the per-request lines are lost.
_SERVER_FORMATTER = {
    "class": "azureml_inference_server_http.log_config.AMLLogFormatter",
    "format": "%(asctime)s %(levelname).1s [%(process)d] %(name)s - %(message)s",
    "style": "%",
}
LOGGING_CONFIG: dict[str, object] = {
    "version": 1,
    "handlers": {
        "azmlinfsrv": {
            "class": "logging.StreamHandler",
            "level": "INFO",
            "stream": "ext://sys.stdout",
            "formatter": "azmlinfsrv",
        },
        "azmlinfsrv_stderr": {
            "class": "logging.StreamHandler",
            "level": "INFO",
            "stream": "ext://sys.stderr",
            "formatter": "azmlinfsrv",
        },
    },
    "formatters": {"azmlinfsrv": _SERVER_FORMATTER},
    "loggers": {
        "azmlinfsrv": {"level": "INFO", "handlers": ["azmlinfsrv"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["azmlinfsrv"], "filters": ["RootAccessFilter"]},
        "gunicorn.error": {"level": "INFO", "handlers": ["azmlinfsrv_stderr"]},
        PACKAGE: {"level": "INFO", "handlers": ["azmlinfsrv"], "propagate": False},
    },
    "filters": {"RootAccessFilter": {"()": "azureml_inference_server_http.log_config.RootAccessFilter"}},
    # The server configures logging again in each worker; keep loggers it does not name (azure.*).
    "disable_existing_loggers": False,
}
_FILE_MODE = 0o644
_DIR_MODE = 0o755


class CodePackageError(RuntimeError):
    """The scoring code cannot be packaged (a missing module, or one the scoring environment cannot import)."""


def scoring_requirements() -> Path:
    """The pinned requirements of the scoring environment (what the Azure ML environment is built from)."""
    return Path(__file__).with_name("azureml-requirements.txt")


def _source_root() -> Path:
    # The directory that holds the mlrelease package (src/ in the repository, site-packages when installed).
    return Path(mlrelease.__file__).resolve().parent.parent


def _module_file(name: str, root: Path) -> Path | None:
    base = root.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    module = base.with_suffix(".py")
    return module if module.is_file() else None


def _is_type_checking_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_nodes(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements executed when the module is imported: not function bodies, not ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and _is_type_checking_guard(node):
            yield from _import_time_nodes(node.orelse)
            continue
        yield node
        for field in ("body", "orelse", "finalbody"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _import_time_nodes(children)
        for handler in getattr(node, "handlers", None) or []:
            yield from _import_time_nodes(handler.body)


def _imports_of(name: str, path: Path, root: Path) -> tuple[set[str], set[str]]:
    """(mlrelease modules, other top-level names) that ``name`` imports when it is imported."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    own: set[str] = set()
    other: set[str] = set()

    def add(module: str) -> None:
        if module == PACKAGE or module.startswith(PACKAGE + "."):
            own.add(module)
        else:
            other.add(module.split(".")[0])

    for node in _import_time_nodes(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            add(module)
            if module == PACKAGE or module.startswith(PACKAGE + "."):
                # `from mlrelease.serving import core` imports the submodule core.
                for alias in node.names:
                    if _module_file(f"{module}.{alias.name}", root) is not None:
                        own.add(f"{module}.{alias.name}")
    return own, other


def scoring_modules(roots: Iterable[str] = ROOT_MODULES) -> dict[str, Path]:
    """Every ``mlrelease`` module the score script can import, with its parent packages: name -> source file.

    Raises :class:`CodePackageError` for a root that does not exist or a module whose import-time
    imports need a package the scoring environment does not provide.
    """
    root = _source_root()
    found: dict[str, Path] = {}
    pending = list(roots)
    problems: list[str] = []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        path = _module_file(name, root)
        if path is None:
            raise CodePackageError(
                f"module {name} is not in {root}: the scoring code needs it; restore it (or remove it from "
                "mlrelease.serving.code_package.ROOT_MODULES if the score script no longer imports it)"
            )
        found[name] = path
        parts = name.split(".")
        pending.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        own, other = _imports_of(name, path, root)
        pending.extend(own)
        for top in sorted(other):
            if top in sys.stdlib_module_names or top in SCORING_ENVIRONMENT_PACKAGES:
                continue
            problems.append(f"{name} ({path}) imports {top!r} at import time")
    if problems:
        raise CodePackageError(
            "the scoring code would not import in the scoring environment, which has only the standard "
            f"library and {', '.join(sorted(SCORING_ENVIRONMENT_PACKAGES))}: "
            + "; ".join(problems)
            + ". Move such imports into the functions that need them, or keep the module out of the "
            "score script's imports"
        )
    return found


def build_scoring_code(dst_dir: Path) -> Path:
    """Write the scoring code asset into ``dst_dir`` (absent or empty) and return ``dst_dir``.

    Layout: ``azureml_score.py`` at the top (the deployment's ``scoring_script``), ``logging.json``
    beside it (:data:`LOGGING_CONFIG`, read by the inference server) and ``mlrelease/...`` with the
    modules of :func:`scoring_modules`. Hash it with :func:`code_digest`.
    """
    dst_dir = Path(dst_dir)
    if dst_dir.exists() and (not dst_dir.is_dir() or any(dst_dir.iterdir())):
        raise FileExistsError(
            f"{dst_dir} exists and is not an empty directory; the scoring code must be built into a fresh "
            "directory so that nothing else ends up in the uploaded asset"
        )
    modules = scoring_modules()
    root = _source_root()
    files = {SCORING_SCRIPT: modules["mlrelease.serving.azureml_score"]}
    for name, path in modules.items():
        if name == "mlrelease.serving.azureml_score":
            continue  # it runs as the top-level script; a second copy would be a second module
        files[path.relative_to(root).as_posix()] = path
    dst_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dst_dir, _DIR_MODE)
    for relative in sorted(files):
        target = dst_dir / relative
        for parent in reversed(target.relative_to(dst_dir).parents[:-1]):
            directory = dst_dir / parent
            if not directory.is_dir():
                directory.mkdir()
                os.chmod(directory, _DIR_MODE)
        shutil.copyfile(files[relative], target)
        os.chmod(target, _FILE_MODE)
    logging_config = dst_dir / LOGGING_CONFIG_FILE
    logging_config.write_text(json.dumps(LOGGING_CONFIG, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.chmod(logging_config, _FILE_MODE)
    return dst_dir


def code_files(code_dir: Path) -> list[str]:
    """The asset's files as sorted POSIX paths relative to ``code_dir``, skipping ``__pycache__``."""
    code_dir = Path(code_dir)
    return sorted(
        path.relative_to(code_dir).as_posix()
        for path in code_dir.rglob("*")
        if path.is_file() and "__pycache__" not in path.relative_to(code_dir).parts
    )


def code_digest(code_dir: Path) -> str:
    """sha256 of the asset: each file's relative path and the sha256 of its bytes, in path order.

    ``__pycache__`` is left out: an interpreter that imported the code may have written it, and it
    is not part of what was built (``build_scoring_code`` never writes one).
    """
    code_dir = Path(code_dir)
    if not code_dir.is_dir():
        raise FileNotFoundError(
            f"scoring code directory {code_dir} does not exist; build it with build_scoring_code"
        )
    digest = hashlib.sha256()
    for relative in code_files(code_dir):
        file_hash = hashlib.sha256((code_dir / relative).read_bytes()).hexdigest()
        digest.update(f"{relative}\0{file_hash}\n".encode())
    return digest.hexdigest()
