"""Spark training for the Adult income task: the code behind ``jobs/train_income.py``.

The job file is a thin entrypoint; everything it does lives here so it can be tested and reused:

* :mod:`~mlrelease.training.features`: label, clean-up SQL and the feature stages, fitted once per run;
* :mod:`~mlrelease.training.estimators`: the candidate classifiers and their validation;
* :mod:`~mlrelease.training.evaluation`: the binary metrics logged for every candidate;
* :mod:`~mlrelease.training.portable_export`: the JVM-free model export and the held-out predictions;
* :mod:`~mlrelease.training.run`: MLflow runs, idempotent retries, the CLI (``main``).

These modules import PySpark and MLflow at module level: they only run where Spark is (the job under
``spark-submit`` or on a Databricks cluster that installs this package's wheel, the Spark tests and the
benchmarks). So nothing else in ``mlrelease`` imports them at import time, and they depend only on
PySpark, MLflow, the standard library and light, stdlib-only modules of this package
(``tests/unit/training/test_package.py`` checks both).
"""
