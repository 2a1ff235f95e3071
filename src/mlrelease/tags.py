"""MLflow tag names, artifact paths and the result-line prefix shared by the training job and the orchestrator.

These strings are a stored contract, not just code: they are written onto MLflow runs and registered
model versions and searched for later (``tags.`mlrelease.role` = 'parent'``, the child runs of a parent,
a version's lineage). Renaming one orphans every run and version already stored under the old name, so
change a value only together with a migration of the stored tags. Adding a name is safe.

A pure module (no imports): the Spark job, the Airflow tasks, the backends and the CLI can all import
it without pulling anything else in.
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------
# The job's result, on stdout and in --result-path
# --------------------------------------------------------------------------------------------------
# The one stdout line the orchestrator parses: this prefix, then the result as compact JSON.
RESULT_PREFIX = "MLRELEASE_RESULT "

# --------------------------------------------------------------------------------------------------
# Artifacts of a candidate's child run
# --------------------------------------------------------------------------------------------------
MODEL_ARTIFACT_NAME = "model"  # the Spark PipelineModel (mlflow.spark flavour)
PORTABLE_ARTIFACT_DIR = "portable"
PORTABLE_MODEL_FILE = "portable_model.json"  # the JVM-free export, scored by mlrelease.serving.portable
HOLDOUT_PREDICTIONS_FILE = "holdout_predictions.json"  # held-out records with Spark's own predictions
PORTABLE_MODEL_ARTIFACT = f"{PORTABLE_ARTIFACT_DIR}/{PORTABLE_MODEL_FILE}"
HOLDOUT_PREDICTIONS_ARTIFACT = f"{PORTABLE_ARTIFACT_DIR}/{HOLDOUT_PREDICTIONS_FILE}"

# --------------------------------------------------------------------------------------------------
# Run hierarchy
# --------------------------------------------------------------------------------------------------
TAG_PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: makes a run a child (nested) run
TAG_ROLE = "mlrelease.role"  # on the parent (training) run, with the value ROLE_PARENT
ROLE_PARENT = "parent"
# Deterministic per DAG run, so a retried task finds its parent run; also on the model version.
TAG_TRAINING_KEY = "mlrelease.training_key"

# --------------------------------------------------------------------------------------------------
# Written by the training job (jobs/train_income.py, mlrelease.training)
# --------------------------------------------------------------------------------------------------
# On the parent run
TAG_VALIDATION_FRACTION = "mlrelease.validation_fraction"
TAG_SEED = "mlrelease.seed"
TAG_CHAMPION_MODEL_URI = "mlrelease.champion.model_uri"
TAG_CHAMPION_VERSION = "mlrelease.champion.version"
TAG_SPARK_VERSION = "spark.version"
TAG_SPARK_APPLICATION_ID = "spark.application_id"
TAG_SPARK_MASTER = "spark.master"
# On each candidate's child run (TAG_CANDIDATE and TAG_ALGORITHM are copied onto the model version)
TAG_CANDIDATE = "mlrelease.candidate"
TAG_ALGORITHM = "mlrelease.algorithm"
TAG_MODEL_URI = "mlrelease.model_uri"
# On a registry that is not MLflow (Azure ML): the MLflow URI of the version's Spark model, which the
# training job loads to score the champion.
TAG_SOURCE_MODEL_URI = "mlrelease.source_model_uri"
TAG_PORTABLE_MODEL_URI = "mlrelease.portable_model_uri"
TAG_HOLDOUT_PREDICTIONS_URI = "mlrelease.holdout_predictions_uri"

# --------------------------------------------------------------------------------------------------
# Written by the orchestrator on the parent run
# --------------------------------------------------------------------------------------------------
TAG_CANDIDATES = "mlrelease.candidates"  # JSON list of the candidate names submitted
# The compute run that trained the candidates (a local Spark application, a Databricks run). The
# backend is set already when the parent run is created, so a training that fails still says where it
# ran; run id and URL once the compute run is known. Older parent runs also carry
# "mlrelease.compute_backend" with the same value; nothing writes or reads that name any more.
TAG_COMPUTE_RUN_BACKEND = "mlrelease.compute.backend"
TAG_COMPUTE_RUN_ID = "mlrelease.compute.run_id"
TAG_COMPUTE_RUN_URL = "mlrelease.compute.run_url"
TAG_SELECTION_METRIC = "mlrelease.selection_metric"
TAG_WINNER_CANDIDATE = "mlrelease.winner.candidate"
TAG_WINNER_RUN_ID = "mlrelease.winner.run_id"
TAG_GATE_MODE = "mlrelease.gate.mode"  # also on the model version
TAG_GATE_APPROVED = "mlrelease.gate.approved"
TAG_GATE_CHECKS_PASSED = "mlrelease.gate.checks_passed"  # also on the model version
TAG_GATE_DECISION_JSON = "mlrelease.gate.decision_json"
TAG_REGISTERED_VERSION = "mlrelease.registered_version"

# --------------------------------------------------------------------------------------------------
# Lineage: on the parent run and copied onto the registered model version
# --------------------------------------------------------------------------------------------------
# Dataset
TAG_DATASET_SHA256 = "mlrelease.dataset.sha256"
TAG_DATASET_SOURCE = "mlrelease.dataset.source"
TAG_DATASET_TRAIN_URI = "mlrelease.dataset.train_uri"
TAG_DATASET_TRAIN_SHA256 = "mlrelease.dataset.train_sha256"
TAG_DATASET_TRAIN_ROWS = "mlrelease.dataset.train_rows"
TAG_DATASET_HOLDOUT_URI = "mlrelease.dataset.holdout_uri"
TAG_DATASET_HOLDOUT_SHA256 = "mlrelease.dataset.holdout_sha256"
TAG_DATASET_HOLDOUT_ROWS = "mlrelease.dataset.holdout_rows"
# Code
TAG_GIT_COMMIT = "mlrelease.git.commit"
TAG_GIT_DIRTY = "mlrelease.git.dirty"
# Airflow run and who triggered it
TAG_AIRFLOW_DAG_ID = "mlrelease.airflow.dag_id"
TAG_AIRFLOW_RUN_ID = "mlrelease.airflow.run_id"
TAG_AIRFLOW_RUN_TYPE = "mlrelease.airflow.run_type"
TAG_AIRFLOW_TRY_NUMBER = "mlrelease.airflow.try_number"
TAG_TRIGGERED_BY = "mlrelease.triggered_by"

# --------------------------------------------------------------------------------------------------
# Lineage only on the registered model version
# --------------------------------------------------------------------------------------------------
TAG_PARAMS = "mlrelease.params"  # the winner's params as sorted JSON
# The training runs, as plain tags: unlike TAG_PARENT_RUN_ID these sit on a model version, not a run.
TAG_LINEAGE_PARENT_RUN_ID = "mlrelease.parent_run_id"
TAG_LINEAGE_CHILD_RUN_ID = "mlrelease.child_run_id"
TAG_GATE_REASON = "mlrelease.gate.reason"
TAG_TRAINING_STARTED_AT = "mlrelease.training.started_at"
TAG_TRAINING_FINISHED_AT = "mlrelease.training.finished_at"
TAG_REGISTERED_AT = "mlrelease.registered_at"
# One tag per winner metric: TAG_METRICS_PREFIX + "test_areaUnderROC", ...
TAG_METRICS_PREFIX = "mlrelease.metrics."

# Every tag of this project but MLflow's and Spark's starts with this.
TAG_PREFIX = "mlrelease."
