"""The Azure ML model registry (``azure-ai-ml``'s ``MLClient.models``) behind the ``ModelRegistry`` contract.

What is registered is what serves: the winner's portable model document (the scoring containers need no
Spark), uploaded content-addressed into the workspace's default datastore and registered by datastore URI
(``azureml://datastores/.../paths/...``), with the same lineage as the local registry as tags (mutable
in Azure ML, so the lineage also goes into properties, which are not).

Model versions in Azure ML are immutable and numbered by the caller: a version is ``max + 1``; if another
writer took that number first (HTTP 409), the registry is read again. Idempotent per training run: a
retry finds the version whose ``mlrelease.child_run_id`` tag names the same child run.

Azure ML has no MLflow-style aliases. "prod" is what the prod endpoint's traffic serves, and the audit
store keeps every move (``alias_moved`` events, appended by the release): :meth:`get_by_alias` reads the
latest one, and :meth:`set_alias` has nothing to write.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlrelease.backends.azure.workspace import AzureWorkspace
from mlrelease.backends.base import AuditLog, ModelVersionRef
from mlrelease.domain.release import ALIAS_MOVED
from mlrelease.tags import PORTABLE_MODEL_ARTIFACT, TAG_LINEAGE_CHILD_RUN_ID, TAG_SOURCE_MODEL_URI

log = logging.getLogger(__name__)

MODEL_KIND = "models"
MAX_VERSION_RACES = 5
# Azure ML refuses tag/property values over this length; the lineage has none, but a gate decision
# with many reasons might: it is cut, and the full text stays in the audit store.
MAX_VALUE_CHARS = 5000


def _text_values(tags: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v)[:MAX_VALUE_CHARS] for k, v in tags.items() if v is not None}


class AzureMLRegistry:
    def __init__(
        self,
        workspace: AzureWorkspace,
        download_artifact: Callable[[str, str, Path], Path],
        audit: AuditLog,
    ) -> None:
        """``download_artifact(run_id, artifact path, dst dir)`` is the experiment tracker's."""
        self.workspace = workspace
        self.download_artifact = download_artifact
        self.audit = audit

    @staticmethod
    def _ref(model: Any) -> ModelVersionRef:
        """``source`` is the MLflow URI of the Spark model (what the training job loads to score the
        champion); the registered asset itself is the portable document at ``model.path``."""
        tags = dict(model.tags or {})
        return ModelVersionRef(
            name=model.name,
            version=str(model.version),
            run_id=tags.get(TAG_LINEAGE_CHILD_RUN_ID),
            source=tags.get(TAG_SOURCE_MODEL_URI) or str(model.path or model.id),
            tags=tags,
        )

    def _versions(self, name: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return list(self.workspace.ml.models.list(name=name))
        except ResourceNotFoundError:
            return []

    def find_version_for_run(self, name: str, run_id: str) -> ModelVersionRef | None:
        mine = [m for m in self._versions(name) if (m.tags or {}).get(TAG_LINEAGE_CHILD_RUN_ID) == run_id]
        return self._ref(min(mine, key=lambda m: int(m.version))) if mine else None

    def register(self, name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> ModelVersionRef:
        """Upload the run's portable model into workspace storage and create the next version by URI."""
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model
        from azure.core.exceptions import HttpResponseError

        with tempfile.TemporaryDirectory(prefix="mlrelease-register-") as tmp:
            local = self.download_artifact(run_id, PORTABLE_MODEL_ARTIFACT, Path(tmp))
            if local.is_dir():
                local = local / Path(PORTABLE_MODEL_ARTIFACT).name
            path = self.workspace.put_once(MODEL_KIND, local.parent)
        values = _text_values({**tags, TAG_SOURCE_MODEL_URI: model_uri})
        for _ in range(MAX_VERSION_RACES):
            if existing := self.find_version_for_run(name, run_id):
                return existing
            versions = [int(m.version) for m in self._versions(name) if str(m.version).isdigit()]
            version = str(max(versions, default=0) + 1)
            model = Model(
                name=name,
                version=version,
                type=AssetTypes.CUSTOM_MODEL,
                path=path,
                description=f"UCI Adult income classifier (>50K) from training run {run_id}; portable model "
                f"{model_uri}",
                tags=values,
                properties=values,
            )
            try:
                created = self.workspace.ml.models.create_or_update(model)
            except HttpResponseError as error:
                if error.status_code == 409:
                    log.info(
                        "Version %s of %s was taken concurrently; reading the registry again", version, name
                    )
                    continue
                raise
            return self._ref(created)
        raise RuntimeError(
            f"could not register {name} for run {run_id}: version numbers were taken {MAX_VERSION_RACES} times "
            "in a row by other writers; clear the task to retry"
        )

    def get_version(self, name: str, version: str) -> ModelVersionRef | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._ref(self.workspace.ml.models.get(name=name, version=str(version)))
        except ResourceNotFoundError:
            return None

    def get_by_alias(self, name: str, alias: str) -> ModelVersionRef | None:
        """The version the latest ``alias_moved`` record names (the audit store is the alias history)."""
        moves = self.audit.events(kind=ALIAS_MOVED, subject=f"{name}:{alias}")
        if not moves:
            return None
        ref = self.get_version(name, str(moves[-1].payload["version"]))
        return (
            ModelVersionRef(ref.name, ref.version, ref.run_id, ref.source, ref.tags, (alias,))
            if ref
            else None
        )

    def set_alias(self, name: str, alias: str, version: str) -> None:
        log.info(
            "Azure ML has no model aliases: %s of %s is version %s as of the audit record the release appends "
            "(mlrelease audit model %s:%s)",
            alias,
            name,
            version,
            name,
            version,
        )

    def version_url(self, ref: ModelVersionRef) -> str:
        return f"https://ml.azure.com/model/{ref.name}:{ref.version}/details?{self.workspace.coordinates.studio_query()}"
