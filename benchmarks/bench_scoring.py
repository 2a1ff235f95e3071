"""Benchmark: score Adult records with the JVM-free portable model vs. the Spark PipelineModel it came from.

The baseline is what serving a Spark model directly would cost: ``PipelineModel.transform`` on a
DataFrame built from the request's records, in a warm local Spark session. The portable model is the
NumPy scorer the endpoints use (``mlrelease.serving.portable``), and the last row is the real scoring
service over loopback HTTP (validation, scoring, prediction-log write, JSON both ways), as a client sees
it. Batches of 1 and 1,000 held-out records; median of ``--repeats`` runs each. Both scorers must agree
(labels identical, probabilities within 1e-6) or the script exits 1.

    make venv && .venv/bin/python benchmarks/bench_scoring.py [--candidate gbt_50_depth_5] [--repeats 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_feature_caching import local_spark


def median_ms(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(document_path: Path, workdir: Path):
    """Start the real scoring service on a free loopback port, serving ``document_path``."""
    import hashlib

    import httpx

    state = workdir / "endpoint"
    state.mkdir()
    (state / "desired.json").write_text(
        json.dumps(
            {
                "model": {"name": "bench", "version": "1"},
                "release_id": "bench-release",
                "artifact": str(document_path),
                "artifact_sha256": hashlib.sha256(document_path.read_bytes()).hexdigest(),
                "lineage": {},
                "stage": "test",
                "deployed_at": "now",
            }
        )
    )
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlrelease.serving", "--endpoint", "bench", "--port", str(port)]
        + ["--state-dir", str(state), "--audit-db", str(workdir / "audit.db"), "--log-level", "warning"],
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("the scoring service did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", default="gbt_50_depth_5")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    import httpx
    import pandas as pd
    from pyspark.ml import PipelineModel

    from mlrelease.data.prepare import prepare_dataset
    from mlrelease.domain.candidates import resolve_candidates
    from mlrelease.serving.portable import PortableModel
    from mlrelease.settings import load_settings
    from mlrelease.training.estimators import make_estimator
    from mlrelease.training.features import add_label, prepare_features
    from mlrelease.training.portable_export import export_portable, holdout_sample

    candidate = resolve_candidates([args.candidate])[0].to_dict()
    prepared = prepare_dataset(load_settings().data_cache_dir)
    spark = local_spark(args.master)
    train = add_label(spark.read.parquet(str(prepared.train_path)))
    feature_model, frames = prepare_features(train, train.limit(10), train.limit(10))
    classifier = make_estimator(candidate).fit(frames[0])
    model = PipelineModel(stages=[*feature_model.stages, classifier])
    holdout = spark.read.parquet(str(prepared.holdout_path))
    records, _ = holdout_sample(holdout, 1000)
    portable = PortableModel.from_dict(export_portable(model, spark.version))

    def spark_scores(batch):
        frame = spark.createDataFrame(pd.DataFrame(batch))
        rows = model.transform(frame).select("probability", "prediction").collect()
        return [(float(r.probability[1]), r.prediction) for r in rows]

    offline = spark_scores(records)
    served = portable.score(records)
    mismatches = sum(
        (s.label == ">50K") != (p == 1.0) or abs(s.probability - q) > 1e-6
        for s, (q, p) in zip(served, offline, strict=True)
    )
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        document = Path(workdir) / "portable_model.json"
        document.write_text(json.dumps(portable.document))
        process, url = serve(document, Path(workdir))
        try:
            with httpx.Client(timeout=60) as client:
                for size in (1, 1000):
                    batch = records[:size]
                    spark_ms = median_ms(lambda b=batch: spark_scores(b), args.repeats)
                    numpy_ms = median_ms(lambda b=batch: portable.score(b), args.repeats)
                    http_ms = median_ms(
                        lambda b=batch: client.post(f"{url}/score", json={"data": b}).raise_for_status(),
                        args.repeats,
                    )
                    rows.append((size, spark_ms, numpy_ms, http_ms))
        finally:
            process.terminate()
            process.wait(timeout=30)
    spark.stop()

    print(f"\n{args.candidate}: median of {args.repeats} runs, master {args.master}")
    print(
        f"{'records':>7} {'Spark transform ms':>19} {'NumPy portable ms':>18} {'speed-up':>9} {'HTTP /score ms':>15}"
    )
    print("-" * 72)
    for size, spark_ms, numpy_ms, http_ms in rows:
        print(f"{size:>7} {spark_ms:>19.1f} {numpy_ms:>18.2f} {spark_ms / numpy_ms:>8.0f}x {http_ms:>15.1f}")
    print(f"\nportable vs Spark on {len(records)} held-out records: {mismatches} disagreements")
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
