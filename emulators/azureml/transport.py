"""An azure-core transport that hands every request to an in-process :class:`AzureMLService`.

``MLClient(credential, sub, rg, ws, transport=AzureMLTransport(service), enable_telemetry=False)`` sends
all its ARM calls, and ``online_endpoints.invoke``'s scoring POST, through the transport, whatever host
the URL names, so contract tests run the real SDK without sockets, certificates or a cloud redirect.
It is azure-core's own ``RequestsTransport`` over a ``requests`` session whose adapter calls the
dispatcher: response parsing, streaming and error mapping stay azure-core's. Blob uploads done by the
SDK do not go through it (the storage clients build their own pipelines).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import requests
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import BaseAdapter, HTTPAdapter
from urllib3 import HTTPResponse

from emulators.azureml.service import AzureMLService


def _body_bytes(body: Any) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    if hasattr(body, "read"):
        data = body.read()
        return data.encode() if isinstance(data, str) else bytes(data)
    if isinstance(body, Iterable):
        return b"".join(chunk.encode() if isinstance(chunk, str) else bytes(chunk) for chunk in body)
    raise TypeError(f"Cannot send a request body of type {type(body).__name__} to the emulator")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class _DispatcherAdapter(BaseAdapter):
    """A ``requests`` adapter answering from the dispatcher instead of a socket."""

    def __init__(self, service: AzureMLService) -> None:
        super().__init__()
        self.service = service
        self._builder = HTTPAdapter()

    def send(  # type: ignore[override]
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: Any = None,
    ) -> requests.Response:
        status, headers, body = self.service.handle(
            str(request.method), str(request.url), dict(request.headers), _body_bytes(request.body)
        )
        raw = HTTPResponse(
            body=io.BytesIO(body),
            headers=headers,
            status=status,
            preload_content=False,
            decode_content=False,
            reason=_reason(status),
        )
        return self._builder.build_response(request, raw)

    def close(self) -> None:
        self._builder.close()


class AzureMLTransport(RequestsTransport):
    """``transport=`` for MLClient (and any azure-core client): requests answered by ``service``."""

    def __init__(self, service: AzureMLService, **kwargs: Any) -> None:
        session = requests.Session()
        session.trust_env = False  # no proxies or CA bundles from the environment: nothing leaves the process
        adapter = _DispatcherAdapter(service)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        super().__init__(session=session, session_owner=False, **kwargs)
        self.service = service
