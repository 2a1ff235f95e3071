"""The emulator process: Azurite's blob service as a child, and a logging reverse proxy in front of it.

Azurite keeps no request log an assertion could read, and its own access log prints URLs with their
SAS signatures, so it runs ``--silent`` on a private loopback port and clients are given the proxy's
port instead. The proxy forwards every request unchanged (Shared Key signatures cover the path, the
query and the ``x-ms-*`` headers, which it does not touch; it keeps ``Host`` as the client sent it) and
appends one JSON line per request to ``requests.jsonl``: method, decoded path, query with signatures
masked, the conditional headers (what a test needs to see that a write could not overwrite), and the
body: short text bodies as text, blob content only as its size and sha256. ``Authorization`` and the
account key are never written.

``/emulator/health`` is answered by the proxy itself (not logged, not forwarded).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from emulators._process import free_port
from emulators._server import HOP_BY_HOP_HEADERS, LoopbackHandler, LoopbackHTTPServer, serve_until_signalled

log = logging.getLogger(__name__)

ACCOUNT_NAME = "devstoreaccount1"
# Azurite's well-known development key (published in Microsoft's docs): it opens only the emulator.
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HEALTH_ROUTE = "/emulator/health"
SECRET_QUERY_KEYS = {"sig", "signature", "sktid", "skoid"}
SECRET_WORDS = ("key", "token", "secret", "password", "signature")
LOGGED_HEADERS = (
    "x-ms-blob-type",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "x-ms-blob-condition-appendpos",
    "x-ms-blob-condition-maxsize",
    "x-ms-range",
    "range",
    "x-ms-version",
)
HOP_BY_HOP = HOP_BY_HOP_HEADERS | {"trailers", "expect"}
CONTENT_COMPS = {"appendblock", "block", "page"}
MAX_TEXT_BODY_CHARS = 1000
COPY_CHUNK_BYTES = 256 * 1024
UPSTREAM_TIMEOUT_SECONDS = 300.0
UPSTREAM_START_TIMEOUT_SECONDS = 60.0


def state_dir_for(home: Path) -> Path:
    return home / "emulators" / "azurite"


def mask_query(query: dict[str, Any]) -> dict[str, Any]:
    """The query with SAS signatures and anything secret-looking replaced by ``***``."""
    return {
        k: ("***" if k.lower() in SECRET_QUERY_KEYS or any(word in k.lower() for word in SECRET_WORDS) else v)
        for k, v in query.items()
    }


def is_blob_content(method: str, query: dict[str, Any], headers: dict[str, str]) -> bool:
    """Does this request's body carry blob data (Put Blob, Append Block, Put Block, Put Page)?"""
    if method != "PUT":
        return False
    return query.get("comp") in CONTENT_COMPS or ("x-ms-blob-type" in headers and "comp" not in query)


class RequestLog:
    """``requests.jsonl``: one line per proxied request, with no credential in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(
        self,
        method: str,
        raw_path: str,
        headers: dict[str, str],
        body: bytes,
        status: int,
        started: float,
    ) -> None:
        target = urlsplit(raw_path)
        query = {
            k: v[0] if len(v) == 1 else v for k, v in parse_qs(target.query, keep_blank_values=True).items()
        }
        entry: dict[str, Any] = {
            "time": round(started, 3),
            "method": method,
            "path": unquote(target.path),
            "query": mask_query(query),
            "headers": {name: headers[name] for name in LOGGED_HEADERS if name in headers},
            "body": None,
        }
        if body:
            entry["body_bytes"] = len(body)
            if is_blob_content(method, query, headers):
                entry["body_sha256"] = hashlib.sha256(body).hexdigest()
            else:
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError:
                    entry["body_sha256"] = hashlib.sha256(body).hexdigest()
                else:
                    entry["body"] = text[:MAX_TEXT_BODY_CHARS] + (
                        "…" if len(text) > MAX_TEXT_BODY_CHARS else ""
                    )
        entry["status"] = status
        entry["duration_ms"] = round((time.time() - started) * 1000, 1)
        line = json.dumps(entry).replace(ACCOUNT_KEY, "***")
        with self._lock, self.path.open("a") as out:
            out.write(line + "\n")


class ProxyHandler(LoopbackHandler):
    server: ProxyServer

    def _dispatch(self) -> None:
        started = time.time()
        if self.path.split("?", 1)[0] == HEALTH_ROUTE:
            self._answer_health()
            return
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        forward = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(
            "127.0.0.1", self.server.upstream_port, timeout=UPSTREAM_TIMEOUT_SECONDS
        )
        try:
            try:
                upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in forward.items():
                    upstream.putheader(name, value)
                if chunked:
                    # The client sent no Content-Length (and signed none): forward the body chunked as well.
                    upstream.putheader("Transfer-Encoding", "chunked")
                    upstream.endheaders()
                    if body:
                        upstream.send(f"{len(body):x}\r\n".encode() + body + b"\r\n")
                    upstream.send(b"0\r\n\r\n")
                else:
                    upstream.endheaders(body or None)
                response = upstream.getresponse()
            except OSError as e:
                log.warning("Azurite did not answer %s %s: %s", self.command, self.path.split("?")[0], e)
                self.server.request_log.append(self.command, self.path, headers, body, 502, started)
                self._send_simple(502, f"Azurite (port {self.server.upstream_port}) did not answer: {e}")
                return
            # Logged before answering, so a client that reads the log right after its call finds the entry.
            self.server.request_log.append(self.command, self.path, headers, body, response.status, started)
            self._relay(response)
        finally:
            upstream.close()

    def _relay(self, response: http.client.HTTPResponse) -> None:
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        length = response.getheader("Content-Length")
        payload: bytes | None = None
        if not no_body and length is None:
            payload = response.read()  # upstream answered chunked: buffer it and send a length
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() in HOP_BY_HOP or (payload is not None and name.lower() == "content-length"):
                continue
            self.send_header(name, value)
        if payload is not None:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if no_body:
            return
        if payload is not None:
            self.wfile.write(payload)
            return
        while chunk := response.read(COPY_CHUNK_BYTES):
            self.wfile.write(chunk)

    def _send_simple(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _answer_health(self) -> None:
        server = self.server
        data = json.dumps(
            {
                "status": "ok",
                "pid": os.getpid(),
                "port": server.server_address[1],
                "azurite_pid": server.upstream_pid,
                "azurite_port": server.upstream_port,
            }
        ).encode()
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = _dispatch


class ProxyServer(LoopbackHTTPServer):
    def __init__(self, port: int, upstream_port: int, upstream_pid: int, request_log: RequestLog) -> None:
        self.upstream_port = upstream_port
        self.upstream_pid = upstream_pid
        self.request_log = request_log
        super().__init__(port, ProxyHandler)


def _die_with_parent() -> None:
    """In the Azurite child: get SIGTERM if the proxy process dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_for_upstream(process: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + UPSTREAM_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", f"/{ACCOUNT_NAME}?comp=list")
            connection.getresponse().read()  # any answer (403 without a signature) means it serves
            return
        except OSError:
            time.sleep(0.1)
        finally:
            connection.close()
    tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
    state = f"exited with code {process.returncode}" if process.poll() is not None else "did not answer"
    raise RuntimeError(f"Azurite {state} on port {port}; {log_path} ends with:\n{tail}")


def _stop_child(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


def serve(home: Path, port: int, node: str, script: Path, version: str) -> None:
    """Run Azurite and the proxy in the foreground until SIGTERM/SIGINT; write and remove ``state.json``."""
    state_dir = state_dir_for(home)
    data_dir = state_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    azurite_log = state_dir / "azurite.log"
    command = [
        node,
        str(script),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(upstream_port),
        "--location",
        str(data_dir),
        "--skipApiVersionCheck",  # the pinned azure-storage-blob may send a newer x-ms-version
        "--disableTelemetry",
        "--silent",  # its access log would print SAS signatures; the proxy logs instead
    ]
    with azurite_log.open("ab") as log_file:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    try:
        _wait_for_upstream(child, upstream_port, azurite_log)
        httpd = ProxyServer(port, upstream_port, child.pid, RequestLog(state_dir / "requests.jsonl"))
    except BaseException:
        _stop_child(child)
        raise
    state = {
        "pid": os.getpid(),
        "port": port,
        "blob_endpoint": f"http://127.0.0.1:{port}/{ACCOUNT_NAME}",
        "azurite_pid": child.pid,
        "azurite_port": upstream_port,
        "azurite_version": version,
        "state_dir": str(state_dir),
        "data_dir": str(data_dir),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    log.info("Azurite %s serving through http://127.0.0.1:%d (data %s)", version, port, data_dir)
    serve_until_signalled(httpd, state_dir, state, lambda: _stop_child(child))
