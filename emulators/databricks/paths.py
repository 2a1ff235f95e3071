"""Where workspace paths live on disk, as a cluster's FUSE mounts would show them.

A Databricks cluster sees Unity Catalog volumes under ``/Volumes`` and workspace files under
``/Workspace``. The emulator keeps both trees under its state directory, so a job, the Files API and
the tests all agree on where ``/Volumes/main/mlrelease/files/x`` is.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

VOLUMES_PREFIXES = ("dbfs:/Volumes/", "/Volumes/")
WORKSPACE_PREFIXES = ("/Workspace/",)


class PathError(ValueError):
    """A workspace path that cannot be mapped (relative, '..', outside /Volumes and /Workspace)."""


class WorkspaceTree:
    """The emulator's /Volumes and /Workspace trees under ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        self.volumes = state_dir / "volumes"
        self.workspace = state_dir / "workspace"

    def ensure(self) -> None:
        self.volumes.mkdir(parents=True, exist_ok=True)
        self.workspace.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def is_mapped(value: str) -> bool:
        return value.startswith(VOLUMES_PREFIXES + WORKSPACE_PREFIXES) or value in (
            "/Volumes",
            "dbfs:/Volumes",
            "/Workspace",
        )

    def to_disk(self, path: str) -> Path:
        """``/Volumes/a/b`` or ``dbfs:/Volumes/a/b`` -> ``<state>/volumes/a/b``; ``/Workspace/x`` likewise."""
        if path.startswith("dbfs:/Volumes"):
            path = path[len("dbfs:") :]
        for prefix, root in (("/Volumes", self.volumes), ("/Workspace", self.workspace)):
            if path == prefix or path.startswith(prefix + "/"):
                return root.joinpath(*_safe_parts(path[len(prefix) :], path))
        raise PathError(f"Path {path!r} is neither under /Volumes nor under /Workspace")

    def volume_file(self, path: str) -> Path:
        """A Files API path: ``/Volumes/<catalog>/<schema>/<volume>/...`` only."""
        if path.startswith("dbfs:/Volumes"):
            path = path[len("dbfs:") :]
        if not (path == "/Volumes" or path.startswith("/Volumes/")):
            raise PathError(
                f"The Files API serves Unity Catalog volumes only: {path!r} is not "
                "/Volumes/<catalog>/<schema>/<volume>/<path>"
            )
        return self.to_disk(path)

    def to_workspace_path(self, disk: Path) -> str:
        """The inverse of :meth:`to_disk` for paths under the volumes or workspace tree."""
        for prefix, root in (("/Volumes", self.volumes), ("/Workspace", self.workspace)):
            try:
                relative = disk.relative_to(root)
            except ValueError:
                continue
            text = relative.as_posix()
            return prefix if text == "." else f"{prefix}/{text}"
        raise PathError(f"{disk} is outside the emulator's /Volumes and /Workspace trees")

    def map_parameter(self, value: str) -> str:
        """A job parameter that is a whole /Volumes or /Workspace path becomes its on-disk path."""
        if not self.is_mapped(value):
            return value
        try:
            return str(self.to_disk(value))
        except PathError:
            return value


def _safe_parts(relative: str, original: str) -> list[str]:
    parts = [p for p in PurePosixPath("/" + relative).parts[1:] if p not in ("", ".")]
    if ".." in parts:
        raise PathError(f"Path {original!r} contains '..'")
    return parts
