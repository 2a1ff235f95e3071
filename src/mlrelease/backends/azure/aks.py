"""Test and prod endpoints as Azure ML Kubernetes online endpoints on an attached AKS cluster.

Blue/green on each endpoint, through ``azure-ai-ml`` only:

1. :meth:`AksEndpoints.deploy` creates one ``KubernetesOnlineDeployment`` per released version (named
   after version and release) beside the one serving, with **0% traffic**;
2. the checks reach it by name (the ``azureml-model-deployment`` header) with the endpoint key;
3. :meth:`cut_over` moves 100% of the traffic to it and verifies unlabelled requests are answered by
   it; if not, traffic goes back to where it was;
4. :meth:`retire` deletes the deployments that no longer take traffic, only after that.

A failure at any step leaves or returns traffic to the old deployment (:meth:`roll_back` also deletes
the new one). Provisioning can take minutes on AKS, so :meth:`start_deploy` only submits and
:meth:`deployment_state` polls (the Airflow operator defers in between); :meth:`deploy` does both for
callers without a triggerer.

What a deployment runs: the scoring code snapshot (``serving/azureml_score.py`` and the part of this
package it imports) and a pinned environment, both uploaded content-addressed into workspace storage
and referenced as versioned assets, and the registered model version. Its containers write every
prediction to the audit store (Blob) before answering.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from mlrelease.backends.azure.workspace import AzureWorkspace
from mlrelease.backends.base import DeploymentSpec, DeploymentState, EndpointError, Rollout
from mlrelease.backends.probe import Target, call, client_for, run_contract_checks
from mlrelease.domain.endpoint_checks import SEED_PERSONS, CheckReport, EndpointCheck, Expectation
from mlrelease.domain.served import ServedModelRef
from mlrelease.settings import AzureMLSettings

log = logging.getLogger(__name__)

SCORING_SCRIPT = "azureml_score.py"
ENVIRONMENT_NAME = "mlrelease-scoring"
CODE_NAME = "mlrelease-scoring-code"
DEPLOYMENT_HEADER = "azureml-model-deployment"
# Tags on each deployment: which model, version and release it serves (the one identity, from Azure).
TAG_MODEL, TAG_VERSION, TAG_RELEASE, TAG_SHA = (
    "mlrelease.model",
    "mlrelease.version",
    "mlrelease.release_id",
    "mlrelease.artifact_sha256",
)
SUCCEEDED, FAILED = DeploymentState.SUCCEEDED, DeploymentState.FAILED


def deployment_name(served: ServedModelRef) -> str:
    """``v<version>-<8 hex of the release>``: unique per release, 3-32 characters, starts with a letter."""
    digest = hashlib.sha256(str(served.release_id).encode()).hexdigest()[:8]
    return f"v{served.version}-{digest}"[:32]


def provisioning_state(resource: Any) -> str:
    """The state as Azure ML spells it ("Succeeded"); the SDK hands out an enum whose str() is its name."""
    state = getattr(resource, "provisioning_state", None)
    return str(getattr(state, "value", state) or "Creating")


def served_by(deployment: Any) -> ServedModelRef | None:
    tags = deployment.tags or {}
    if not tags.get(TAG_MODEL):
        return None
    return ServedModelRef(
        tags.get(TAG_MODEL), tags.get(TAG_VERSION), tags.get(TAG_RELEASE), tags.get(TAG_SHA)
    )


def scoring_requirements() -> list[str]:
    """The pinned packages of the scoring environment (serving/azureml-requirements.txt)."""
    from mlrelease.serving.code_package import scoring_requirements as requirements_file

    path = requirements_file()
    return [
        line.split("#", 1)[0].strip()
        for line in path.read_text().splitlines()
        if line.split("#", 1)[0].strip() and not line.lstrip().startswith("-")
    ]


class AksEndpoints:
    def __init__(
        self, workspace: AzureWorkspace, settings: AzureMLSettings, scoring_env: dict[str, str]
    ) -> None:
        """``scoring_env``: where the scoring containers write the prediction log (no secret on Azure)."""
        self.workspace = workspace
        self.settings = settings
        self.scoring_env = scoring_env

    # ---------------------------------------------------------------- names and reads
    @property
    def ml(self):
        return self.workspace.ml

    def _name(self, endpoint: str) -> str:
        if endpoint not in self.settings.endpoint_names:
            raise EndpointError(
                f"unknown endpoint {endpoint!r}; known endpoints: {', '.join(self.settings.endpoint_names)}"
            )
        return self.settings.endpoint_name(endpoint)

    def _endpoint(self, endpoint: str, create: bool = True):
        from azure.ai.ml.entities import KubernetesOnlineEndpoint
        from azure.core.exceptions import ResourceNotFoundError

        name = self._name(endpoint)
        try:
            return self.ml.online_endpoints.get(name)
        except ResourceNotFoundError:
            if not create:
                return None
        log.info(
            "Creating Kubernetes online endpoint %s (%s) on compute %s, key auth",
            name,
            endpoint,
            self.settings.aks_compute,
        )
        return self.ml.online_endpoints.begin_create_or_update(
            KubernetesOnlineEndpoint(
                name=name,
                compute=self.settings.aks_compute,
                auth_mode="key",
                description=f"mlrelease {endpoint} endpoint: UCI Adult income classifier",
                tags={"mlrelease.stage": endpoint},
            )
        ).result()

    def url(self, endpoint: str) -> str:
        scoring_uri = self._endpoint(endpoint).scoring_uri or ""
        return scoring_uri.removesuffix("/score")

    def key(self, endpoint: str) -> str:
        """The endpoint's primary key, for a person who must call it (``mlrelease endpoint-key``)."""
        return self.ml.online_endpoints.get_keys(self._name(endpoint)).primary_key

    def _deployments(self, endpoint: str) -> dict[str, Any]:
        return {d.name: d for d in self.ml.online_deployments.list(self._name(endpoint))}

    def _traffic(self, endpoint: str) -> dict[str, int]:
        found = self._endpoint(endpoint, create=False)
        return {k: int(v) for k, v in ((found.traffic if found else None) or {}).items()}

    def serving(self, endpoint: str) -> ServedModelRef | None:
        traffic = {d: share for d, share in self._traffic(endpoint).items() if share > 0}
        if not traffic:
            return None
        main = max(traffic, key=traffic.get)
        deployments = self._deployments(endpoint)
        return served_by(deployments[main]) if main in deployments else None

    def restore_point(self, endpoint: str) -> dict[str, Any] | None:
        traffic = {d: share for d, share in self._traffic(endpoint).items() if share > 0}
        if not traffic:
            return None
        deployments = self._deployments(endpoint)
        return {
            "traffic": traffic,
            "serving": {
                d: (s.brief() if (s := served_by(deployments[d])) else None)
                for d in traffic
                if d in deployments
            },
        }

    # ---------------------------------------------------------------- assets
    def _code_asset(self) -> str:
        from azure.ai.ml.entities._assets import Code
        from azure.core.exceptions import ResourceNotFoundError

        from mlrelease.serving.code_package import build_scoring_code

        with tempfile.TemporaryDirectory(prefix="mlrelease-code-") as tmp:
            code_dir = build_scoring_code(Path(tmp) / "code")
            path = self.workspace.put_once("code", code_dir)
        version = path.rstrip("/").rsplit("/", 1)[-1][:16]  # the snapshot's digest: same code, same asset
        # MLClient has no public code operations; its _code is the one way to register a code asset by
        # datastore URI (CodeConfiguration(code="azureml://...") fails the SDK's version parsing, and a
        # local path would make the SDK upload through storage clients outside its pipeline).
        try:
            return self.ml._code.get(CODE_NAME, version).id
        except ResourceNotFoundError:
            pass
        return self.ml._code.create_or_update(Code(name=CODE_NAME, version=version, path=path)).id

    def _environment(self) -> str:
        from azure.ai.ml.entities import Environment
        from azure.core.exceptions import ResourceNotFoundError

        conda = {
            "name": ENVIRONMENT_NAME,
            "channels": ["conda-forge"],
            "dependencies": ["python=3.11", "pip", {"pip": scoring_requirements()}],
        }
        version = hashlib.sha256(f"{self.settings.base_image}|{conda}".encode()).hexdigest()[:16]
        try:
            return self.ml.environments.get(ENVIRONMENT_NAME, version).id
        except ResourceNotFoundError:
            pass
        return self.ml.environments.create_or_update(
            Environment(
                name=ENVIRONMENT_NAME,
                version=version,
                image=self.settings.base_image,
                conda_file=conda,
                description="mlrelease scoring: azureml-inference-server-http and NumPy, pinned",
            )
        ).id

    # ---------------------------------------------------------------- deploying
    def start_deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        """Submit the deployment at 0% traffic (or find it); does not wait for provisioning."""
        from azure.ai.ml.entities import (
            CodeConfiguration,
            KubernetesOnlineDeployment,
            ResourceRequirementsSettings,
            ResourceSettings,
        )
        from azure.core.exceptions import HttpResponseError

        from mlrelease.serving import azureml_score as script  # the variables it reads are its contract

        served = spec.served
        name = deployment_name(served)
        self._endpoint(endpoint)
        existing = self._deployments(endpoint).get(name)
        if existing is not None and served.same_as(served_by(existing)):
            if provisioning_state(existing) != FAILED:
                log.info(
                    "Deployment %s of %s already exists (%s)",
                    name,
                    self._name(endpoint),
                    provisioning_state(existing),
                )
                return self._rollout(endpoint, name, existing)
            # A failed attempt of this very release (a retry): remove it and provision again.
            self._delete(endpoint, name)
        model = self.ml.models.get(spec.model.name, spec.model.version)
        deployment = KubernetesOnlineDeployment(
            name=name,
            endpoint_name=self._name(endpoint),
            model=model.id,
            code_configuration=CodeConfiguration(code=self._code_asset(), scoring_script=SCORING_SCRIPT),
            environment=self._environment(),
            instance_type=self.settings.instance_type,
            instance_count=self.settings.instance_count,
            resources=ResourceRequirementsSettings(
                requests=ResourceSettings(cpu=self.settings.cpu_request, memory=self.settings.memory_request),
                limits=ResourceSettings(cpu=self.settings.cpu_limit, memory=self.settings.memory_limit),
            ),
            environment_variables={
                script.ENV_MODEL_NAME: str(served.name),
                script.ENV_MODEL_VERSION: str(served.version),
                script.ENV_RELEASE_ID: str(served.release_id),
                script.ENV_ENDPOINT: endpoint,
                **self.scoring_env,
            },
            tags={
                TAG_MODEL: str(served.name),
                TAG_VERSION: str(served.version),
                TAG_RELEASE: str(served.release_id),
                "mlrelease.lineage.child_run_id": str(spec.model.run_id),
            },
            description=f"{served.describe()}",
        )
        log.info(
            "Submitting deployment %s of endpoint %s: %s, instance type %s x%d, 0%% traffic",
            name,
            self._name(endpoint),
            served.describe(),
            self.settings.instance_type,
            self.settings.instance_count,
        )
        try:
            # The poller is not waited on: deployment_state() polls, so a worker slot is not held.
            self.ml.online_deployments.begin_create_or_update(deployment)
        except HttpResponseError as error:
            raise EndpointError(
                f"Azure ML refused deployment {name} on {self._name(endpoint)}: {error.message}; traffic is "
                "unchanged"
            ) from error
        return Rollout(endpoint, served, deployment=name, live=False, replacing=self.serving(endpoint))

    def _rollout(self, endpoint: str, name: str, deployment: Any) -> Rollout:
        live = self._traffic(endpoint).get(name, 0) == 100
        return Rollout(endpoint, served_by(deployment), deployment=name, live=live)

    def deployment_state(self, rollout: Rollout) -> DeploymentState:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            found = self.ml.online_deployments.get(rollout.deployment, self._name(rollout.endpoint))
        except ResourceNotFoundError:
            return DeploymentState(FAILED, f"deployment {rollout.deployment} does not exist (deleted?)")
        state = provisioning_state(found)
        message = ""
        if state == FAILED:
            message = self._log_tail(rollout)
        return DeploymentState(state, message)

    def _log_tail(self, rollout: Rollout, lines: int = 30) -> str:
        try:
            return self.ml.online_deployments.get_logs(
                rollout.deployment, self._name(rollout.endpoint), lines
            )
        except Exception as error:  # the logs are a courtesy in an error message; say why they are missing
            return f"(no deployment log: {type(error).__name__}: {error})"

    def finish_deploy(self, rollout: Rollout, state: DeploymentState) -> Rollout:
        """After provisioning: the rollout, or EndpointError (the failed deployment removed, traffic as it was)."""
        if state.state == SUCCEEDED:
            log.info("Deployment %s of %s is provisioned", rollout.deployment, self._name(rollout.endpoint))
            return rollout
        self._delete(rollout.endpoint, rollout.deployment)
        details = (
            f"Its log:\n{state.message}"
            if state.message.strip()
            else "Its log is empty: it failed before the container started (image pull, quota, model or code "
            "download); the deployment's operation in the workspace's activity log says why"
        )
        raise EndpointError(
            f"deployment {rollout.deployment} ({rollout.served.describe()}) on {self._name(rollout.endpoint)} "
            f"ended {state.state}; it was removed and traffic stays where it was. {details}"
        )

    def deploy(self, endpoint: str, spec: DeploymentSpec) -> Rollout:
        rollout = self.start_deploy(endpoint, spec)
        deadline = time.monotonic() + self.settings.provisioning_timeout_seconds
        while not (state := self.deployment_state(rollout)).done:
            if time.monotonic() > deadline:
                state = DeploymentState(
                    FAILED, f"not provisioned within {self.settings.provisioning_timeout_seconds} s"
                )
                break
            time.sleep(min(self.settings.polling_seconds, 5))
        return self.finish_deploy(rollout, state)

    def find(self, endpoint: str, served: ServedModelRef) -> Rollout | None:
        for name, deployment in self._deployments(endpoint).items():
            if served.same_as(served_by(deployment)) and provisioning_state(deployment) == SUCCEEDED:
                return self._rollout(endpoint, name, deployment)
        return None

    # ---------------------------------------------------------------- checks and traffic
    def _target(self, endpoint: str, deployment: str | None) -> Target:
        headers = {"Authorization": f"Bearer {self.key(endpoint)}"}
        if deployment:
            headers[DEPLOYMENT_HEADER] = deployment
        verify: bool | str = self.settings.ca_bundle or True
        return Target(self.url(endpoint), headers, verify)

    def check(self, endpoint: str, expect: Expectation, rollout: Rollout) -> CheckReport:
        """Platform checks (provisioned, key required) then the contract checks on the rollout's deployment."""
        target = self._target(endpoint, rollout.deployment)
        state = self.deployment_state(rollout)
        platform = [
            EndpointCheck(
                "deployment_provisioned",
                state.state == SUCCEEDED,
                f"deployment {rollout.deployment} Succeeded",
                f"{state.state} {state.message[:200]}".strip(),
            )
        ]
        anonymous = Target(target.base_url, {DEPLOYMENT_HEADER: str(rollout.deployment)}, target.verify)
        with client_for(anonymous) as client:
            refused = call(client, "POST", f"{target.base_url}/score", {"data": [SEED_PERSONS[0]]})
        platform.append(
            EndpointCheck(
                "key_required", refused.status == 401, "HTTP 401 without the key", refused.describe()
            )
        )
        return CheckReport(
            endpoint,
            f"{target.base_url} (deployment {rollout.deployment})",
            platform + run_contract_checks(target, expect),
        )

    def _set_traffic(self, endpoint: str, traffic: dict[str, int]) -> None:
        found = self._endpoint(endpoint)
        found.traffic = traffic
        self.ml.online_endpoints.begin_create_or_update(found).result()

    def cut_over(self, rollout: Rollout) -> ServedModelRef:
        before = self._traffic(rollout.endpoint)
        new = {name: 0 for name in before} | {rollout.deployment: 100}
        log.info(
            "Moving all traffic of %s to %s (was %s)",
            self._name(rollout.endpoint),
            rollout.deployment,
            before or "none",
        )
        self._set_traffic(rollout.endpoint, new)
        target = self._target(rollout.endpoint, None)
        with client_for(target) as client:
            answers = [
                call(client, "POST", f"{target.base_url}/score", {"data": [SEED_PERSONS[0]]})
                for _ in range(3)
            ]
        named = [ServedModelRef.from_document(a.body if isinstance(a.body, dict) else None) for a in answers]
        if all(a.status == 200 for a in answers) and all(rollout.served.same_as(n) for n in named):
            return rollout.served
        restore = {name: share for name, share in before.items() if share > 0}
        self._set_traffic(rollout.endpoint, {name: 0 for name in new} | restore)
        raise EndpointError(
            f"after moving traffic to {rollout.deployment}, the endpoint answered "
            f"{[a.describe() for a in answers]} naming {[n.describe() if n else None for n in named]}; traffic "
            f"went back to {restore or 'none'}"
        )

    def _delete(self, endpoint: str, name: str) -> None:
        log.info("Deleting deployment %s of %s", name, self._name(endpoint))
        self.ml.online_deployments.begin_delete(name, self._name(endpoint)).result()

    def retire(self, rollout: Rollout) -> list[str]:
        traffic = self._traffic(rollout.endpoint)
        if traffic.get(rollout.deployment, 0) != 100:
            return []  # never remove anything unless the rollout holds all the traffic
        retired = [name for name in self._deployments(rollout.endpoint) if name != rollout.deployment]
        if any(traffic.get(name, 0) for name in retired):
            return []
        for name in retired:
            self._delete(rollout.endpoint, name)
        return retired

    def roll_back(self, rollout: Rollout, restore_point: dict[str, Any] | None) -> ServedModelRef | None:
        deployments = self._deployments(rollout.endpoint)
        wanted = {d: s for d, s in ((restore_point or {}).get("traffic") or {}).items() if d in deployments}
        current = self._traffic(rollout.endpoint)
        if wanted and current != {**{d: 0 for d in current}, **wanted}:
            self._set_traffic(rollout.endpoint, {d: 0 for d in current} | wanted)
        elif not wanted and any(current.values()):
            self._set_traffic(rollout.endpoint, {d: 0 for d in current})
        if rollout.deployment in deployments and rollout.deployment not in wanted:
            self._delete(rollout.endpoint, rollout.deployment)
        return self.serving(rollout.endpoint)

    # ---------------------------------------------------------------- operations
    def stop(self, endpoint: str) -> bool:
        log.info(
            "Azure ML endpoints are not stopped by mlrelease; delete %s in Azure ML if it must go",
            self._name(endpoint),
        )
        return False

    def status(self) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for endpoint in self.settings.endpoint_names:
            found = self._endpoint(endpoint, create=False)
            served = self.serving(endpoint) if found else None
            result[endpoint] = {
                "url": (found.scoring_uri or "").removesuffix("/score") if found else None,
                "up": found is not None,
                "ready": served is not None,
                "model": served.name if served else None,
                "version": served.version if served else None,
                "release_id": served.release_id if served else None,
                "since": None,
                "azureml_endpoint": self._name(endpoint),
                "traffic": self._traffic(endpoint) if found else {},
                "log": f"az ml online-deployment get-logs --endpoint-name {self._name(endpoint)} --name <deployment>",
            }
        return result
