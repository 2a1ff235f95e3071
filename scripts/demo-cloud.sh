#!/usr/bin/env bash
# Run the income_release DAG once with every concern on its cloud backend, against emulators on
# loopback: training and tracking on an emulated Databricks workspace (the Jobs API really runs the job
# with local spark-submit), the registry in an emulated Azure ML workspace, the test and prod endpoints
# as AKS online endpoints of that workspace (each deployment a local process running Azure ML's
# inference server), and the audit store in Blob Storage (Azurite). State lives apart from `make demo`'s,
# in .mlrelease-cloud/ (MLRELEASE_CLOUD_HOME overrides), so both demos run side by side.
# The emulated cloud keeps running afterwards, serving the two endpoints; `make stop` stops it.
# A second run re-uses it and releases again (blue/green on the same endpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"

echo "==> Starting (or finding) the emulated cloud: Databricks workspace, Azurite, Azure ML (loopback only)"
# MLRELEASE_HOME, settings.env (regenerated), the Airflow connections in this process's environment only.
# shellcheck source=scripts/cloud-env.sh
source scripts/cloud-env.sh
mkdir -p "$MLRELEASE_HOME/logs"
RUN_LOG="$MLRELEASE_HOME/logs/demo-cloud-$(date -u +%Y%m%dT%H%M%SZ).log"
# The mlrelease commands below log how they reach the workspace on stderr: into the run log.
trap 'echo "demo-cloud: a step failed; last lines of $RUN_LOG:" >&2; tail -30 "$RUN_LOG" >&2' ERR
echo "    MLRELEASE_HOME=$MLRELEASE_HOME (settings: $MLRELEASE_HOME/settings.env)"
echo "    Databricks: $("$BIN/python" -c 'import json,os; print("{schema}://{host}:{port}".format(**json.loads(os.environ["AIRFLOW_CONN_DATABRICKS_DEFAULT"])))')"
echo "    Azure ML:   $(sed -n 's/^MLRELEASE_AZUREML_RESOURCE_MANAGER_URL=//p' "$MLRELEASE_HOME/settings.env") (TLS, CA $REQUESTS_CA_BUNDLE)"
echo "    requests each emulator received: $MLRELEASE_HOME/emulators/{databricks,azurite,azureml}/requests.jsonl"

echo "==> Migrating the Airflow metadata DB ($AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)"
"$BIN/airflow" db migrate >"$RUN_LOG" 2>&1 || { tail -40 "$RUN_LOG"; exit 1; }

CONF="${DEMO_CONF:-{\}}"
echo "==> Running DAG income_release once on the emulated cloud (conf $CONF); full log: $RUN_LOG"
STARTED=$SECONDS
# `airflow dags test` exits non-zero when the DAG run ends failed.
if ! "$BIN/airflow" dags test income_release -c "$CONF" >>"$RUN_LOG" 2>&1; then
  echo "The DAG run failed. Last lines of $RUN_LOG:" >&2
  tail -60 "$RUN_LOG" >&2
  echo "The emulators keep running (make stop stops them); their logs: $MLRELEASE_HOME/emulators/*/" >&2
  exit 1
fi
echo "==> DAG run finished in $((SECONDS - STARTED)) s: $(grep -o 'run_id=[^,]*, .*state=[a-z]*' "$RUN_LOG" | tail -1 | sed 's/, run_start_date.*state=/ state=/')"
echo "==> Databricks run: $(grep -o 'View run status, Spark UI, and logs at [^ ]*' "$RUN_LOG" | tail -1 | sed 's/.* at //')"
echo
"$BIN/mlrelease" summary 2>>"$RUN_LOG"
echo
echo "==> Endpoints: AKS online endpoints of the emulated Azure ML workspace (they keep serving; 'make stop' stops the emulated cloud)"
"$BIN/mlrelease" status 2>>"$RUN_LOG"
STATUS_JSON=$("$BIN/mlrelease" status --json 2>>"$RUN_LOG")
PROD_URL=$("$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["prod"]["url"])' <<<"$STATUS_JSON")
RELEASE_ID=$("$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)["endpoints"]["prod"]["release_id"] or "")' <<<"$STATUS_JSON")
PERSON='{"data": [{"age": 39, "workclass": "State-gov", "fnlwgt": 77516, "education": "Bachelors", "education_num": 13, "marital_status": "Never-married", "occupation": "Adm-clerical", "relationship": "Not-in-family", "race": "White", "sex": "Male", "capital_gain": 23174, "capital_loss": 0, "hours_per_week": 40, "native_country": "United-States"}]}'
echo
echo "==> Score a person on prod (its key goes from mlrelease endpoint-key to curl's stdin: never printed)"
PROD_KEY=$("$BIN/mlrelease" endpoint-key prod 2>>"$RUN_LOG")
ANSWER=$(printf 'Authorization: Bearer %s\n' "$PROD_KEY" | curl -sS --cacert "$REQUESTS_CA_BUNDLE" -H @- \
  -X POST "$PROD_URL/score" -H 'Content-Type: application/json' -d "$PERSON")
unset PROD_KEY
echo "$ANSWER"
REQUEST_ID=$("$BIN/python" -c 'import json,sys; print(json.load(sys.stdin).get("request_id", ""))' <<<"$ANSWER" 2>/dev/null || true)
echo
echo "==> From another shell (the connections live only in a process's environment; this gets them back):"
echo "  source scripts/cloud-env.sh     # MLRELEASE_HOME=${MLRELEASE_HOME#"$PWD"/}, the connections, .venv/bin on PATH"
echo "  mlrelease status --json"
echo "  mlrelease endpoint-key prod | sed 's/^/Authorization: Bearer /' | \\"
echo "    curl -s --cacert \"\$REQUESTS_CA_BUNDLE\" -H @- -X POST $PROD_URL/score -H 'Content-Type: application/json' -d '$PERSON'"
[ -n "$REQUEST_ID" ] && echo "  mlrelease audit prediction $REQUEST_ID        # the whole chain, down to the dataset"
[ -n "$RELEASE_ID" ] && echo "  mlrelease audit release $RELEASE_ID   # who promoted it, when, which checks passed"
echo
echo "The emulated cloud keeps running (Databricks, Azurite, Azure ML and its two endpoints); make stop stops it."
