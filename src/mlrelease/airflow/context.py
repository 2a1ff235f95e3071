"""Reading what the pipeline needs from an Airflow task context."""

from __future__ import annotations

from typing import Any

from mlrelease.domain.lineage import AirflowRunInfo, triggering_user


def run_info(context: dict[str, Any]) -> AirflowRunInfo:
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run.run_type, "value", dag_run.run_type))
    return AirflowRunInfo(
        dag_id=dag_run.dag_id,
        run_id=dag_run.run_id,
        try_number=int(context["ti"].try_number),
        run_type=run_type,
        triggered_by=triggering_user(run_type, getattr(dag_run, "triggering_user_name", None)),
    )


def param(context: dict[str, Any], name: str, default: Any = None) -> Any:
    value = context["params"].get(name, default)
    return default if value in (None, "") else value
