"""A local Spark session per test module; a module sets SPARK_CORES / SPARK_PARTITIONS to size it."""

from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
# py4j logs "Closing down clientserver connection" at interpreter exit, after pytest has closed its
# log handlers, which prints a "--- Logging error ---" traceback at the end of every run.
logging.getLogger("py4j").setLevel(logging.WARNING)


@pytest.fixture(scope="module")
def spark(request):
    from pyspark.sql import SparkSession

    cores = getattr(request.module, "SPARK_CORES", 1)
    session = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(request.module.__name__)
        .config("spark.sql.shuffle.partitions", str(getattr(request.module, "SPARK_PARTITIONS", 2)))
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
