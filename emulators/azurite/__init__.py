"""Microsoft's Azure Storage emulator (Azurite, Blob service) behind a request-logging proxy.

The cloud audit store keeps its records in Azure Blob Storage; tests and ``make demo-cloud`` run it
against Azurite, the emulator Microsoft publishes on npm, so the real ``azure-storage-blob`` client and
the Airflow provider's ``WasbHook`` talk real Blob-service HTTP. Like every emulator here it records the
requests it received in ``HOME/emulators/azurite/requests.jsonl`` (secrets never written), which Azurite
itself does not do, so a small proxy sits in front of it. Start it with :func:`start` (or
``python -m emulators.azurite start --home H``); the runtime package ``mlrelease`` never imports it.
"""

from __future__ import annotations

from emulators.azurite.control import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    Azurite,
    connection_string,
    running,
    start,
    stop,
)
from emulators.azurite.install import AZURITE_VERSION, ensure_installed

__all__ = [
    "ACCOUNT_KEY",
    "ACCOUNT_NAME",
    "AZURITE_VERSION",
    "Azurite",
    "connection_string",
    "ensure_installed",
    "running",
    "start",
    "stop",
]
