"""Benchmark: prepare features once and cache them (what the training job does) vs. per candidate.

The training job (jobs/train_income.py, code in mlrelease.training) fits the feature pipeline (imputer,
indexers, one-hot encoder, assembler) once on the training split, caches the transformed
train/validation/test frames, and fits every candidate on them.
The baseline, in the same Spark session and run, fits a full Pipeline(features + classifier) per
candidate from the raw, uncached data, as a naive job would. Both must give the same metrics; the
table shows the wall time of each and the ratio.

    make venv && .venv/bin/python benchmarks/bench_feature_caching.py [--candidates a,b,...] [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import time

from mlrelease.training.estimators import make_estimator
from mlrelease.training.evaluation import evaluate
from mlrelease.training.features import (
    add_label,
    build_feature_stages,
    prepare_features,
    split_train_validation,
)

DEFAULT = "lr_reg_0.01,lr_reg_0.5,dt_depth_5,dt_depth_10,rf_100_depth_8"


def local_spark(master: str):
    """A quiet local session without the UI, as both benchmarks use."""
    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(master)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def cached_once(candidates, train_raw, validation_raw, test_raw, seed):
    started = time.perf_counter()
    _, frames = prepare_features(train_raw, validation_raw, test_raw)
    for frame in frames:
        frame.count()
    results = {}
    for candidate in candidates:
        model = make_estimator(candidate, seed=seed).fit(frames[0])
        results[candidate["name"]] = (
            evaluate(model.transform(frames[1]))["areaUnderROC"],
            evaluate(model.transform(frames[2]))["areaUnderROC"],
        )
    for frame in frames:
        frame.unpersist()
    return time.perf_counter() - started, results


def per_candidate(candidates, train_raw, validation_raw, test_raw, seed):
    from pyspark.ml import Pipeline

    started = time.perf_counter()
    results = {}
    for candidate in candidates:
        model = Pipeline(stages=[*build_feature_stages(), make_estimator(candidate, seed=seed)]).fit(
            train_raw
        )
        results[candidate["name"]] = (
            evaluate(model.transform(validation_raw))["areaUnderROC"],
            evaluate(model.transform(test_raw))["areaUnderROC"],
        )
    return time.perf_counter() - started, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=DEFAULT)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from mlrelease.data.prepare import prepare_dataset
    from mlrelease.domain.candidates import resolve_candidates
    from mlrelease.settings import load_settings

    candidates = [c.to_dict() for c in resolve_candidates(args.candidates.split(","))]
    prepared = prepare_dataset(load_settings().data_cache_dir)
    spark = local_spark(args.master)
    raw = add_label(spark.read.parquet(str(prepared.train_path)))
    test_raw = add_label(spark.read.parquet(str(prepared.holdout_path)))
    train_raw, validation_raw = split_train_validation(raw, 0.2, args.seed)

    # Warm-up: JIT and class loading would otherwise be charged to whichever approach runs first.
    cached_once(candidates[:1], train_raw, validation_raw, test_raw, args.seed)
    baseline_s, baseline = per_candidate(candidates, train_raw, validation_raw, test_raw, args.seed)
    cached_s, cached = cached_once(candidates, train_raw, validation_raw, test_raw, args.seed)
    spark.stop()

    mismatched = [n for n in baseline if abs(baseline[n][0] - cached[n][0]) > 1e-9]
    print(
        f"\n{len(candidates)} candidates on {prepared.fingerprint['train']['rows']} Adult rows, master {args.master}"
    )
    print(f"{'approach':<44} {'seconds':>8} {'per candidate':>14} {'vs baseline':>12}")
    print("-" * 81)
    for label, seconds in (
        ("baseline: full pipeline per candidate", baseline_s),
        ("features fitted once, cached (the job)", cached_s),
    ):
        print(
            f"{label:<44} {seconds:>8.1f} {seconds / len(candidates):>14.1f} {baseline_s / seconds:>11.2f}x"
        )
    print(
        f"\nsame validation AUC for every candidate: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}"
    )
    return 1 if mismatched else 0


if __name__ == "__main__":
    raise SystemExit(main())
