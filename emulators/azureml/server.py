"""The emulator over HTTPS on 127.0.0.1: a threaded HTTP server in front of :class:`AzureMLService`.

The stdlib ``ThreadingHTTPServer`` carries bytes to the dispatcher and back; TLS is terminated per
connection in the handler thread (not in ``accept``), so one slow client cannot stall the others.
``serve`` runs it in the foreground until SIGTERM/SIGINT, writes ``state.json`` (url, port, pid, CA
bundle) once it answers, and on the way out stops every scoring process it started.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from emulators._server import LoopbackHandler, LoopbackHTTPServer, serve_until_signalled
from emulators.azureml.runtime import ScoringLauncher
from emulators.azureml.service import AzureMLService, WorkspaceConfig
from emulators.azureml.tls import ensure_certificates

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 512 * 1024 * 1024


def state_dir_for(home: Path) -> Path:
    return Path(home) / "emulators" / "azureml"


class Handler(LoopbackHandler):
    max_request_bytes = MAX_REQUEST_BYTES
    server: EmulatorHTTPServer

    def _dispatch(self) -> None:
        body = self.read_body_or_refuse()
        if body is None:
            return
        status, headers, payload = self.server.service.handle(
            self.command, self.path, {k: v for k, v in self.headers.items()}, body
        )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class EmulatorHTTPServer(LoopbackHTTPServer):
    def __init__(self, service: AzureMLService, port: int, context: ssl.SSLContext) -> None:
        self.service = service
        self.context = context
        super().__init__(port, Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Runs in the connection's thread: the TLS handshake happens here, not in accept().
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.debug("TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            try:
                tls.close()
            except OSError as e:
                log.debug("Closing the connection from %s: %s", client_address, e)

    def shutdown_request(self, request: socket.socket) -> None:
        try:
            request.close()
        except OSError as e:
            log.debug("Closing a connection: %s", e)


def serve(
    home: Path,
    port: int,
    config: WorkspaceConfig,
    scoring_launcher: ScoringLauncher | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT; write ``state.json`` when ready and remove it on the way out."""
    state_dir = state_dir_for(home)
    state_dir.mkdir(parents=True, exist_ok=True)
    tls = ensure_certificates(state_dir)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server_cert, tls.server_key)
    url = f"https://127.0.0.1:{port}"
    config.public_url = url
    service = AzureMLService(state_dir, config, scoring_launcher)
    if service.blob_store is not None:
        service.blob_store.ensure_container()
    httpd = EmulatorHTTPServer(service, port, context)
    state = {
        "url": url,
        "host": "127.0.0.1",
        "port": port,
        "pid": os.getpid(),
        "ca_bundle": str(tls.ca_cert),
        "state_dir": str(state_dir),
        "subscription_id": config.subscription_id,
        "resource_group": config.resource_group,
        "workspace": config.workspace,
        "location": config.location,
        "aks_computes": list(config.aks_computes),
        "blob_container": config.blob_container,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }

    def stop_scoring() -> None:
        log.info("Stopping: scoring processes first")
        service.close()
        (state_dir / "processes.json").unlink(missing_ok=True)  # none left for stop() to kill

    log.info("Azure ML emulator serving %s (state %s)", url, state_dir)
    serve_until_signalled(httpd, state_dir, state, stop_scoring)
