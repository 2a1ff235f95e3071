#!/usr/bin/env bash
# Start or stop the real Airflow services for this checkout, on loopback only:
#   api-server (UI + REST API, http://127.0.0.1:${AIRFLOW_PORT:-8080}), scheduler, dag-processor, triggerer.
# Each runs detached with its own log and pid file under $MLRELEASE_HOME/airflow/services/.
#
#   scripts/airflow-services.sh start   # idempotent: services already running are left alone
#   scripts/airflow-services.sh stop
#   scripts/airflow-services.sh status
#
# Login: user "operator" (role admin); the password is generated on first start and kept in
# $MLRELEASE_HOME/airflow/passwords.json (mode 600). The JWT secret that the scheduler and the
# api-server share is generated the same way; neither is ever printed or committed.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
eval "$("$BIN/python" -m mlrelease.localenv)"
PORT="${AIRFLOW_PORT:-8080}"
SERVICES_DIR="$AIRFLOW_HOME/services"
SECRETS="$AIRFLOW_HOME/secrets.env"
mkdir -p "$SERVICES_DIR"

ensure_secrets() {
  umask 077
  if [ ! -f "$SECRETS" ]; then
    "$BIN/python" - "$SECRETS" <<'PY'
import secrets, sys
with open(sys.argv[1], "w") as handle:
    handle.write(f"AIRFLOW__API_AUTH__JWT_SECRET={secrets.token_urlsafe(32)}\n")
    handle.write(f"AIRFLOW__API__SECRET_KEY={secrets.token_urlsafe(32)}\n")
PY
  fi
  if [ ! -f "$AIRFLOW_HOME/passwords.json" ]; then
    "$BIN/python" -c 'import json, secrets, sys; json.dump({"operator": secrets.token_urlsafe(12)}, open(sys.argv[1], "w"))' \
      "$AIRFLOW_HOME/passwords.json"
  fi
  set -a; . "$SECRETS"; set +a
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="operator:admin"
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE="$AIRFLOW_HOME/passwords.json"
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$PORT/execution/"
  export AIRFLOW__API__BASE_URL="http://127.0.0.1:$PORT"
}

# A process is alive if it exists and is not a zombie waiting to be reaped.
alive() { kill -0 "$1" 2>/dev/null && ! ps -o stat= -p "$1" | grep -q '^Z'; }
running() { [ -f "$SERVICES_DIR/$1.pid" ] && alive "$(cat "$SERVICES_DIR/$1.pid")"; }

start_one() {
  local name=$1; shift
  if running "$name"; then echo "  $name already running (pid $(cat "$SERVICES_DIR/$name.pid"))"; return; fi
  setsid "$BIN/airflow" "$@" >"$SERVICES_DIR/$name.log" 2>&1 < /dev/null &
  echo $! >"$SERVICES_DIR/$name.pid"
  echo "  $name started (pid $!, log $SERVICES_DIR/$name.log)"
}

case "${1:-status}" in
  start)
    ensure_secrets
    "$BIN/airflow" db migrate >"$SERVICES_DIR/migrate.log" 2>&1 || { tail -30 "$SERVICES_DIR/migrate.log"; exit 1; }
    start_one api-server api-server --host 127.0.0.1 --port "$PORT" --workers 1
    start_one scheduler scheduler --skip-serve-logs
    start_one dag-processor dag-processor
    start_one triggerer triggerer --skip-serve-logs
    for _ in $(seq 1 90); do
      if curl -fsS "http://127.0.0.1:$PORT/api/v2/version" >/dev/null 2>&1; then
        echo "Airflow UI: http://127.0.0.1:$PORT (user operator, password in $AIRFLOW_HOME/passwords.json)"
        exit 0
      fi
      sleep 2
    done
    echo "api-server did not answer on port $PORT within 180s; see $SERVICES_DIR/api-server.log" >&2
    exit 1
    ;;
  stop)
    for name in triggerer dag-processor scheduler api-server; do
      if running "$name"; then
        pid=$(cat "$SERVICES_DIR/$name.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
        for _ in $(seq 1 30); do alive "$pid" || break; sleep 1; done
        if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
        echo "  $name stopped"
      fi
      rm -f "$SERVICES_DIR/$name.pid"
    done
    ;;
  status)
    for name in api-server scheduler dag-processor triggerer; do
      if running "$name"; then echo "  $name running (pid $(cat "$SERVICES_DIR/$name.pid"))"; else echo "  $name stopped"; fi
    done
    ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
