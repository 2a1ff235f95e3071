"""Install the pinned Azurite from npm once per machine, into a cache outside the repository.

Azurite is a Node program (~190 MB with its dependencies), so it is neither vendored nor installed into
the work tree: the first start runs ``npm install`` into ``~/.cache/mlrelease/azurite-<version>/`` and
later starts reuse it. A file lock makes concurrent pytest processes wait for one install instead of
racing; the install goes to a temporary directory that is renamed into place only once it is complete,
so an interrupted install is never mistaken for a finished one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path

# 3.35.0 is the newest Azurite that runs on Node 20 (3.36 requires Node >= 21, 3.37 Node >= 22).
AZURITE_VERSION = "3.35.0"
INSTALL_TIMEOUT_SECONDS = 900.0
BLOB_SCRIPT = Path("node_modules", "azurite", "dist", "src", "blob", "main.js")
_MARKER = ".mlrelease-installed"


class AzuriteInstallError(RuntimeError):
    """Node/npm are missing or ``npm install azurite`` failed; the message says what to do."""


def cache_root() -> Path:
    """``$MLRELEASE_CACHE_DIR``, else ``$XDG_CACHE_HOME/mlrelease``, else ``~/.cache/mlrelease``."""
    if os.environ.get("MLRELEASE_CACHE_DIR"):
        return Path(os.environ["MLRELEASE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mlrelease"


def install_dir(version: str = AZURITE_VERSION) -> Path:
    return cache_root() / f"azurite-{version}"


def node_executable() -> str:
    node = shutil.which("node")
    if not node:
        raise AzuriteInstallError(
            "Azurite needs Node.js (>= 18) on PATH: install it (e.g. apt-get install nodejs npm) and retry"
        )
    return node


def ensure_installed(version: str = AZURITE_VERSION, timeout: float = INSTALL_TIMEOUT_SECONDS) -> Path:
    """The path of Azurite's blob-service script, installing ``azurite@version`` first if needed."""
    target = install_dir(version)
    script = target / BLOB_SCRIPT
    if (target / _MARKER).exists() and script.exists():
        return script
    node_executable()
    npm = shutil.which("npm")
    if not npm:
        raise AzuriteInstallError("Installing Azurite needs npm on PATH (it comes with Node.js)")
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f"azurite-{version}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be installing: wait for it
        try:
            if (target / _MARKER).exists() and script.exists():
                return script
            staging = target.parent / f"azurite-{version}.partial-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            log_path = target.parent / f"azurite-{version}.install.log"
            started = time.monotonic()
            with log_path.open("w") as log_file:
                result = subprocess.run(
                    [
                        npm,
                        "install",
                        "--prefix",
                        str(staging),
                        "--no-audit",
                        "--no-fund",
                        "--ignore-scripts",
                        f"azurite@{version}",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    env={**os.environ, "npm_config_update_notifier": "false"},
                )
            if result.returncode != 0 or not (staging / BLOB_SCRIPT).exists():
                tail = log_path.read_text(errors="replace")[-3000:]
                shutil.rmtree(staging, ignore_errors=True)
                raise AzuriteInstallError(
                    f"npm install azurite@{version} into {staging} failed (exit {result.returncode}) after "
                    f"{time.monotonic() - started:.0f}s; check that the npm registry is reachable. "
                    f"{log_path} ends with:\n{tail}"
                )
            (staging / _MARKER).write_text(f"azurite@{version}\n")
            shutil.rmtree(target, ignore_errors=True)  # a leftover without the marker
            os.rename(staging, target)
            return script
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
