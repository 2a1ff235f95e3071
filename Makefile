# mlrelease: `make demo` runs the whole release locally; `make test` runs the test suite.
# Both set everything up themselves on a fresh machine with Python 3.11 and Java 17.

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
UV_VERSION := 0.9.5

export MLRELEASE_HOME ?= $(CURDIR)/.mlrelease
export UV_COMPILE_BYTECODE := 1
export SPARK_LOCAL_IP := 127.0.0.1

.PHONY: help venv wheel demo demo-cloud stop status test lint format lock mlflow-ui airflow-up airflow-down clean

help:
	@echo "make demo     set up and run the whole release once (train, gate, register, test + prod endpoints)"
	@echo "make demo-cloud  the same release on emulators: Databricks training, Azure ML registry, AKS endpoints, Blob audit (.mlrelease-cloud/)"
	@echo "make stop     stop make demo's endpoints and make demo-cloud's emulated cloud (with its endpoints)"
	@echo "make wheel    build dist/mlrelease-<version>-py3-none-any.whl (what a Databricks cluster installs)"
	@echo "make status   what the endpoints serve (mlrelease status)"
	@echo "make test     set up and run the tests"
	@echo "make lint     ruff check + format check"
	@echo "make mlflow-ui  serve the MLflow UI for MLRELEASE_HOME on http://127.0.0.1:5000"
	@echo "make airflow-up   start api-server, scheduler, dag-processor, triggerer on 127.0.0.1:8080"
	@echo "make airflow-down stop them"
	@echo "make lock     re-resolve requirements.txt from requirements.in"
	@echo "make clean    delete local state (MLRELEASE_HOME) but keep the venv"

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	@command -v java >/dev/null || { echo "Java 17 is required for Spark: install openjdk-17-jre-headless" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	@$(PYTHON) -m uv --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet "uv==$(UV_VERSION)"
	$(PYTHON) -m uv venv --seed --allow-existing --python $(PYTHON) $(VENV)
	$(PYTHON) -m uv pip install --python $(BIN)/python -r requirements.txt
	$(PYTHON) -m uv pip install --python $(BIN)/python --no-deps -e .
	@touch $@

demo: venv
	@scripts/demo.sh

demo-cloud: venv
	@scripts/demo-cloud.sh

wheel: venv
	SOURCE_DATE_EPOCH=315532800 $(BIN)/python -m pip wheel --no-deps --no-build-isolation -q -w dist .
	@ls dist/mlrelease-*.whl

CLOUD_HOME := $(CURDIR)/.mlrelease-cloud

stop:
	@if [ -x $(BIN)/mlrelease ]; then \
	  $(BIN)/mlrelease endpoints stop; \
	  cloud_home="$${MLRELEASE_CLOUD_HOME:-$(CLOUD_HOME)}"; \
	  if [ -d "$$cloud_home" ]; then \
	    echo "$$cloud_home:"; \
	    if grep -qx 'MLRELEASE_ENDPOINTS=aks' "$$cloud_home/settings.env" 2>/dev/null; then \
	      echo "AKS endpoints: served by the Azure ML emulator, which stops below"; \
	    else MLRELEASE_HOME="$$cloud_home" $(BIN)/mlrelease endpoints stop; fi; \
	    $(BIN)/python -m emulators.cloud stop "$$cloud_home"; \
	  fi; \
	else echo "no venv: nothing was started"; fi

status: venv
	@$(BIN)/mlrelease status

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock:
	$(PYTHON) -m uv pip compile --python-version 3.11 requirements.in -o requirements.txt

mlflow-ui: venv
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000 \
	  --backend-store-uri sqlite:///$(MLRELEASE_HOME)/mlflow.db \
	  --default-artifact-root $(MLRELEASE_HOME)/mlartifacts

airflow-up: venv
	@scripts/airflow-services.sh start

airflow-down:
	@scripts/airflow-services.sh stop

clean: stop airflow-down
	rm -rf $(MLRELEASE_HOME) $(CLOUD_HOME)
