"""The release operators' lifecycle: defer while a deployment provisions, resume from the trigger's event.

The release rules are ``mlrelease.releasing``'s (tested with real endpoints elsewhere); here the
endpoint backend is a stand-in that reports provisioning states, so what is checked is the operator's
part: it defers (holding no worker slot) only while the deployment is not done, the trigger carries
everything the resumed task needs, and a failed provisioning fails the task with the reason.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from mlrelease.airflow import deploying
from mlrelease.airflow.deploying import (
    DeploymentProvisionedTrigger,
    DeployTestOperator,
    _rollout_from_event,
    _rollout_to_event,
)
from mlrelease.backends.base import DeploymentState, EndpointError, Rollout
from mlrelease.domain.served import ServedModelRef

SERVED = ServedModelRef("income-classifier", "3", "income-classifier-v3-abcd1234")
OLD = ServedModelRef("income-classifier", "2", "income-classifier-v2-00000000")
ROLLOUT = Rollout("test", SERVED, deployment="v3-1a2b3c4d", live=False, replacing=OLD)


class Endpoints:
    def __init__(self, states: list[str]) -> None:
        self.states = states

    def deployment_state(self, rollout: Rollout) -> DeploymentState:
        return DeploymentState(self.states.pop(0), "image pull failed" if self.states == [] else "")


def test_a_rollout_survives_the_trip_through_the_trigger_event():
    assert _rollout_from_event(_rollout_to_event(ROLLOUT)) == ROLLOUT


def test_the_trigger_serialises_to_an_importable_class_and_its_arguments():
    trigger = DeploymentProvisionedTrigger(_rollout_to_event(ROLLOUT), poll_seconds=2, timeout_seconds=60)
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is DeploymentProvisionedTrigger
    assert DeploymentProvisionedTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_the_trigger_polls_until_the_deployment_is_done(monkeypatch):
    endpoints = Endpoints(["Creating", "Creating", "Succeeded"])
    monkeypatch.setattr(
        "mlrelease.airflow.connections.task_backends", lambda settings: SimpleNamespace(endpoints=endpoints)
    )
    monkeypatch.setattr("mlrelease.settings.load_settings", lambda: None)
    trigger = DeploymentProvisionedTrigger(_rollout_to_event(ROLLOUT), poll_seconds=0, timeout_seconds=60)

    async def first_event():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first_event())
    assert payload["state"] == "Succeeded" and endpoints.states == []
    assert _rollout_from_event(payload["rollout"]) == ROLLOUT


def operator_with(monkeypatch, states: list[str], finish=None) -> DeployTestOperator:
    settings = SimpleNamespace(azureml=SimpleNamespace(polling_seconds=2, provisioning_timeout_seconds=60))
    backends = SimpleNamespace(endpoints=Endpoints(states))
    operator = DeployTestOperator(
        task_id="deploy_test", registered={"name": "income-classifier", "version": "3"}
    )
    monkeypatch.setattr(
        operator, "_setup", lambda context: (settings, backends, SimpleNamespace(release_id="r"))
    )
    monkeypatch.setattr("mlrelease.releasing.begin_deploy", lambda backends, release, endpoint: ROLLOUT)
    monkeypatch.setattr(
        "mlrelease.releasing.complete_deploy",
        finish or (lambda backends, release, endpoint, rollout, state: rollout),
    )
    backends.endpoints.url = lambda endpoint: "https://127.0.0.1:1/endpoints/income-test"
    return operator


def test_the_operator_defers_while_the_deployment_provisions(monkeypatch):
    operator = operator_with(monkeypatch, ["Creating"])
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({})
    assert isinstance(deferred.value.trigger, DeploymentProvisionedTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.trigger.rollout == _rollout_to_event(ROLLOUT)


def test_a_deployment_ready_at_once_does_not_defer(monkeypatch):
    result = operator_with(monkeypatch, ["Succeeded"]).execute({})
    assert result["deployment"] == ROLLOUT.deployment and result["served"] == SERVED.brief()


def test_a_failed_provisioning_fails_the_task_with_the_reason(monkeypatch):
    def finish(backends, release, endpoint, rollout, state):
        raise EndpointError(f"deployment {rollout.deployment} ended {state.state}: {state.message}")

    operator = operator_with(monkeypatch, [], finish=finish)
    event = {"rollout": _rollout_to_event(ROLLOUT), "state": "Failed", "message": "image pull failed"}
    with pytest.raises(
        AirflowFailException, match="deploy_test: deployment v3-1a2b3c4d ended Failed: image pull"
    ):
        operator.execute_complete({}, event)


def test_the_module_never_defers_on_the_local_backend():
    """The local backend's deployment is done when submitted: the deferral branch is never taken."""
    from mlrelease.backends.local.endpoints import LocalEndpoints

    assert LocalEndpoints.deployment_state(None, ROLLOUT).done  # type: ignore[arg-type]
    assert deploying.DeploymentState.SUCCEEDED == "Succeeded"
