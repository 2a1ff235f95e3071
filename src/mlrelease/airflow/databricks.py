"""The training step on Databricks: the provider's ``DatabricksSubmitRunOperator``, prepared by us.

Everything that touches the Jobs API (submit with ``idempotency_token``, polling with the state on
each poll, the run page link, ``runs/get-output`` on failure, cancel in ``on_kill``, and reattaching
to an active run after a worker crash through Airflow's task state store) is the provider's code. This
subclass adds what comes before (the MLflow parent run in the workspace's MLflow, the champion, the
data, job file and wheel staged on a Unity Catalog volume, the ``spark_python_task`` payload) and after
(every candidate has a finished child run; the Databricks run id and URL go on the parent run).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.providers.databricks.operators.databricks import (
    DatabricksJobRunLink,
    DatabricksSubmitRunOperator,
)

from mlrelease.airflow.links import MlflowRunLink
from mlrelease.airflow.operators import RUN_ID_STATE_KEY, TrainingTaskMixin

log = logging.getLogger(__name__)


class DatabricksTrainCandidatesOperator(TrainingTaskMixin, DatabricksSubmitRunOperator):
    """Fit every selected candidate as one Databricks run of ``jobs/train_income.py``.

    Synchronous on purpose (``deferrable=False``): the provider's resumable path reattaches a retried
    task to the run it started, whereas its deferrable path submits again.

    :param fingerprint: the dataset fingerprint from ``validate_data`` (an XComArg).
    :param candidates: candidate names; empty means the defaults in ``mlrelease.domain.candidates``.
    """

    template_fields = (*DatabricksSubmitRunOperator.template_fields, "fingerprint", "candidates")
    operator_extra_links = (DatabricksJobRunLink(), MlflowRunLink())
    ui_color = "#f4a460"
    external_id_key = RUN_ID_STATE_KEY

    def __init__(
        self,
        *,
        fingerprint: Any,
        candidates: Any = None,
        validation_fraction: float = 0.2,
        seed: int = 42,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("deferrable", False)
        kwargs.setdefault("durable", True)
        super().__init__(**kwargs)
        self.fingerprint = fingerprint
        self.candidates = candidates
        self.validation_fraction = validation_fraction
        self.seed = seed

    def execute(self, context: Any) -> dict:
        prepared = self.prepare_training(context)
        if prepared.reused:
            return prepared.reused
        compute = self.backends.compute
        plan = compute.stage(prepared.request)
        self.json = compute.submit_payload(
            prepared.request,
            plan,
            run_name=prepared.request.run_label,
            idempotency_token=prepared.submission_key,
        )
        log.info(
            "Databricks run: %s on %s, job file %s, idempotency_token %s",
            prepared.request.run_label,
            self.json.get("existing_cluster_id") or "a new job cluster",
            self.json["spark_python_task"]["python_file"],
            prepared.submission_key,
        )
        super().execute(context)  # submit or reattach, poll, raise with get-output's error on failure
        url = self._hook.get_run_page_url(self.run_id)
        log.info("Databricks run %s succeeded: %s", self.run_id, url)
        return self.finish_training(prepared, str(self.run_id), url)
