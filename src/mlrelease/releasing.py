"""The release half: deploy a registered version to an endpoint, check it, promote it to prod (or roll back).

No Airflow import: the DAG's tasks call these functions with the run's identity, and integration tests
call them directly against real endpoints. Every step reads the record before it writes, so a retried
or cleared task converges:

* a deployment is skipped when the endpoint already has that version in that release
  (:class:`~mlrelease.domain.served.ServedModelRef` is the one "is it served?" rule);
* the state of prod *before* a release is recorded once (``release_started``), so a retry that finds
  prod already changed still knows what to roll back to;
* a promotion is recorded once per release; a release already promoted is only re-verified.

The rule that prod never goes without a serving model: a release is deploy → check → cut over →
retire on every endpoint backend (``EndpointBackend``). The new model is loaded beside the old one
(locally a hot swap inside the one service; on Azure ML a second deployment at 0% traffic that the
checks reach by name); traffic moves only after its checks passed; the old deployment goes only after
that. If a check or the cut-over fails, traffic returns to the previous model (verified) before the
task fails, and the registry alias is moved only after the checks passed. This module never talks to
an endpoint itself: staging, probing and traffic are the backend's.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

from mlrelease.artifacts import ArtifactUnavailable, fetch_run_artifact
from mlrelease.backends import Backends
from mlrelease.backends.base import DeploymentSpec, DeploymentState, EndpointError, ModelVersionRef, Rollout
from mlrelease.domain.endpoint_checks import DEFAULT_LATENCY_BUDGET_MS, CheckReport, Expectation
from mlrelease.domain.gate import PROD_ALIAS, GateMode, stale_champion
from mlrelease.domain.lineage import AirflowRunInfo, missing_lineage
from mlrelease.domain.records import AuditEvent
from mlrelease.domain.release import (
    ALIAS_MOVED,
    DEPLOYMENT,
    DEPLOYMENT_FAILED,
    ENDPOINT_CHECKS,
    RELEASE,
    RELEASE_STARTED,
    ROLLBACK,
    ReleaseOutcome,
    lineage_summary,
    release_id_for,
)
from mlrelease.domain.served import ServedModelRef, describe
from mlrelease.settings import Settings
from mlrelease.tags import HOLDOUT_PREDICTIONS_ARTIFACT, TAG_LINEAGE_PARENT_RUN_ID

log = logging.getLogger(__name__)

TEST, PROD = "test", "prod"

Checker = Callable[[str, Expectation, Rollout], CheckReport]


class ReleaseError(RuntimeError):
    """The release cannot go on; the message says what state prod is in and what to do."""


@dataclass(frozen=True)
class Release:
    model_name: str
    version: str
    run: AirflowRunInfo
    latency_budget_ms: float = DEFAULT_LATENCY_BUDGET_MS

    @property
    def release_id(self) -> str:
        return release_id_for(self.run.training_key, self.model_name, self.version)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _version(backends: Backends, release: Release) -> ModelVersionRef:
    ref = backends.registry.get_version(release.model_name, release.version)
    if ref is None:
        raise ReleaseError(
            f"{release.model_name} version {release.version} is not in the registry; it must be registered "
            "(register_model) before it can be deployed"
        )
    missing = missing_lineage(ref.tags)
    if missing:
        raise ReleaseError(
            f"{release.model_name} version {release.version} lacks lineage tags {missing}; it must not be "
            "deployed. Register a new version from a complete training run."
        )
    if not ref.run_id:
        raise ReleaseError(f"{release.model_name} version {release.version} has no source run id")
    return ref


def deployment_spec(backends: Backends, release: Release, stage: str) -> DeploymentSpec:
    ref = _version(backends, release)
    return DeploymentSpec(
        model=ref, release_id=release.release_id, lineage=lineage_summary(ref.tags), stage=stage
    )


def expectation(backends: Backends, settings: Settings, release: Release) -> Expectation:
    ref = _version(backends, release)
    try:
        path = fetch_run_artifact(backends.tracker, settings.models_dir, ref, HOLDOUT_PREDICTIONS_ARTIFACT)
    except ArtifactUnavailable as error:
        raise ReleaseError(str(error)) from error
    document = json.loads(path.read_text())
    return Expectation(
        model_name=ref.name,
        version=ref.version,
        release_id=release.release_id,
        holdout_records=document["records"],
        holdout_predictions=document["predictions"],
        latency_budget_ms=release.latency_budget_ms,
    )


def begin_deploy(
    backends: Backends, release: Release, endpoint: str, spec: DeploymentSpec | None = None
) -> Rollout:
    """Submit the release's version to ``endpoint`` beside what serves (idempotent); no waiting."""
    spec = spec or deployment_spec(backends, release, endpoint)
    log.info(
        "Deploying %s to the %s endpoint; it serves %s until the new model has passed its checks",
        spec.served.describe(),
        endpoint,
        describe(backends.endpoints.serving(endpoint)),
    )
    return backends.endpoints.start_deploy(endpoint, spec)


def complete_deploy(
    backends: Backends, release: Release, endpoint: str, rollout: Rollout, state: DeploymentState
) -> Rollout:
    """After provisioning: record the deployment, or record the failure and raise EndpointError (traffic
    unchanged)."""
    try:
        rollout = backends.endpoints.finish_deploy(rollout, state)
    except EndpointError as error:
        backends.audit.append(
            event_key=f"deploy-failed:{endpoint}:{release.release_id}:try{release.run.try_number}",
            kind=DEPLOYMENT_FAILED,
            subject=release.release_id,
            payload={
                "endpoint": endpoint,
                "deployment": rollout.deployment,
                "version": release.version,
                "reason": str(error),
                "serving": rollout.replacing and rollout.replacing.brief(),
                "run_id": release.run.run_id,
            },
        )
        raise
    url = backends.endpoints.url(endpoint)
    backends.audit.append(
        event_key=f"deploy:{endpoint}:{release.release_id}",
        kind=DEPLOYMENT,
        subject=release.release_id,
        payload={
            "endpoint": endpoint,
            "url": url,
            "model": rollout.served.name,
            "version": rollout.served.version,
            "deployment": rollout.deployment,
            "artifact_sha256": rollout.served.artifact_sha256,
            "previous": rollout.replacing and rollout.replacing.brief(),
            "dag_id": release.run.dag_id,
            "run_id": release.run.run_id,
            "triggered_by": release.run.triggered_by,
        },
    )
    log.info(
        "The %s endpoint %s %s (deployment %s): %s/score",
        endpoint,
        "now serves" if rollout.live else "has, beside the serving model and without traffic,",
        rollout.served.describe(),
        rollout.deployment or "in place",
        url,
    )
    return rollout


def wait_for(backends: Backends, rollout: Rollout, poll_seconds: float = 5.0) -> DeploymentState:
    """Block until the deployment is provisioned or failed (the Airflow operators defer instead)."""
    while not (state := backends.endpoints.deployment_state(rollout)).done:
        log.info("Deployment %s on %s: %s", rollout.deployment, rollout.endpoint, state.state)
        time.sleep(poll_seconds)
    return state


def deploy(
    backends: Backends, release: Release, endpoint: str, spec: DeploymentSpec | None = None
) -> Rollout:
    """:func:`begin_deploy`, wait, :func:`complete_deploy`."""
    rollout = begin_deploy(backends, release, endpoint, spec)
    return complete_deploy(backends, release, endpoint, rollout, wait_for(backends, rollout))


def _rollout(backends: Backends, release: Release, endpoint: str) -> Rollout:
    wanted = ServedModelRef(release.model_name, release.version, release.release_id)
    rollout = backends.endpoints.find(endpoint, wanted)
    if rollout is None:
        raise ReleaseError(
            f"{wanted.describe()} is not deployed on the {endpoint} endpoint (it serves "
            f"{describe(backends.endpoints.serving(endpoint))}); run (or clear) deploy_{endpoint} first"
        )
    return rollout


def run_checks(
    backends: Backends,
    settings: Settings,
    release: Release,
    endpoint: str,
    rollout: Rollout | None = None,
    checker: Checker | None = None,
) -> CheckReport:
    """Run every endpoint check on the release's deployment, log each with expected vs actual, record them."""
    expect = expectation(backends, settings, release)
    rollout = rollout or _rollout(backends, release, endpoint)
    report = (checker or backends.endpoints.check)(endpoint, expect, rollout)
    for check in report.checks:
        (log.info if check.passed else log.error)("[%s endpoint] %s", endpoint, check.line())
    backends.audit.append(
        event_key=f"checks:{endpoint}:{release.release_id}:try{release.run.try_number}",
        kind=ENDPOINT_CHECKS,
        subject=release.release_id,
        payload={
            **report.to_dict(),
            "try_number": release.run.try_number,
            "version": release.version,
            "deployment": rollout.deployment,
        },
    )
    return report


def check_test(backends: Backends, settings: Settings, release: Release) -> CheckReport:
    """Check the release on the test endpoint; when it passed, move the test endpoint's traffic to it."""
    rollout = _rollout(backends, release, TEST)
    report = run_checks(backends, settings, release, TEST, rollout)
    if report.passed and not rollout.live:
        try:
            served = backends.endpoints.cut_over(rollout)
        except EndpointError as error:
            backends.audit.append(
                f"rollback:{TEST}:{release.release_id}:try{release.run.try_number}",
                ROLLBACK,
                release.release_id,
                {
                    "endpoint": TEST,
                    "restored": rollout.replacing and rollout.replacing.brief(),
                    "failed": str(error),
                },
            )
            raise
        retired = backends.endpoints.retire(rollout)
        log.info(
            "The test endpoint's traffic now goes to %s; removed: %s", served.describe(), retired or "nothing"
        )
    return report


def _events(backends: Backends, kind: str, release_id: str) -> list[AuditEvent]:
    return backends.audit.events(kind=kind, subject=release_id)


def test_check_reports(backends: Backends, release_id: str) -> list[dict[str, Any]]:
    """The release's test endpoint check reports, oldest first."""
    return [
        e.payload for e in _events(backends, ENDPOINT_CHECKS, release_id) if e.payload["endpoint"] == TEST
    ]


@dataclass(frozen=True)
class Promotion:
    """A promotion under way: the prod rollout submitted, or the record of one already done."""

    rollout: Rollout | None = None
    done: dict[str, Any] | None = None


def begin_promote(backends: Backends, settings: Settings, release: Release) -> Promotion:
    """Refuse what may not ship, record prod's state once, submit the prod deployment beside it."""
    name, version, rid = release.model_name, release.version, release.release_id
    alias = backends.registry.get_by_alias(name, PROD_ALIAS)
    promoted = [e for e in _events(backends, RELEASE, rid) if e.payload["outcome"] == ReleaseOutcome.PROMOTED]
    spec = deployment_spec(backends, release, PROD)
    refuse_unless_gated(backends, spec.model, alias.version if alias else None)
    if (
        promoted
        and alias
        and alias.version == version
        and spec.served.same_as(backends.endpoints.serving(PROD))
    ):
        log.info(
            "Release %s was already promoted (%s); prod serves it at %s: nothing to do",
            rid,
            promoted[-1].recorded_at,
            backends.endpoints.url(PROD),
        )
        return Promotion(done=promoted[-1].payload)
    test_reports = test_check_reports(backends, rid)
    if not test_reports or not test_reports[-1]["passed"]:
        raise ReleaseError(
            f"release {rid}: the test endpoint checks have not passed for {name} version {version}; prod is "
            "unchanged. Run (or clear) check_test first."
        )
    # What prod was before this release, recorded once: a retry must roll back to this, not to itself.
    before = backends.endpoints.serving(PROD)
    backends.audit.append(
        event_key=f"release-start:{rid}",
        kind=RELEASE_STARTED,
        subject=rid,
        payload={
            "previous_deployment": backends.endpoints.restore_point(PROD),
            "previous_serving": before and before.brief(),
            "previous_alias_version": alias.version if alias else None,
            "dag_id": release.run.dag_id,
            "run_id": release.run.run_id,
        },
    )
    try:
        return Promotion(rollout=begin_deploy(backends, release, PROD, spec))
    except EndpointError as error:
        _deploy_failed(backends, release, error)


def _started(backends: Backends, release: Release) -> dict[str, Any]:
    events = _events(backends, RELEASE_STARTED, release.release_id)
    if not events:
        raise ReleaseError(
            f"release {release.release_id} has no release_started record; run begin_promote first"
        )
    return events[0].payload


def _record(backends: Backends, release: Release) -> dict[str, Any]:
    """The release record so far (what every outcome record carries)."""
    started = _started(backends, release)
    return {
        "release_id": release.release_id,
        "model": release.model_name,
        "version": release.version,
        "previous_prod_version": started["previous_alias_version"],
        "endpoint": PROD,
        "url": backends.endpoints.url(PROD),
        "dag_id": release.run.dag_id,
        "run_id": release.run.run_id,
        "run_type": release.run.run_type,
        "triggered_by": release.run.triggered_by,
        "try_number": release.run.try_number,
        "lineage": lineage_summary(_version(backends, release).tags),
        "checks": {TEST: test_check_reports(backends, release.release_id)[-1]},
    }


def _deploy_failed(backends: Backends, release: Release, error: EndpointError) -> NoReturn:
    rid = release.release_id
    still = backends.endpoints.serving(PROD)
    record = _record(backends, release)
    record.update(
        outcome=ReleaseOutcome.DEPLOY_FAILED,
        reason=str(error),
        serving_after=still and still.brief(),
        at=_now(),
    )
    backends.audit.append(f"release:{rid}:deploy-failed:try{release.run.try_number}", RELEASE, rid, record)
    raise ReleaseError(
        f"release {rid}: prod could not load {release.model_name} version {release.version}: {error}. Prod still "
        f"serves {describe(still)}; the alias {PROD_ALIAS!r} was not moved."
    ) from error


def complete_promote(
    backends: Backends,
    settings: Settings,
    release: Release,
    rollout: Rollout,
    state: DeploymentState,
    checker: Checker | None = None,
) -> dict[str, Any]:
    """Check the provisioned prod deployment, move traffic and the alias, record the release; or roll back."""
    name, version, rid = release.model_name, release.version, release.release_id
    try:
        rollout = complete_deploy(backends, release, PROD, rollout, state)
    except EndpointError as error:
        _deploy_failed(backends, release, error)
    started = _started(backends, release)
    previous_deployment = started["previous_deployment"]
    previous_serving = ServedModelRef.from_brief(started.get("previous_serving"))
    previous_version = started["previous_alias_version"]
    record = _record(backends, release)

    report = run_checks(backends, settings, release, PROD, rollout, checker)
    record["checks"][PROD] = report.to_dict()
    failure = None if report.passed else "prod checks failed: " + "; ".join(c.line() for c in report.failed)
    if failure is None and not rollout.live:
        try:
            backends.endpoints.cut_over(rollout)
        except EndpointError as error:
            failure = f"moving prod's traffic failed: {error}"
    if failure is not None:
        _roll_back(backends, release, rollout, previous_deployment, previous_serving, failure, record)
        raise ReleaseError(
            f"release {rid}: {failure}. Prod was rolled back to {describe(previous_serving)}; the alias "
            f"{PROD_ALIAS!r} still points at version {previous_version or 'none'}. Investigate with: "
            f"mlrelease audit release {rid}"
        )

    alias = backends.registry.get_by_alias(name, PROD_ALIAS)
    if not alias or alias.version != version:
        backends.registry.set_alias(name, PROD_ALIAS, version)
        log.info("Moved %s of %s: version %s -> %s", PROD_ALIAS, name, previous_version or "none", version)
    backends.audit.append(
        event_key=f"alias:{name}:{PROD_ALIAS}:{version}:{release.run.training_key}",
        kind=ALIAS_MOVED,
        subject=f"{name}:{PROD_ALIAS}",
        payload={
            "alias": PROD_ALIAS,
            "version": version,
            "previous_version": previous_version,
            "release_id": rid,
            "dag_id": release.run.dag_id,
            "run_id": release.run.run_id,
            "triggered_by": release.run.triggered_by,
        },
    )
    retired = backends.endpoints.retire(rollout)
    record.update(
        outcome=ReleaseOutcome.PROMOTED, reason="test and prod checks passed", retired=retired, at=_now()
    )
    event = backends.audit.append(f"release:{rid}", RELEASE, rid, record)
    log.info(
        "RELEASED %s version %s as %s (previous prod version %s), promoted by %s. Prod: %s/score. "
        "Audit trail: mlrelease audit release %s",
        name,
        version,
        rid,
        previous_version or "none",
        release.run.triggered_by,
        record["url"],
        rid,
    )
    return event.payload


def promote(
    backends: Backends,
    settings: Settings,
    release: Release,
    checker: Checker | None = None,
) -> dict[str, Any]:
    """:func:`begin_promote`, wait for prod's deployment, :func:`complete_promote`.

    A failure at any step leaves (or returns) prod's traffic on the model that served before, and is
    recorded before the task fails.
    """
    promotion = begin_promote(backends, settings, release)
    if promotion.done is not None:
        return promotion.done
    rollout = promotion.rollout
    return complete_promote(backends, settings, release, rollout, wait_for(backends, rollout), checker)


def _roll_back(
    backends: Backends,
    release: Release,
    rollout: Rollout,
    previous_deployment: dict[str, Any] | None,
    previous_serving: ServedModelRef | None,
    failure: str,
    record: dict[str, Any],
) -> None:
    """Return prod's traffic to what served before, verify it took, and record the rollback."""
    rid = release.release_id
    log.error("Release %s: %s. Rolling prod back to %s", rid, failure, describe(previous_serving))
    restored = backends.endpoints.roll_back(rollout, previous_deployment)
    if previous_serving is not None and not previous_serving.same_as(restored):
        raise ReleaseError(
            f"release {rid}: {failure} AND the rollback to {previous_serving.describe()} did not take (prod now "
            f"serves {describe(restored)}). Page the model owner; see {backends.endpoints.url(PROD)} and the "
            "endpoint log."
        )
    backends.audit.append(
        f"rollback:{rid}:try{release.run.try_number}",
        ROLLBACK,
        rid,
        {"endpoint": PROD, "restored": previous_serving and previous_serving.brief(), "failed": failure},
    )
    record.update(
        outcome=ReleaseOutcome.ROLLED_BACK,
        reason=failure,
        serving_after=restored and restored.brief(),
        at=_now(),
    )
    backends.audit.append(f"release:{rid}:rolled-back:try{release.run.try_number}", RELEASE, rid, record)


def refuse_unless_gated(backends: Backends, ref: ModelVersionRef, current_prod: str | None) -> None:
    """The release rules of the gate: approved, and compared with the version that is prod *now*.

    The decision is read from the audit log (never from an XCom). The gate compared the challenger
    with the version that was prod when training ran; if another run moved prod since, that
    comparison says nothing about the model being replaced now (``stale_champion``).
    """
    from mlrelease.gating import GateRefused, recorded_gate

    parent_run_id = ref.tags.get(TAG_LINEAGE_PARENT_RUN_ID)
    try:
        decision = recorded_gate(backends, parent_run_id).decision
    except GateRefused as error:
        raise ReleaseError(f"{ref.name} version {ref.version}: {error}; prod is unchanged") from error
    if not decision.approved:
        raise ReleaseError(
            f"{ref.name} version {ref.version}: the gate did not approve it ({decision.reason}); "
            "prod is unchanged"
        )
    if decision.mode != GateMode.DISABLED and (
        problem := stale_champion(decision.champion_version, current_prod, ref.version)
    ):
        raise ReleaseError(problem)
