#!/usr/bin/env bash
# Run the income_release DAG once on the local default backends and print its summary.
# Called by `make demo` after the venv is ready; MLRELEASE_HOME (default .mlrelease/) holds all state.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
eval "$("$BIN/python" -m mlrelease.localenv)"
mkdir -p "$MLRELEASE_HOME/logs"
RUN_LOG="$MLRELEASE_HOME/logs/demo-$(date -u +%Y%m%dT%H%M%SZ).log"

echo "==> MLRELEASE_HOME=$MLRELEASE_HOME"
echo "==> Migrating the Airflow metadata DB ($AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)"
"$BIN/airflow" db migrate >"$RUN_LOG" 2>&1 || { tail -40 "$RUN_LOG"; exit 1; }

CONF="${DEMO_CONF:-{\}}"
echo "==> Running DAG income_release once (airflow dags test, conf $CONF); full log: $RUN_LOG"
# `airflow dags test` exits non-zero when the DAG run ends failed.
if ! "$BIN/airflow" dags test income_release -c "$CONF" >>"$RUN_LOG" 2>&1; then
  echo "The DAG run failed. Last lines of $RUN_LOG:" >&2
  tail -60 "$RUN_LOG" >&2
  exit 1
fi
echo "==> DAG run finished: $(grep -o 'run_id=[^,]*, .*state=[a-z]*' "$RUN_LOG" | tail -1 | sed 's/, run_start_date.*state=/ state=/')"
echo
"$BIN/mlrelease" summary
echo
echo "MLflow UI: make mlflow-ui, then open http://127.0.0.1:5000 (experiment income-release, model income-classifier)"
