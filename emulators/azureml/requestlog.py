"""``requests.jsonl``: one JSON line per request the Azure ML emulator answered, secrets never written.

Tests assert on what the real ``azure-ai-ml`` SDK sent (the golden call list is built from this file),
so the log must be complete, and it must be safe to attach to a bug report: request headers are not
logged at all (the ARM bearer token and the endpoint key travel in ``Authorization``), response bodies
are not logged (``listKeys`` and ``listSecrets`` answer with keys), JSON body fields named like a key,
secret, password or token are masked, and any secret the emulator itself handed out is replaced by
``***`` wherever it might still appear.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from emulators._state import read_jsonl

SECRET_FIELD = re.compile(r"key|secret|password|token|credential|sas", re.IGNORECASE)
# Field names that contain "key" but are not secrets (ARM and Azure ML vocabulary).
NOT_SECRET_FIELDS = frozenset({"keyType", "authMode", "credentialsType", "secretsType", "keyVault"})
LOGGED_HEADERS = ("azureml-model-deployment", "x-request-id", "x-ms-client-request-id")
MAX_LOGGED_BODY_BYTES = 256 * 1024


def mask(value: Any) -> Any:
    """A copy of a JSON value with the values of secret-looking fields replaced by ``***``."""
    if isinstance(value, dict):
        return {
            k: ("***" if SECRET_FIELD.search(str(k)) and k not in NOT_SECRET_FIELDS else mask(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


class RequestLog:
    """Appends one line per request to ``path``; ``secrets()`` names values to scrub from every line."""

    def __init__(self, path: Path, secrets: Callable[[], Iterable[str]]) -> None:
        self.path = path
        self._secrets = secrets
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(
        self,
        *,
        method: str,
        path: str,
        query: dict[str, Any],
        headers: dict[str, str],
        body: bytes,
        status: int,
        started: float,
        plane: str,
    ) -> None:
        entry: dict[str, Any] = {
            "time": round(started, 3),
            "plane": plane,
            "method": method,
            "path": path,
            "query": mask(query),
        }
        logged_headers = {name: headers[name] for name in LOGGED_HEADERS if name in headers}
        if logged_headers:
            entry["headers"] = logged_headers
        parsed: Any = None
        if body:
            if len(body) > MAX_LOGGED_BODY_BYTES:
                entry["body_bytes"] = len(body)
            else:
                try:
                    parsed = mask(json.loads(body))
                except (ValueError, UnicodeDecodeError):
                    entry["body_bytes"] = len(body)
        entry["body"] = parsed
        entry["status"] = status
        entry["duration_ms"] = round((time.time() - started) * 1000, 1)
        line = json.dumps(entry)
        for secret in self._secrets():
            if secret and len(secret) >= 8:
                line = line.replace(secret, "***")
                line = line.replace(json.dumps(secret)[1:-1], "***")
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")

    def entries(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path)
