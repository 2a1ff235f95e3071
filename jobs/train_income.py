"""Train candidate classifiers for the UCI Adult income task and log each as an MLflow child run.

The Spark entrypoint of the pipeline, and nothing more: the code lives in ``mlrelease.training``
(features, estimators, evaluation, the portable export, and ``run``, which drives MLflow and holds this
CLI). The same file runs under a local ``spark-submit`` (``mlrelease.backends.local.spark``) and as a
Databricks ``spark_python_task``, whose cluster installs this package's wheel. It needs PySpark, MLflow,
the standard library and ``mlrelease``; it never imports Airflow.

The orchestrator talks to it only through the CLI below, the MLflow tracking server (an existing parent
run it logs under, with the tag names of ``mlrelease.tags``) and one ``MLRELEASE_RESULT`` line printed
to stdout (optionally also written to ``--result-path``).

Usage::

    spark-submit jobs/train_income.py \\
        --train-path /data/adult_train.parquet --test-path /data/adult_test.parquet \\
        --candidates-json '[{"name": "lr_reg_0.01", "algorithm": "LogisticRegression",
                             "params": {"regParam": 0.01, "maxIter": 100}}]' \\
        --tracking-uri sqlite:////abs/path/mlflow.db --parent-run-id <run id> \\
        [--validation-fraction 0.2] [--seed 42] \\
        [--champion-model-uri models:/income@prod --champion-version 3] \\
        [--result-path /tmp/result.json] [--master local[2]]
"""

from __future__ import annotations

import sys

try:
    from mlrelease.training.run import main
except ModuleNotFoundError as exc:
    if exc.name != "mlrelease":
        raise
    raise ModuleNotFoundError(
        "jobs/train_income.py needs the mlrelease package on the Spark driver: locally run it with the "
        "project's Python (make venv; spark-submit picks it through PYSPARK_PYTHON), on Databricks add "
        "the mlrelease wheel to the task's libraries",
        name=exc.name,
    ) from exc

if __name__ == "__main__":
    sys.exit(main())
