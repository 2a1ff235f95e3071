"""
# income_release: nightly build and release of the Adult income classifier

Retrains the **income-classifier** (does a person earn more than 50K? UCI Adult census data) every
night and on demand, and releases it only if it is good enough.

| task | what it does | on failure |
| --- | --- | --- |
| `validate_data` | fetches the hash-pinned Adult data (or your `data_path`/`holdout_path`), checks schema, row floor, labels, missing values and label balance, fingerprints it (sha256, rows, source) | the log lists every violated rule with its numbers; nothing downstream runs |
| `train_candidates` | one Spark application (local `spark-submit`, or a Databricks run with `MLRELEASE_COMPUTE=databricks`) fits every candidate; each is an MLflow child run under one parent run per DAG run | the log names the run id, the driver log or Databricks run page, and the error; a retry after a crash reattaches to the run, after a failure submits a fresh one and refits only missing candidates |
| `select_and_gate` | picks the best child run on the validation metric, then gates it on the held-out data: an absolute bar and "no worse than prod" | a rejection **skips** (does not fail) the release tasks and logs both numbers and the threshold |
| `register_model` | registers the winner in the model registry with full lineage tags | idempotent: a retry reuses the version it made |
| `deploy_test` | deploys the new version to the **test** endpoint beside what it serves (locally a hot swap; on Azure ML a new AKS deployment at 0% traffic, waited for in the triggerer) | the log says what the endpoint still serves; a deployment that fails provisioning is removed and its log tail printed |
| `check_test` | endpoint checks on the new deployment: the contract (served model named in each answer, the seed's three persons, one prediction per record, a held-out batch equal to the model's offline predictions, a latency bound, a malformed request refused) plus the platform's (health and metadata locally; provisioned and key required on Azure ML); then test's traffic moves to it | each failed check is logged as expected vs actual; prod is untouched |
| `promote_prod` | deploys to **prod** the same way, runs the same checks on the new deployment, moves prod's traffic and `prod` (the registry alias locally, the audit record on Azure ML), removes the old deployment, appends the release record | a failed check or cut-over returns prod's traffic to the previous version automatically; `prod` is not moved; the task fails |
| `report` | prints the candidates table, winner, gate decision, version and release | |

**Trigger with parameters** (Trigger DAG w/ config): choose candidates, the gate mode (`enforce`,
`dry_run`, `disabled`), the quality bar and the champion tolerance, the endpoint latency budget, or
point at your own data.

Local state (MLflow store, data cache, audit log, Spark logs, endpoints) lives under `MLRELEASE_HOME`.
`mlrelease status` shows what each endpoint serves; `mlrelease audit release <id>` tells a release's story.
Runbook: see the project README, section "On call".
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task

from mlrelease.airflow.deploying import DeployTestOperator, PromoteProdOperator
from mlrelease.airflow.operators import train_candidates_operator
from mlrelease.domain.candidates import CANDIDATES
from mlrelease.domain.endpoint_checks import DEFAULT_LATENCY_BUDGET_MS
from mlrelease.domain.gate import GateMode, GatePolicy
from mlrelease.domain.selection import DEFAULT_SELECTION_METRIC, SELECTION_METRICS
from mlrelease.domain.validation_policy import ValidationPolicy

GATE = GatePolicy()  # the Params' defaults are the domain's defaults, written once

REMOTE_RETRIES = {"retries": 2, "retry_delay": timedelta(seconds=30), "retry_exponential_backoff": True}


@dag(
    dag_id="income_release",
    schedule="0 2 * * *",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["mlrelease", "income", "release"],
    default_args={"owner": "ml-platform", **REMOTE_RETRIES},
    params={
        "data_path": Param(
            None,
            type=["null", "string"],
            description="Your own training data (CSV with header, or Parquet) instead of the Adult data. "
            "Needs holdout_path too. Empty: the hash-pinned Adult data.",
        ),
        "holdout_path": Param(
            None,
            type=["null", "string"],
            description="Your own held-out data (same columns), used only for the gate and the report.",
        ),
        "candidates": Param(
            [],
            type="array",
            items={"type": "string", "enum": list(CANDIDATES)},
            description="Candidates to fit (see src/mlrelease/domain/candidates.py). Empty: all defaults.",
        ),
        "selection_metric": Param(
            DEFAULT_SELECTION_METRIC,
            enum=list(SELECTION_METRICS),
            description="Validation metric that picks the winner.",
        ),
        "gate_mode": Param(
            GATE.mode.value,
            enum=[mode.value for mode in GateMode],
            description="enforce: a failed check stops the release. dry_run: checks are recorded but the "
            "winner ships anyway. disabled: no checks (recorded as such on the model version).",
        ),
        "gate_metric": Param(
            GATE.metric, enum=list(SELECTION_METRICS), description="Held-out metric the gate checks."
        ),
        "quality_bar": Param(
            GATE.min_value,
            type="number",
            minimum=0,
            maximum=1,
            description="Absolute bar: held-out gate metric >= this.",
        ),
        "champion_tolerance": Param(
            GATE.champion_tolerance,
            type="number",
            minimum=0,
            maximum=1,
            description="The challenger may be at most this much worse than the current prod model.",
        ),
        "min_rows": Param(
            ValidationPolicy.min_rows, type="integer", minimum=1, description="Row floor for each data set."
        ),
        "endpoint_latency_budget_ms": Param(
            DEFAULT_LATENCY_BUDGET_MS,
            type="number",
            exclusiveMinimum=0,
            description="Endpoint check: the held-out batch (1,000 records) must be scored within this "
            "many milliseconds, on test and on prod.",
        ),
    },
)
def income_release():
    @task(retries=1)
    def validate_data(**context) -> dict:
        from mlrelease.airflow import tasks

        return tasks.validate_data(context)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def select_and_gate(training: dict, **context) -> bool:
        from mlrelease.airflow import tasks

        return tasks.select_and_gate(training, context)

    @task
    def register_model(training: dict, fingerprint: dict, **context) -> dict:
        from mlrelease.airflow import tasks

        return tasks.register_winner(training, fingerprint, context)

    @task(retries=0)
    def check_test(registered: dict, **context) -> dict:
        from mlrelease.airflow import tasks

        return tasks.check_test(registered, context)

    @task(trigger_rule="none_failed_min_one_success", retries=0)
    def report(training: dict, **context) -> str:
        from mlrelease.airflow import tasks

        return tasks.report(training, context)

    fingerprint = validate_data()
    # Local spark-submit or the provider's DatabricksSubmitRunOperator, by MLRELEASE_COMPUTE.
    training = train_candidates_operator(
        task_id="train_candidates",
        fingerprint=fingerprint,
        candidates="{{ params.candidates | tojson }}",
        execution_timeout=timedelta(hours=2),
    )
    gate = select_and_gate(training.output)
    registered = register_model(training.output, fingerprint)
    # Both defer while an AKS deployment provisions (no worker slot held); locally they never defer.
    deployed = DeployTestOperator(task_id="deploy_test", registered=registered, retries=1)
    checked = check_test(registered)
    promoted = PromoteProdOperator(task_id="promote_prod", registered=registered, retries=0)
    gate >> registered
    deployed >> checked >> promoted
    # Not directly downstream of the gate: a short-circuit skips its direct downstream tasks, and the
    # report must run (and say why) when the gate rejects the challenger.
    promoted >> report(training.output)


income_release()
