"""The release tasks that wait for an endpoint deployment: ``deploy_test`` and ``promote_prod``.

On AKS a deployment takes minutes to provision. These operators submit it, then **defer** to
:class:`DeploymentProvisionedTrigger` (which polls Azure ML from the triggerer), so no worker slot is
held while Kubernetes pulls images and starts pods; they resume in ``execute_complete`` to check, move
traffic and record. On the local backend a deployment is ready when submitted (a hot swap), so they
never defer. The release rules themselves are ``mlrelease.releasing``'s; here is only the task
lifecycle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from airflow.triggers.base import BaseTrigger, TriggerEvent

from mlrelease.backends.base import DeploymentState, EndpointError, Rollout
from mlrelease.domain.served import ServedModelRef

log = logging.getLogger(__name__)


def _rollout_to_event(rollout: Rollout) -> dict[str, Any]:
    return {
        "endpoint": rollout.endpoint,
        "deployment": rollout.deployment,
        "served": rollout.served.brief(),
        "replacing": rollout.replacing and rollout.replacing.brief(),
    }


def _rollout_from_event(data: dict[str, Any]) -> Rollout:
    return Rollout(
        data["endpoint"],
        ServedModelRef.from_brief(data["served"]),
        data["deployment"],
        live=False,
        replacing=ServedModelRef.from_brief(data.get("replacing")),
    )


class DeploymentProvisionedTrigger(BaseTrigger):
    """Polls a deployment's provisioning state until it Succeeded or Failed (or the timeout passed)."""

    def __init__(self, rollout: dict[str, Any], poll_seconds: float, timeout_seconds: float) -> None:
        super().__init__()
        self.rollout = rollout
        self.poll_seconds = poll_seconds
        self.timeout_seconds = timeout_seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "rollout": self.rollout,
                "poll_seconds": self.poll_seconds,
                "timeout_seconds": self.timeout_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from mlrelease.airflow.connections import task_backends
        from mlrelease.settings import load_settings

        rollout = _rollout_from_event(self.rollout)
        # azure-ai-ml is synchronous: every call goes to a thread so the triggerer's loop stays free.
        backends = await asyncio.to_thread(task_backends, load_settings())
        deadline = time.monotonic() + self.timeout_seconds
        while True:
            state = await asyncio.to_thread(backends.endpoints.deployment_state, rollout)
            self.log.info("Deployment %s on %s: %s", rollout.deployment, rollout.endpoint, state.state)
            if state.done:
                break
            if time.monotonic() > deadline:
                state = DeploymentState(
                    DeploymentState.FAILED,
                    f"not provisioned within {self.timeout_seconds:.0f} s (still {state.state})",
                )
                break
            await asyncio.sleep(self.poll_seconds)
        yield TriggerEvent({"rollout": self.rollout, "state": state.state, "message": state.message})


class _ReleaseStepOperator(BaseOperator):
    """Common lifecycle: build the release from the registered version, defer while provisioning."""

    template_fields = ("registered",)
    ui_color = "#e8f4ea"

    def __init__(self, *, registered: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.registered = registered

    def _setup(self, context: Any):
        from mlrelease.airflow.tasks import _backends, _release

        settings, backends = _backends()
        return settings, backends, _release(self.registered, context)

    def _wait(self, backends: Any, settings: Any, rollout: Rollout) -> DeploymentState | None:
        """The state when already done; otherwise defer (this raises) until the trigger says so."""
        state = backends.endpoints.deployment_state(rollout)
        if state.done:
            return state
        log.info(
            "Deployment %s on the %s endpoint is %s; deferring until it is provisioned (polling every %s s)",
            rollout.deployment,
            rollout.endpoint,
            state.state,
            settings.azureml.polling_seconds,
        )
        self.defer(
            trigger=DeploymentProvisionedTrigger(
                _rollout_to_event(rollout),
                poll_seconds=settings.azureml.polling_seconds,
                timeout_seconds=settings.azureml.provisioning_timeout_seconds,
            ),
            method_name="execute_complete",
        )
        return None  # not reached: defer raises

    @staticmethod
    def _event(event: dict[str, Any]) -> tuple[Rollout, DeploymentState]:
        return _rollout_from_event(event["rollout"]), DeploymentState(
            event["state"], event.get("message", "")
        )


class DeployTestOperator(_ReleaseStepOperator):
    """Deploy the registered winner to the test endpoint beside what it serves (no traffic moves yet)."""

    def execute(self, context: Any) -> dict:
        from mlrelease import releasing

        settings, backends, release = self._setup(context)
        try:
            rollout = releasing.begin_deploy(backends, release, releasing.TEST)
        except (releasing.ReleaseError, EndpointError) as error:
            raise AirflowFailException(f"deploy_test: {error}") from error
        return self._finish(backends, release, rollout, self._wait(backends, settings, rollout))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict:
        _, backends, release = self._setup(context)
        return self._finish(backends, release, *self._event(event))

    def _finish(self, backends: Any, release: Any, rollout: Rollout, state: DeploymentState) -> dict:
        from mlrelease import releasing

        try:
            rollout = releasing.complete_deploy(backends, release, releasing.TEST, rollout, state)
        except EndpointError as error:
            raise AirflowFailException(f"deploy_test: {error}") from error
        return {
            "release_id": release.release_id,
            "url": backends.endpoints.url(releasing.TEST),
            "deployment": rollout.deployment,
            "served": rollout.served.brief(),
            "live": rollout.live,
        }


class PromoteProdOperator(_ReleaseStepOperator):
    """Deploy to prod beside the current model, check it, move traffic and ``prod``; roll back on failure."""

    def execute(self, context: Any) -> dict:
        from mlrelease import releasing

        settings, backends, release = self._setup(context)
        try:
            promotion = releasing.begin_promote(backends, settings, release)
        except releasing.ReleaseError as error:
            raise AirflowFailException(str(error)) from error
        if promotion.done is not None:
            return promotion.done
        rollout = promotion.rollout
        return self._finish(settings, backends, release, rollout, self._wait(backends, settings, rollout))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict:
        settings, backends, release = self._setup(context)
        return self._finish(settings, backends, release, *self._event(event))

    def _finish(
        self, settings: Any, backends: Any, release: Any, rollout: Rollout, state: DeploymentState
    ) -> dict:
        from mlrelease import releasing

        try:
            return releasing.complete_promote(backends, settings, release, rollout, state)
        except releasing.ReleaseError as error:
            # A refusal or a rollback is not transient: fail now, with prod's state in the message.
            raise AirflowFailException(str(error)) from error
