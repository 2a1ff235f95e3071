"""Request/response values shared by the emulator's routes, and Databricks' error shape.

The routes are plain functions from :class:`Request` to :class:`Response` so that the HTTP handler
alone deals with sockets: it can log every exchange the same way and, for the
``lose_submit_response`` fault, close a connection without writing anything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """An error answered in Databricks' shape ``{"error_code": ..., "message": ...}``."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


@dataclass
class Request:
    method: str
    path: str  # decoded path, without the query string
    raw_path: str  # the request target as sent (still escaped, with the query string)
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict[str, Any]:
        """The JSON body, or {} when there is none (GET with a JSON body is allowed, the trigger sends one)."""
        if not self.body.strip():
            return {}
        try:
            value = json.loads(self.body)
        except ValueError as e:
            raise ApiError(400, "MALFORMED_REQUEST", f"Request body is not valid JSON: {e}") from e
        if not isinstance(value, dict):
            raise ApiError(400, "MALFORMED_REQUEST", "Request body must be a JSON object")
        return value

    def param(self, name: str) -> Any:
        """A parameter from the query string or, failing that, from a JSON body (GET or POST)."""
        if name in self.query:
            return self.query[name]
        try:
            return self.json().get(name)
        except ApiError:
            return None


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False  # close the socket without writing any response


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(value).encode(), {"Content-Type": "application/json"})


def error_response(status: int, error_code: str, message: str) -> Response:
    return json_response({"error_code": error_code, "message": message}, status)
