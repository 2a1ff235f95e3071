"""Extra links on task pages, so on-call gets from a task straight to the run it made."""

from __future__ import annotations

from airflow.sdk import BaseOperatorLink

MLFLOW_RUN_URL_KEY = "mlflow_run_url"


class MlflowRunLink(BaseOperatorLink):
    """The MLflow parent run of this DAG run's training (candidates, metrics, gate decision)."""

    name = "MLflow training run"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(key=MLFLOW_RUN_URL_KEY, ti_key=ti_key) or ""
