"""The release half: deploy a registered version to an endpoint, check it, promote it to prod (or roll back).

No Airflow import: the DAG's tasks call these functions with the run's identity, and integration tests
call them directly against real endpoints. Every step reads the record before it writes, so a retried
or cleared task converges:

* a deployment is skipped when the endpoint already serves that version in that release;
* the state of prod *before* a release is recorded once (``release_started``), so a retry that finds
  prod already changed still knows what to roll back to;
* a promotion is recorded once per release; a release already promoted is only re-verified.

The rule that prod never goes without a serving model: a new prod model is loaded beside the old one
and swapped only when healthy; if the prod checks then fail, the previous deployment is restored (and
verified) before the task fails, and the registry alias is moved only after the checks passed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlrelease.backends import Backends
from mlrelease.backends.base import DeploymentSpec, EndpointError, ModelVersionRef
from mlrelease.domain.endpoint_checks import DEFAULT_LATENCY_BUDGET_MS, CheckReport, Expectation
from mlrelease.domain.gate import PROD_ALIAS, GateMode, stale_champion
from mlrelease.domain.lineage import AirflowRunInfo, missing_lineage
from mlrelease.domain.release import (
    DEPLOYMENT,
    ENDPOINT_CHECKS,
    RELEASE,
    RELEASE_STARTED,
    ROLLBACK,
    ReleaseOutcome,
    lineage_summary,
    release_id_for,
)
from mlrelease.hashing import sha256_file
from mlrelease.settings import Settings
from mlrelease.tags import HOLDOUT_PREDICTIONS_ARTIFACT, PORTABLE_MODEL_ARTIFACT, TAG_LINEAGE_PARENT_RUN_ID

log = logging.getLogger(__name__)

TEST, PROD = "test", "prod"

Checker = Callable[[str, str, Expectation], CheckReport]


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


def _artifact(backends: Backends, settings: Settings, ref: ModelVersionRef, artifact: str):
    """A local copy of one of the version's training-run artifacts, cached per version."""
    target = settings.models_dir / ref.name / ref.version
    local = target / artifact
    if not local.is_file():
        try:
            backends.tracker.download_artifact(ref.run_id, artifact, target / artifact.rsplit("/", 1)[0])
        except Exception as error:
            raise ReleaseError(
                f"{ref.name} version {ref.version}: could not fetch artifact {artifact!r} of run {ref.run_id} "
                f"({error}). Models trained before the scoring service existed have no portable export: "
                "retrain (trigger the DAG) to get a deployable version."
            ) from error
    return local


def deployment_spec(backends: Backends, settings: Settings, release: Release, stage: str) -> DeploymentSpec:
    ref = _version(backends, release)
    artifact = _artifact(backends, settings, ref, PORTABLE_MODEL_ARTIFACT)
    return DeploymentSpec(
        model_name=ref.name,
        version=ref.version,
        release_id=release.release_id,
        artifact=str(artifact),
        artifact_sha256=sha256_file(artifact),
        lineage=lineage_summary(ref.tags),
        stage=stage,
    )


def expectation(backends: Backends, settings: Settings, release: Release) -> Expectation:
    ref = _version(backends, release)
    document = json.loads(_artifact(backends, settings, ref, HOLDOUT_PREDICTIONS_ARTIFACT).read_text())
    return Expectation(
        model_name=ref.name,
        version=ref.version,
        release_id=release.release_id,
        holdout_records=document["records"],
        holdout_predictions=document["predictions"],
        latency_budget_ms=release.latency_budget_ms,
    )


def deploy(
    backends: Backends,
    settings: Settings,
    release: Release,
    endpoint: str,
    spec: DeploymentSpec | None = None,
) -> dict[str, Any]:
    """Deploy the release's version to ``endpoint`` (hot swap; idempotent) and record the deployment."""
    spec = spec or deployment_spec(backends, settings, release, endpoint)
    before = backends.endpoints.current(endpoint)
    url = backends.endpoints.url(endpoint)
    log.info(
        "Deploying %s version %s (release %s) to the %s endpoint %s; it serves %s until the new model is loaded",
        spec.model_name,
        spec.version,
        spec.release_id,
        endpoint,
        url,
        _describe(before),
    )
    served = backends.endpoints.deploy(endpoint, spec)
    backends.audit.append(
        event_key=f"deploy:{endpoint}:{release.release_id}",
        kind=DEPLOYMENT,
        subject=release.release_id,
        payload={
            "endpoint": endpoint,
            "url": url,
            "model": spec.model_name,
            "version": spec.version,
            "artifact_sha256": spec.artifact_sha256,
            "previous": _brief(before),
            "dag_id": release.run.dag_id,
            "run_id": release.run.run_id,
            "triggered_by": release.run.triggered_by,
        },
    )
    log.info(
        "The %s endpoint now serves %s version %s (release %s): %s/score, %s/metadata",
        endpoint,
        spec.model_name,
        spec.version,
        release.release_id,
        url,
        url,
    )
    return served


def _brief(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metadata:
        return None
    model = metadata.get("model") or {}
    return {
        "model": model.get("name"),
        "version": model.get("version"),
        "release_id": metadata.get("release_id"),
    }


def _describe(metadata: dict[str, Any] | None) -> str:
    brief = _brief(metadata)
    return f"version {brief['version']} (release {brief['release_id']})" if brief else "nothing"


def run_checks(
    backends: Backends,
    settings: Settings,
    release: Release,
    endpoint: str,
    checker: Checker | None = None,
) -> CheckReport:
    """Run every endpoint check, log each with expected vs actual, and record the report."""
    from mlrelease.serving.probe import check_endpoint

    expect = expectation(backends, settings, release)
    url = backends.endpoints.url(endpoint)
    report = (checker or check_endpoint)(endpoint, url, expect)
    for check in report.checks:
        (log.info if check.passed else log.error)("[%s endpoint] %s", endpoint, check.line())
    backends.audit.append(
        event_key=f"checks:{endpoint}:{release.release_id}:try{release.run.try_number}",
        kind=ENDPOINT_CHECKS,
        subject=release.release_id,
        payload={**report.to_dict(), "try_number": release.run.try_number, "version": release.version},
    )
    return report


def _events(backends: Backends, kind: str, release_id: str) -> list[Any]:
    return backends.audit.events(kind=kind, subject=release_id)


def test_check_reports(backends: Backends, release_id: str) -> list[dict[str, Any]]:
    """The release's test endpoint check reports, oldest first."""
    return [
        e.payload for e in _events(backends, ENDPOINT_CHECKS, release_id) if e.payload["endpoint"] == TEST
    ]


def promote(
    backends: Backends,
    settings: Settings,
    release: Release,
    checker: Checker | None = None,
) -> dict[str, Any]:
    """Deploy to prod, check prod, then move the alias and record the release; roll back on failure."""
    name, version, rid = release.model_name, release.version, release.release_id
    prod_url = backends.endpoints.url(PROD)
    alias = backends.registry.get_by_alias(name, PROD_ALIAS)
    promoted = [e for e in _events(backends, RELEASE, rid) if e.payload["outcome"] == ReleaseOutcome.PROMOTED]
    spec = deployment_spec(backends, settings, release, PROD)
    refuse_unless_gated(backends, _version(backends, release), alias.version if alias else None)
    if promoted and alias and alias.version == version and spec.served_by(backends.endpoints.current(PROD)):
        log.info(
            "Release %s was already promoted (%s); prod serves it at %s: nothing to do",
            rid,
            promoted[-1].recorded_at,
            prod_url,
        )
        return promoted[-1].payload
    test_reports = test_check_reports(backends, rid)
    if not test_reports or not test_reports[-1]["passed"]:
        raise ReleaseError(
            f"release {rid}: the test endpoint checks have not passed for {name} version {version}; prod is "
            "unchanged. Run (or clear) check_test first."
        )

    # What prod was before this release, recorded once: a retry must roll back to this, not to itself.
    started = backends.audit.append(
        event_key=f"release-start:{rid}",
        kind=RELEASE_STARTED,
        subject=rid,
        payload={
            "previous_deployment": backends.endpoints.desired(PROD),
            "previous_alias_version": alias.version if alias else None,
            "dag_id": release.run.dag_id,
            "run_id": release.run.run_id,
        },
    )
    previous_deployment = started.payload["previous_deployment"]
    previous_version = started.payload["previous_alias_version"]
    record = {
        "release_id": rid,
        "model": name,
        "version": version,
        "previous_prod_version": previous_version,
        "endpoint": PROD,
        "url": prod_url,
        "dag_id": release.run.dag_id,
        "run_id": release.run.run_id,
        "run_type": release.run.run_type,
        "triggered_by": release.run.triggered_by,
        "try_number": release.run.try_number,
        "lineage": spec.lineage,
        "checks": {TEST: test_reports[-1]},
    }

    try:
        deploy(backends, settings, release, PROD, spec)
    except EndpointError as error:
        still = backends.endpoints.current(PROD)
        record.update(
            outcome=ReleaseOutcome.DEPLOY_FAILED, reason=str(error), serving_after=_brief(still), at=_now()
        )
        backends.audit.append(
            f"release:{rid}:deploy-failed:try{release.run.try_number}", RELEASE, rid, record
        )
        raise ReleaseError(
            f"release {rid}: prod could not load {name} version {version}: {error}. Prod still serves "
            f"{_describe(still)}; the alias {PROD_ALIAS!r} was not moved."
        ) from error

    report = run_checks(backends, settings, release, PROD, checker)
    record["checks"][PROD] = report.to_dict()
    if not report.passed:
        failed = "; ".join(check.line() for check in report.failed)
        log.error(
            "Prod checks FAILED for release %s: %s. Rolling prod back to %s",
            rid,
            failed,
            _describe_desired(previous_deployment),
        )
        restored = backends.endpoints.restore(PROD, previous_deployment)
        wanted = (previous_deployment or {}).get("model")
        if wanted and (restored or {}).get("model", {}).get("version") != wanted["version"]:
            raise ReleaseError(
                f"release {rid}: prod checks failed AND the rollback to {wanted} did not take (prod now serves "
                f"{_describe(restored)}). Page the model owner; see {prod_url}/metadata and the endpoint log."
            )
        backends.audit.append(
            f"rollback:{rid}:try{release.run.try_number}",
            ROLLBACK,
            rid,
            {
                "endpoint": PROD,
                "restored": previous_deployment and _brief_desired(previous_deployment),
                "failed": failed,
            },
        )
        record.update(
            outcome=ReleaseOutcome.ROLLED_BACK,
            reason=f"prod checks failed: {failed}",
            serving_after=_brief(restored),
            at=_now(),
        )
        backends.audit.append(f"release:{rid}:rolled-back:try{release.run.try_number}", RELEASE, rid, record)
        raise ReleaseError(
            f"release {rid}: prod checks failed ({failed}). Prod was rolled back to "
            f"{_describe_desired(previous_deployment)}; the alias {PROD_ALIAS!r} still points at version "
            f"{previous_version or 'none'}. Investigate with: mlrelease audit release {rid}"
        )

    if not alias or alias.version != version:
        backends.registry.set_alias(name, PROD_ALIAS, version)
        log.info(
            "Moved registry alias %s of %s: version %s -> %s",
            PROD_ALIAS,
            name,
            previous_version or "none",
            version,
        )
    backends.audit.append(
        event_key=f"alias:{name}:{PROD_ALIAS}:{version}:{release.run.training_key}",
        kind="alias_moved",
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
    record.update(outcome=ReleaseOutcome.PROMOTED, reason="test and prod checks passed", at=_now())
    event = backends.audit.append(f"release:{rid}", RELEASE, rid, record)
    log.info(
        "RELEASED %s version %s as %s (previous prod version %s), promoted by %s. Prod: %s/score. "
        "Audit trail: mlrelease audit release %s",
        name,
        version,
        rid,
        previous_version or "none",
        release.run.triggered_by,
        prod_url,
        rid,
    )
    return event.payload


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


def _brief_desired(desired: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": desired["model"]["name"],
        "version": desired["model"]["version"],
        "release_id": desired["release_id"],
    }


def _describe_desired(desired: dict[str, Any] | None) -> str:
    if not desired:
        return "no model (prod served nothing before this release)"
    brief = _brief_desired(desired)
    return f"version {brief['version']} (release {brief['release_id']})"
