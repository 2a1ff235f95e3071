"""The training package's boundaries and the tag contract it writes (no Spark session needed).

``mlrelease.training`` runs on a Databricks cluster that installs only this package's wheel next to
PySpark and MLflow, and everything else in ``mlrelease`` must stay importable without Spark: both are
import-graph properties, checked here on the source.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlrelease import tags

PACKAGE_DIR = Path(__file__).resolve().parents[3] / "src" / "mlrelease"
TRAINING_DIR = PACKAGE_DIR / "training"
# What a Databricks cluster has besides the wheel: PySpark, MLflow and their own dependencies.
CLUSTER_PACKAGES = frozenset({"pyspark", "mlflow", "numpy", "pandas"})


def module_path(module: str) -> Path | None:
    """The source file of an ``mlrelease`` module, or None when it is not one."""
    parts = module.split(".")
    if parts[0] != "mlrelease":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def import_time_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: everything outside function bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from import_time_nodes(node)


def imported_modules(path: Path) -> set[str]:
    """Modules a file imports at import time, with ``from a import b`` also naming ``a.b``."""
    found: set[str] = set()
    for node in import_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:  # relative: resolve against this module's package
            package = module_name(path).split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base == "__future__":
            continue
        found.add(base)
        found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def with_parents(module: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(start: list[str]) -> tuple[set[str], set[str]]:
    """(mlrelease modules run, top-level external packages imported) when importing ``start``."""
    seen: set[str] = set()
    external: set[str] = set()
    todo = [parent for module in start for parent in with_parents(module)]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        path = module_path(module)
        if path is None:
            if module.split(".")[0] != "mlrelease":
                external.add(module.split(".")[0])
            continue  # ``from mlrelease.x import NAME`` where NAME is not a module
        seen.add(module)
        for imported in imported_modules(path):
            todo.extend(with_parents(imported))
    return seen, external


TRAINING_MODULES = sorted(module_name(path) for path in TRAINING_DIR.glob("*.py"))


def test_training_needs_only_what_a_spark_cluster_has():
    """The job imports nothing a Databricks cluster with the wheel lacks (no Airflow, FastAPI, ...)."""
    assert "mlrelease.training.run" in TRAINING_MODULES
    package_modules, external = import_closure(TRAINING_MODULES)
    not_on_cluster = external - CLUSTER_PACKAGES - set(sys.stdlib_module_names)
    assert not not_on_cluster, (
        f"mlrelease.training imports {sorted(not_on_cluster)} at import time (through "
        f"{sorted(package_modules)}); the training job runs where only PySpark, MLflow and this wheel are"
    )
    assert "mlrelease.backends.base" in package_modules  # redact_uri: shared, not copied
    assert "mlrelease.tags" in package_modules


@pytest.mark.parametrize(
    "path",
    sorted(p for p in PACKAGE_DIR.rglob("*.py") if TRAINING_DIR not in p.parents),
    ids=lambda p: str(p.relative_to(PACKAGE_DIR)),
)
def test_no_other_module_imports_training_at_import_time(path: Path):
    """Importing the rest of the package must never start loading PySpark."""
    training = [
        m for m in imported_modules(path) if m == "mlrelease.training" or m.startswith("mlrelease.training.")
    ]
    assert not training, f"{path.name} imports {training} at import time; import it inside the function"


def test_tags_module_is_pure_and_every_name_is_distinct():
    tree = ast.parse(Path(tags.__file__).read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert [getattr(node, "module", None) for node in imports] == ["__future__"]
    constants = {name: value for name, value in vars(tags).items() if name.isupper()}
    assert all(isinstance(value, str) for value in constants.values())
    tag_names = {name: value for name, value in constants.items() if name.startswith("TAG_")}
    assert len(set(tag_names.values())) == len(tag_names), "two constants name the same tag"
    for name, value in tag_names.items():
        assert value.startswith(("mlrelease.", "mlflow.", "spark.")), name


# What runs and model versions already stored carry: a test fails before a rename orphans them.
STORED_CONTRACT = {
    "RESULT_PREFIX": "MLRELEASE_RESULT ",
    "MODEL_ARTIFACT_NAME": "model",
    "PORTABLE_ARTIFACT_DIR": "portable",
    "PORTABLE_MODEL_FILE": "portable_model.json",
    "HOLDOUT_PREDICTIONS_FILE": "holdout_predictions.json",
    "PORTABLE_MODEL_ARTIFACT": "portable/portable_model.json",
    "HOLDOUT_PREDICTIONS_ARTIFACT": "portable/holdout_predictions.json",
    "TAG_PARENT_RUN_ID": "mlflow.parentRunId",
    "TAG_ROLE": "mlrelease.role",
    "ROLE_PARENT": "parent",
    "TAG_TRAINING_KEY": "mlrelease.training_key",
    "TAG_VALIDATION_FRACTION": "mlrelease.validation_fraction",
    "TAG_SEED": "mlrelease.seed",
    "TAG_CHAMPION_MODEL_URI": "mlrelease.champion.model_uri",
    "TAG_CHAMPION_VERSION": "mlrelease.champion.version",
    "TAG_SPARK_VERSION": "spark.version",
    "TAG_SPARK_APPLICATION_ID": "spark.application_id",
    "TAG_SPARK_MASTER": "spark.master",
    "TAG_CANDIDATE": "mlrelease.candidate",
    "TAG_ALGORITHM": "mlrelease.algorithm",
    "TAG_MODEL_URI": "mlrelease.model_uri",
    "TAG_PORTABLE_MODEL_URI": "mlrelease.portable_model_uri",
    "TAG_HOLDOUT_PREDICTIONS_URI": "mlrelease.holdout_predictions_uri",
    "TAG_CANDIDATES": "mlrelease.candidates",
    "TAG_COMPUTE_RUN_BACKEND": "mlrelease.compute.backend",
    "TAG_COMPUTE_RUN_ID": "mlrelease.compute.run_id",
    "TAG_COMPUTE_RUN_URL": "mlrelease.compute.run_url",
    "TAG_SELECTION_METRIC": "mlrelease.selection_metric",
    "TAG_WINNER_CANDIDATE": "mlrelease.winner.candidate",
    "TAG_WINNER_RUN_ID": "mlrelease.winner.run_id",
    "TAG_GATE_MODE": "mlrelease.gate.mode",
    "TAG_GATE_APPROVED": "mlrelease.gate.approved",
    "TAG_GATE_CHECKS_PASSED": "mlrelease.gate.checks_passed",
    "TAG_GATE_DECISION_JSON": "mlrelease.gate.decision_json",
    "TAG_REGISTERED_VERSION": "mlrelease.registered_version",
    "TAG_DATASET_SHA256": "mlrelease.dataset.sha256",
    "TAG_DATASET_SOURCE": "mlrelease.dataset.source",
    "TAG_DATASET_TRAIN_URI": "mlrelease.dataset.train_uri",
    "TAG_DATASET_TRAIN_SHA256": "mlrelease.dataset.train_sha256",
    "TAG_DATASET_TRAIN_ROWS": "mlrelease.dataset.train_rows",
    "TAG_DATASET_HOLDOUT_URI": "mlrelease.dataset.holdout_uri",
    "TAG_DATASET_HOLDOUT_SHA256": "mlrelease.dataset.holdout_sha256",
    "TAG_DATASET_HOLDOUT_ROWS": "mlrelease.dataset.holdout_rows",
    "TAG_GIT_COMMIT": "mlrelease.git.commit",
    "TAG_GIT_DIRTY": "mlrelease.git.dirty",
    "TAG_AIRFLOW_DAG_ID": "mlrelease.airflow.dag_id",
    "TAG_AIRFLOW_RUN_ID": "mlrelease.airflow.run_id",
    "TAG_AIRFLOW_RUN_TYPE": "mlrelease.airflow.run_type",
    "TAG_AIRFLOW_TRY_NUMBER": "mlrelease.airflow.try_number",
    "TAG_TRIGGERED_BY": "mlrelease.triggered_by",
    "TAG_PARAMS": "mlrelease.params",
    "TAG_LINEAGE_PARENT_RUN_ID": "mlrelease.parent_run_id",
    "TAG_LINEAGE_CHILD_RUN_ID": "mlrelease.child_run_id",
    "TAG_GATE_REASON": "mlrelease.gate.reason",
    "TAG_TRAINING_STARTED_AT": "mlrelease.training.started_at",
    "TAG_TRAINING_FINISHED_AT": "mlrelease.training.finished_at",
    "TAG_REGISTERED_AT": "mlrelease.registered_at",
    "TAG_METRICS_PREFIX": "mlrelease.metrics.",
    "TAG_PREFIX": "mlrelease.",
}


def test_stored_tag_names_and_artifact_paths_do_not_change():
    """Adding a name is fine; changing a stored one needs a migration of the stored tags first."""
    constants = {name: value for name, value in vars(tags).items() if name.isupper()}
    changed = {
        name: (expected, constants.get(name))
        for name, expected in STORED_CONTRACT.items()
        if constants.get(name) != expected
    }
    assert not changed, f"stored tag names or artifact paths changed (expected, now): {changed}"
    assert tags.PORTABLE_MODEL_ARTIFACT == f"{tags.PORTABLE_ARTIFACT_DIR}/{tags.PORTABLE_MODEL_FILE}"
    assert (
        tags.HOLDOUT_PREDICTIONS_ARTIFACT == f"{tags.PORTABLE_ARTIFACT_DIR}/{tags.HOLDOUT_PREDICTIONS_FILE}"
    )
