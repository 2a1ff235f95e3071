"""Drive one training application: the CLI, the MLflow runs, and the result the orchestrator reads.

The orchestrator talks to the job only through the CLI (:func:`build_arg_parser`), the MLflow tracking
server (an existing parent run the job logs under, with the tag names of :mod:`mlrelease.tags`) and one
``MLRELEASE_RESULT`` line printed to stdout (optionally also written to ``--result-path``).

* The feature stages are fitted once, on the training split only; the transformed train / validation /
  test frames are cached and shared by all candidates, which are fitted one after the other inside this
  one Spark application.
* Retries are idempotent: a candidate whose child run already FINISHED under the parent is reused, any
  other child run of that candidate (RUNNING after a crash, FAILED, KILLED) is soft-deleted and refitted.
* Every child run gets the Spark model, its JVM-free copy and Spark's predictions for the first held-out
  records (:mod:`mlrelease.training.portable_export`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import mlflow.spark
import pyspark
from mlflow.entities import Run, RunStatus, ViewType
from mlflow.tracking import MlflowClient
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession

from mlrelease.backends.base import redact_uri
from mlrelease.tags import (
    HOLDOUT_PREDICTIONS_ARTIFACT,
    MODEL_ARTIFACT_NAME,
    PORTABLE_MODEL_ARTIFACT,
    RESULT_PREFIX,
    TAG_ALGORITHM,
    TAG_CANDIDATE,
    TAG_CHAMPION_MODEL_URI,
    TAG_CHAMPION_VERSION,
    TAG_HOLDOUT_PREDICTIONS_URI,
    TAG_MODEL_URI,
    TAG_PARENT_RUN_ID,
    TAG_PORTABLE_MODEL_URI,
    TAG_SEED,
    TAG_SPARK_APPLICATION_ID,
    TAG_SPARK_MASTER,
    TAG_SPARK_VERSION,
    TAG_VALIDATION_FRACTION,
)
from mlrelease.training.estimators import make_estimator, parse_candidates
from mlrelease.training.evaluation import evaluate
from mlrelease.training.features import add_label, prepare_features, split_train_validation
from mlrelease.training.portable_export import (
    HOLDOUT_PREDICTIONS_FORMAT,
    export_portable,
    holdout_sample,
    spark_predictions,
)

# The job's log name (not __name__): the local Spark runner echoes lines by it into the Airflow task log.
logger = logging.getLogger("mlrelease.jobs.train_income")


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train Adult income candidates and log them to MLflow.")
    parser.add_argument("--train-path", required=True, help="parquet with adult.data (split into train/val)")
    parser.add_argument("--test-path", required=True, help="parquet with the held-out adult.test")
    parser.add_argument("--candidates-json", required=True, help="JSON list of candidates, or @file")
    parser.add_argument("--tracking-uri", required=True, help="MLflow tracking URI")
    parser.add_argument("--parent-run-id", required=True, help="existing MLflow run to log under")
    parser.add_argument("--validation-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--champion-model-uri", default=None, help="MLflow URI of the production model")
    parser.add_argument("--champion-version", default=None, help="registry version of the champion")
    parser.add_argument("--result-path", default=None, help="also write the result JSON here")
    parser.add_argument("--master", default=None, help="Spark master (spark-submit normally sets it)")
    return parser


def get_spark(master: str | None) -> tuple[SparkSession, bool]:
    """Return (session, created_here). Never overrides a master or a conf given by spark-submit."""
    created = SparkSession.getActiveSession() is None
    builder = SparkSession.builder.appName("mlrelease-train-income")
    if master:
        builder = builder.master(master)
    spark = builder.getOrCreate()
    submitted_conf = spark.sparkContext.getConf()
    if spark.sparkContext.master.startswith("local"):
        # Small data on a laptop: the 200-partition default only adds scheduling overhead.
        for key, value in {"spark.sql.shuffle.partitions": "8"}.items():
            if not submitted_conf.contains(key):
                spark.conf.set(key, value)
    return spark, created


# --------------------------------------------------------------------------------------------------
# Child runs: reuse on retry, fit, log
# --------------------------------------------------------------------------------------------------


def _list_children(client: MlflowClient, experiment_id: str, parent_run_id: str) -> list[Run]:
    runs: list[Run] = []
    page_token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{TAG_PARENT_RUN_ID}` = '{parent_run_id}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def resolve_existing_children(
    client: MlflowClient, experiment_id: str, parent_run_id: str, candidate_names: Sequence[str]
) -> dict[str, Run]:
    """Return {candidate: finished child run to reuse}; soft-delete unfinished children of candidates."""
    wanted = set(candidate_names)
    reusable: dict[str, Run] = {}
    for run in _list_children(client, experiment_id, parent_run_id):  # newest first
        name = run.data.tags.get(TAG_CANDIDATE)
        if name not in wanted:
            continue
        finished = run.info.status == RunStatus.to_string(RunStatus.FINISHED)
        if finished and run.data.tags.get(TAG_MODEL_URI) and name not in reusable:
            reusable[name] = run
        elif finished and name in reusable:
            logger.warning(
                "candidate %s has another finished child run %s; reusing the newest %s",
                name,
                run.info.run_id,
                reusable[name].info.run_id,
            )
        else:
            logger.info(
                "deleting child run %s (status %s) of candidate %s; it will be refitted",
                run.info.run_id,
                run.info.status,
                name,
            )
            client.delete_run(run.info.run_id)
    return reusable


def _log_model(model: PipelineModel) -> str:
    # No signature on purpose: the raw numerics arrive as int64 or as float (NaN for missing), and a pyfunc
    # signature of either type makes MLflow reject the other ("Can not safely convert int64 to float64").
    # The model's own SQLTransformer casts whatever it gets, so scoring stays lenient without one.
    kwargs: dict[str, Any] = {
        # Explicit requirements skip MLflow's inference, which reloads the model in a subprocess.
        "pip_requirements": [f"pyspark=={pyspark.__version__}", f"mlflow=={mlflow.__version__}"],
    }
    # MLflow 3.x flavors take ``name=``; mlflow.spark.log_model (3.17) still only takes artifact_path.
    if "name" in inspect.signature(mlflow.spark.log_model).parameters:
        kwargs["name"] = MODEL_ARTIFACT_NAME
    else:
        kwargs["artifact_path"] = MODEL_ARTIFACT_NAME
    return mlflow.spark.log_model(model, **kwargs).model_uri


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()}


@dataclass(frozen=True)
class SharedInputs:
    """What every candidate of one application is fitted and checked on, prepared once.

    ``holdout_records`` come from :func:`holdout_sample` (the same for every candidate) and
    ``holdout_frame`` holds exactly those records, for Spark's own predictions.
    """

    feature_model: PipelineModel
    train: DataFrame
    validation: DataFrame
    test: DataFrame
    holdout_records: list[dict[str, Any]]
    holdout_frame: DataFrame


def _log_portable(model: PipelineModel, run_id: str, inputs: SharedInputs) -> float:
    """Log the portable export and the holdout predictions on the active child run; return the export time."""
    started = time.monotonic()
    portable = export_portable(model, inputs.holdout_frame.sparkSession.version)
    export_seconds = time.monotonic() - started
    holdout = {
        "format": HOLDOUT_PREDICTIONS_FORMAT,
        "records": inputs.holdout_records,
        "predictions": spark_predictions(model, inputs.holdout_frame),
    }
    portable_uris = {}
    for tag, artifact, document in (
        (TAG_PORTABLE_MODEL_URI, PORTABLE_MODEL_ARTIFACT, portable),
        (TAG_HOLDOUT_PREDICTIONS_URI, HOLDOUT_PREDICTIONS_ARTIFACT, holdout),
    ):
        mlflow.log_text(json.dumps(document, separators=(",", ":"), allow_nan=False), artifact)
        portable_uris[tag] = f"runs:/{run_id}/{artifact}"
    mlflow.set_tags(portable_uris)
    return export_seconds


def fit_candidate(
    candidate: dict[str, Any], seed: int, experiment_id: str, inputs: SharedInputs
) -> dict[str, Any]:
    """Fit one candidate in its own nested child run of the active parent run; return its result.

    Besides the Spark model, the child run gets ``portable/portable_model.json`` (:func:`export_portable`)
    and ``portable/holdout_predictions.json``: ``inputs.holdout_records`` with Spark's own predictions.
    """
    name = candidate["name"]
    algorithm = candidate["algorithm"]
    estimator = make_estimator(candidate, seed=seed)
    tags = {TAG_CANDIDATE: name, TAG_ALGORITHM: algorithm}
    with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id, tags=tags) as child:
        run_id = child.info.run_id
        mlflow.log_params({"algorithm": algorithm, **(candidate.get("params") or {})})
        started = time.monotonic()
        classifier = estimator.fit(inputs.train)
        fit_seconds = time.monotonic() - started
        val_metrics = evaluate(classifier.transform(inputs.validation))
        test_metrics = evaluate(classifier.transform(inputs.test))
        mlflow.log_metrics(
            {**_prefixed("val_", val_metrics), **_prefixed("test_", test_metrics), "fit_seconds": fit_seconds}
        )
        model = PipelineModel(stages=list(inputs.feature_model.stages) + [classifier])
        model_uri = _log_model(model)
        mlflow.set_tag(TAG_MODEL_URI, model_uri)
        started = time.monotonic()
        export_seconds = _log_portable(model, run_id, inputs)
        portable_seconds = time.monotonic() - started
    logger.info(
        "candidate %s: child run %s, fit %.1fs, val AUC %.4f, test AUC %.4f, portable export %.2fs "
        "(+ %d holdout predictions: %.2fs in all)",
        name,
        run_id,
        fit_seconds,
        val_metrics["areaUnderROC"],
        test_metrics["areaUnderROC"],
        export_seconds,
        len(inputs.holdout_records),
        portable_seconds,
    )
    return {
        "candidate": name,
        "run_id": run_id,
        "algorithm": algorithm,
        "reused": False,
        "model_uri": model_uri,
    }


def _reused_child(candidate: dict[str, Any], run: Run) -> dict[str, Any]:
    logger.info("reusing child run %s for candidate %s", run.info.run_id, candidate["name"])
    return {
        "candidate": candidate["name"],
        "run_id": run.info.run_id,
        "algorithm": run.data.tags.get(TAG_ALGORITHM, candidate["algorithm"]),
        "reused": True,
        "model_uri": run.data.tags[TAG_MODEL_URI],
    }


def _fit_candidates(
    to_fit: list[dict[str, Any]],
    args: argparse.Namespace,
    raw_train: DataFrame,
    raw_test: DataFrame,
    experiment_id: str,
) -> list[dict[str, Any]]:
    """Prepare the shared features once, fit every candidate on them, and release the cached frames.

    ``raw_train`` is split into the training and validation parts; ``raw_test`` is the held-out data.
    """
    train_split, validation_split = split_train_validation(raw_train, args.validation_fraction, args.seed)
    feature_model, frames = prepare_features(train_split, validation_split, raw_test)
    holdout_records, holdout_frame = holdout_sample(raw_test)
    inputs = SharedInputs(feature_model, *frames, holdout_records, holdout_frame)
    logger.info(
        "features: %s train, %s validation, %s test rows",
        inputs.train.count(),
        inputs.validation.count(),
        inputs.test.count(),
    )
    try:
        return [fit_candidate(candidate, args.seed, experiment_id, inputs) for candidate in to_fit]
    finally:
        for frame in (*frames, holdout_frame):
            frame.unpersist()


# --------------------------------------------------------------------------------------------------
# The application
# --------------------------------------------------------------------------------------------------


def evaluate_champion(model_uri: str, version: str | None, test_raw: DataFrame) -> dict[str, float]:
    """Score raw held-out records with the current production model; RuntimeError if that fails."""
    try:
        champion = mlflow.spark.load_model(model_uri)
        metrics = evaluate(champion.transform(test_raw))
    except Exception as exc:
        raise RuntimeError(
            f"could not load or score the champion model {model_uri!r} (version {version!r}): {exc}. "
            "Check that this model version exists and is a Spark PipelineModel logged by this job, "
            "or move the registry alias 'prod' to a valid version."
        ) from exc
    logger.info("champion %s (version %s): test AUC %.4f", model_uri, version, metrics["areaUnderROC"])
    return metrics


def _log_champion(args: argparse.Namespace, raw_test: DataFrame) -> dict[str, Any]:
    """Re-score the champion on this run's held-out data and record it on the parent run."""
    metrics = evaluate_champion(args.champion_model_uri, args.champion_version, raw_test)
    mlflow.log_metrics(_prefixed("champion_test_", metrics))
    mlflow.set_tags(
        {TAG_CHAMPION_MODEL_URI: args.champion_model_uri, TAG_CHAMPION_VERSION: str(args.champion_version)}
    )
    return {"version": args.champion_version, "metrics": metrics}


def run_training(args: argparse.Namespace, spark: SparkSession, parent: Run) -> dict[str, Any]:
    """Everything between attaching to the parent run and ending it."""
    parent_run_id = parent.info.run_id
    experiment_id = parent.info.experiment_id
    sc = spark.sparkContext
    mlflow.set_tags(
        {
            TAG_SPARK_VERSION: spark.version,
            TAG_SPARK_APPLICATION_ID: sc.applicationId,
            TAG_SPARK_MASTER: sc.master,
            TAG_VALIDATION_FRACTION: str(args.validation_fraction),
            TAG_SEED: str(args.seed),
        }
    )
    candidates = parse_candidates(args.candidates_json)
    for candidate in candidates:  # fail fast, before any Spark work, on a bad candidate
        make_estimator(candidate, seed=args.seed)

    raw_train = add_label(spark.read.parquet(args.train_path)).cache()
    raw_test = add_label(spark.read.parquet(args.test_path)).cache()
    logger.info("read %s training and %s test rows", raw_train.count(), raw_test.count())
    champion = _log_champion(args, raw_test) if args.champion_model_uri else None

    names = [c["name"] for c in candidates]
    reusable = resolve_existing_children(MlflowClient(), experiment_id, parent_run_id, names)
    children = [_reused_child(c, reusable[c["name"]]) for c in candidates if c["name"] in reusable]
    to_fit = [c for c in candidates if c["name"] not in reusable]
    if to_fit:
        children += _fit_candidates(to_fit, args, raw_train, raw_test, experiment_id)
    raw_train.unpersist()
    raw_test.unpersist()

    order = {c["name"]: i for i, c in enumerate(candidates)}
    children.sort(key=lambda child: order[child["candidate"]])
    return {
        "parent_run_id": parent_run_id,
        "application_id": sc.applicationId,
        "spark_version": spark.version,
        "children": children,
        "champion": champion,
    }


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf (e.g. AUC on a one-class split) with null so the result is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job: attach to the parent run, train, end the run, print the ``MLRELEASE_RESULT`` line."""
    args = build_arg_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    mlflow.set_tracking_uri(args.tracking_uri)
    logger.info("tracking URI %s, parent run %s", redact_uri(args.tracking_uri), args.parent_run_id)
    parent = MlflowClient().get_run(args.parent_run_id)
    mlflow.start_run(run_id=args.parent_run_id)
    spark: SparkSession | None = None
    created_spark = False
    try:
        spark, created_spark = get_spark(args.master)
        result = run_training(args, spark, parent)
        payload = json.dumps(_json_safe(result), separators=(",", ":"), allow_nan=False)
        if args.result_path:
            with open(args.result_path, "w", encoding="utf-8") as handle:
                handle.write(payload + "\n")
    except BaseException:
        logger.exception("training failed; ending parent run %s as FAILED", args.parent_run_id)
        while mlflow.active_run() is not None:  # a still-open child first, then the parent
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    finally:
        # On Databricks the session belongs to the cluster: stopping it would break the next task.
        if spark is not None and created_spark and "DATABRICKS_RUNTIME_VERSION" not in os.environ:
            spark.stop()
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
    sys.stdout.write(RESULT_PREFIX + payload + "\n")
    sys.stdout.flush()
    return 0
