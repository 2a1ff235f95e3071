#!/usr/bin/env bash
# Run the income_release DAG once with every concern that has a cloud backend switched to it, against
# emulators on loopback: compute and tracking on an emulated Databricks workspace (it really runs the
# job with local spark-submit behind the Jobs API); the registry, endpoints and audit store stay local.
# State lives apart from `make demo`'s, in .mlrelease-cloud/ (its own MLRELEASE_HOME, with a
# settings.env there), so both demos run side by side. Leaves nothing running but the two endpoints.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
export MLRELEASE_HOME="${MLRELEASE_CLOUD_HOME:-$PWD/.mlrelease-cloud}"
mkdir -p "$MLRELEASE_HOME/logs"
SETTINGS="$MLRELEASE_HOME/settings.env"
if [ ! -f "$SETTINGS" ]; then
  cat >"$SETTINGS" <<'SETTINGS_EOF'
# make demo-cloud: which backend runs each concern for this MLRELEASE_HOME (no secrets here: the
# Databricks workspace is the Airflow connection databricks_default).
MLRELEASE_COMPUTE=databricks
MLRELEASE_TRACKING=databricks
MLRELEASE_REGISTRY=local
MLRELEASE_ENDPOINTS=local
MLRELEASE_AUDIT=local
MLRELEASE_DATABRICKS_VOLUME=/Volumes/main/mlrelease/files
MLRELEASE_DATABRICKS_EXPERIMENT=/Shared/mlrelease/income-release
MLRELEASE_DATABRICKS_POLLING_SECONDS=5
# Beside `make demo` (8701/8702).
MLRELEASE_TEST_ENDPOINT_PORT=8721
MLRELEASE_PROD_ENDPOINT_PORT=8722
SETTINGS_EOF
fi
eval "$("$BIN/python" -m mlrelease.localenv)"
RUN_LOG="$MLRELEASE_HOME/logs/demo-cloud-$(date -u +%Y%m%dT%H%M%SZ).log"

echo "==> MLRELEASE_HOME=$MLRELEASE_HOME (settings: $SETTINGS)"
echo "==> Starting the Databricks workspace emulator (loopback only)"
# The emulated workspace's token: made once, kept with the emulator's own state (mode 0600). Airflow
# gets it only as the connection below, in this process's environment.
eval "$("$BIN/python" - "$MLRELEASE_HOME" <<'PY'
import json, secrets, shlex, sys
from pathlib import Path
from emulators.databricks import start
home = Path(sys.argv[1])
token_file = home / "emulators" / "databricks" / "workspace-token"
token_file.parent.mkdir(parents=True, exist_ok=True)
if not token_file.is_file():
    token_file.write_text("dapi" + secrets.token_hex(16))
    token_file.chmod(0o600)
token = token_file.read_text().strip()
emulator = start(home, token=token)
connection = {"conn_type": "databricks", "host": emulator.host, "port": emulator.port, "schema": "http",
              "password": token}
print(f"export EMULATOR_URL={shlex.quote(emulator.url)}")
print(f"export AIRFLOW_CONN_DATABRICKS_DEFAULT={shlex.quote(json.dumps(connection))}")
# For `mlrelease summary` below, which reads the workspace's MLflow like the tasks do.
print(f"export DATABRICKS_HOST={shlex.quote(emulator.url)} DATABRICKS_TOKEN={shlex.quote(token)}")
PY
)"
echo "    workspace: $EMULATOR_URL (requests logged to $MLRELEASE_HOME/emulators/databricks/requests.jsonl)"
stop_emulator() { "$BIN/python" -m emulators.databricks stop --home "$MLRELEASE_HOME" >/dev/null 2>&1 || true; }
trap stop_emulator EXIT

echo "==> Migrating the Airflow metadata DB ($AIRFLOW__DATABASE__SQL_ALCHEMY_CONN)"
"$BIN/airflow" db migrate >"$RUN_LOG" 2>&1 || { tail -40 "$RUN_LOG"; exit 1; }

CONF="${DEMO_CONF:-{\}}"
echo "==> Running DAG income_release once on the emulated Databricks (conf $CONF); full log: $RUN_LOG"
if ! "$BIN/airflow" dags test income_release -c "$CONF" >>"$RUN_LOG" 2>&1; then
  echo "The DAG run failed. Last lines of $RUN_LOG:" >&2
  tail -60 "$RUN_LOG" >&2
  exit 1
fi
echo "==> DAG run finished: $(grep -o 'run_id=[^,]*, .*state=[a-z]*' "$RUN_LOG" | tail -1 | sed 's/, run_start_date.*state=/ state=/')"
echo "==> Databricks run: $(grep -o 'View run status, Spark UI, and logs at [^ ]*' "$RUN_LOG" | tail -1 | sed 's/.* at //')"
echo
"$BIN/mlrelease" summary
echo
echo "==> Endpoints (they keep running; 'make stop' stops them)"
"$BIN/mlrelease" status
echo
echo "The emulator is stopped now; its state (runs, driver logs, MLflow, the volume) stays in $MLRELEASE_HOME/emulators/databricks."
echo "Same home, no other environment: MLRELEASE_HOME=$MLRELEASE_HOME $BIN/mlrelease status"
