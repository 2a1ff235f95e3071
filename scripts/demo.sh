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
echo "==> Endpoints (they keep running after this command; 'make stop' stops them, 'make demo' updates them in place)"
"$BIN/mlrelease" status
PROD_URL=$("$BIN/mlrelease" status --json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["prod"]["url"])')
RELEASE_ID=$("$BIN/mlrelease" status --json | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["prod"]["release_id"] or "")')
PERSON='{"data": [{"age": 39, "workclass": "State-gov", "fnlwgt": 77516, "education": "Bachelors", "education_num": 13, "marital_status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family", "race": "White", "sex": "Male", "capital_gain": 23174, "capital_loss": 0, "hours_per_week": 40, "native_country": "United-States"}]}'
echo
echo "==> Score a person on prod:"
echo "curl -s -X POST $PROD_URL/score -H 'Content-Type: application/json' -d '$PERSON'"
ANSWER=$(curl -s -X POST "$PROD_URL/score" -H 'Content-Type: application/json' -d "$PERSON")
echo "$ANSWER"
REQUEST_ID=$(echo "$ANSWER" | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin).get("request_id", ""))' 2>/dev/null || true)
echo
echo "==> Why did the model predict this?"
[ -n "$REQUEST_ID" ] && echo "  $BIN/mlrelease audit prediction $REQUEST_ID        # the whole chain, down to the dataset"
[ -n "$RELEASE_ID" ] && echo "  $BIN/mlrelease audit release $RELEASE_ID   # who promoted it, when, which checks passed"
echo "  $BIN/mlrelease status --json"
echo
echo "MLflow UI: make mlflow-ui, then open http://127.0.0.1:5000 (experiment income-release, model income-classifier)"
