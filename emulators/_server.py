"""The serving side the emulators share: a threaded loopback HTTP server, run until SIGTERM/SIGINT.

The stdlib ``ThreadingHTTPServer`` is enough for a loopback emulator and lets a handler do what a
framework would hide (drop a connection unanswered, relay bytes untouched). What every emulator needs
around it is the same: HTTP/1.1 keep-alive with idle connections given back, chunked request bodies
(the Azure SDKs send them), a backlog for clients that open many connections at once, and a shutdown
on SIGTERM that lets the emulator stop its own children and withdraw its ``state.json``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from emulators._state import publish_state, withdraw_state

log = logging.getLogger(__name__)

# Headers about one connection, not the request (RFC 9110 7.6.1): a proxy in an emulator must not forward them.
HOP_BY_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


class LoopbackHandler(BaseHTTPRequestHandler):
    """A keep-alive handler that logs at debug level and reads plain or chunked request bodies."""

    protocol_version = "HTTP/1.1"
    timeout = 300  # an idle keep-alive connection gives its thread back after this
    max_request_bytes: int | None = None  # a larger Content-Length is refused (None: no limit)

    def log_message(self, format: str, *args: Any) -> None:
        # Under the emulator's own logger name, and not on stderr for every request.
        logging.getLogger(type(self).__module__).debug("%s " + format, self.client_address[0], *args)

    def read_body(self) -> bytes:
        """The request body; ValueError when its Content-Length is over ``max_request_bytes``."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if self.max_request_bytes is not None and length > self.max_request_bytes:
            raise ValueError(f"Request body of {length} bytes is larger than the emulator takes")
        return self.rfile.read(length) if length else b""

    def read_body_or_refuse(self) -> bytes | None:
        """The request body, or None once a too large one was answered with 413 and the connection set to
        close (its unread bytes would otherwise be taken for the next request)."""
        try:
            return self.read_body()
        except ValueError as e:
            self.send_error(413, str(e))
            self.close_connection = True
            return None


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threaded server bound to 127.0.0.1: an emulator serves this machine's tests and demos only."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # MLflow and the Azure SDKs open many connections at once for parallel transfers

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", port), handler)


def serve_until_signalled(
    httpd: ThreadingHTTPServer, state_dir: Path, state: dict[str, Any], on_stop: Callable[[], None]
) -> None:
    """Publish ``state`` as ``state.json`` and serve until SIGTERM/SIGINT; then close the server, call
    ``on_stop`` (the emulator stops its children) and withdraw ``state.json``.

    The signal handler only asks for the shutdown, from another thread: ``shutdown`` waits for
    ``serve_forever`` to return, which would never happen if it ran in the serving thread itself.
    """
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        if not stopping.is_set():
            stopping.set()
            log.info("Signal %s: stopping", signum)
            threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    publish_state(state_dir, state)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
        try:
            on_stop()
        finally:
            withdraw_state(state_dir)
            log.info("Stopped")
