"""Which model an endpoint serves: one typed reference, and the one rule that says "is X served here?".

Every layer that asks the question uses :class:`ServedModelRef`: the release code (is prod already on
this release? did the rollback take?), the endpoint backends (nothing to deploy? which deployment holds
it?), the scoring services (is this reload a no-op? what do I name in each answer?) and the endpoint
checks (does the score response name the expected model?). One rule, :meth:`ServedModelRef.same_as`,
instead of a comparison rewritten in each of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True)
class ServedModelRef:
    """A registered model version, in the release that put it on an endpoint, from one artifact.

    ``artifact_sha256`` is None where the serving side does not say which bytes it loaded (an answer
    from ``POST /score`` names model, version and release only); versions are strings, as in both
    registries.
    """

    name: str | None
    version: str | None
    release_id: str | None
    artifact_sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", _text(self.name))
        object.__setattr__(self, "version", _text(self.version))
        object.__setattr__(self, "release_id", _text(self.release_id))
        sha = _text(self.artifact_sha256)
        object.__setattr__(self, "artifact_sha256", sha.lower() if sha else None)

    def same_as(self, other: ServedModelRef | None) -> bool:
        """The one rule: same name, version and release; the same bytes where both sides know them.

        A new release of the same version counts as different, so its predictions are logged under
        the new release id.
        """
        if other is None or self.name is None or self.version is None:
            return False
        if (self.name, self.version, self.release_id) != (other.name, other.version, other.release_id):
            return False
        return not (self.artifact_sha256 and other.artifact_sha256) or (
            self.artifact_sha256 == other.artifact_sha256
        )

    def model_dict(self) -> dict[str, str | None]:
        """``{"name", "version"}``: the ``model`` object of every score response and deploy record."""
        return {"name": self.name, "version": self.version}

    def brief(self) -> dict[str, str | None]:
        """What an audit record keeps about a served model."""
        return {"model": self.name, "version": self.version, "release_id": self.release_id}

    def describe(self) -> str:
        return f"{self.name} version {self.version} (release {self.release_id})"

    @classmethod
    def from_document(cls, document: Mapping[str, Any] | None) -> ServedModelRef | None:
        """From any document that names ``model: {name, version}`` and ``release_id`` (a deploy record,
        ``/metadata``, a score response); None when it names no model."""
        if not document:
            return None
        model = document.get("model") or {}
        if not isinstance(model, Mapping) or model.get("name") is None:
            return None
        return cls(
            model.get("name"),
            model.get("version"),
            document.get("release_id"),
            document.get("artifact_sha256"),
        )

    @classmethod
    def from_brief(cls, brief: Mapping[str, Any] | None) -> ServedModelRef | None:
        """The inverse of :meth:`brief`."""
        if not brief or brief.get("model") is None:
            return None
        return cls(brief.get("model"), brief.get("version"), brief.get("release_id"))


def describe(ref: ServedModelRef | None) -> str:
    return ref.describe() if ref else "nothing"
