"""The Files API (``/api/2.0/fs/...``) on the emulator's /Volumes tree.

MLflow stores artifacts under a UC-volume location (``dbfs:/Volumes/...``) through databricks-sdk's
Files API client, and the project puts its data, job file and wheel on a volume the same way. The SDK
asks for a presigned download URL first (``create-download-url``) and reads the file from that URL
without workspace credentials, so the emulator signs short-lived URLs to its own ``/emulator/presigned``
route; uploads below the SDK's multipart threshold (50 MB) are a single ``PUT``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import tempfile
import time
from email.utils import formatdate
from pathlib import Path
from urllib.parse import urlencode

from emulators.databricks.paths import PathError, WorkspaceTree
from emulators.databricks.wire import ApiError, Request, Response, json_response

log = logging.getLogger(__name__)

FILES_PREFIX = "/api/2.0/fs/files"
DIRECTORIES_PREFIX = "/api/2.0/fs/directories"
PRESIGNED_ROUTE = "/emulator/presigned"
PRESIGNED_TTL_SECONDS = 3600
DIRECTORY_PAGE_SIZE = 1000


class FilesApi:
    """Files and directories of /Volumes, plus presigned download URLs."""

    def __init__(self, tree: WorkspaceTree, base_url: str) -> None:
        self.tree = tree
        self.base_url = base_url
        self._secret = secrets.token_bytes(32)

    # ---- routing -------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        path = request.path
        if path == PRESIGNED_ROUTE and request.method in ("GET", "HEAD"):
            return self.presigned_get(request)
        if path == "/api/2.0/fs/create-download-url" and request.method in ("POST", "GET"):
            return self.create_download_url(request)
        if path.startswith(FILES_PREFIX + "/"):
            target = path[len(FILES_PREFIX) :]
            if request.method == "PUT":
                return self.put_file(target, request)
            if request.method in ("GET", "HEAD"):
                return self.get_file(target, request)
            if request.method == "DELETE":
                return self.delete_file(target)
            if request.method == "POST" and request.query.get("action"):
                # Multipart uploads (files above 50 MB): not emulated. A 501 makes the SDK walk on to the
                # single-shot PUT, which takes up to 5 GiB.
                raise ApiError(
                    501,
                    "NOT_IMPLEMENTED",
                    f"Multipart upload action {request.query['action']!r} is not emulated; "
                    "upload in a single PUT",
                )
        if path.startswith(DIRECTORIES_PREFIX + "/"):
            target = path[len(DIRECTORIES_PREFIX) :]
            if request.method == "GET":
                return self.list_directory(target, request)
            if request.method == "HEAD":
                return self.directory_metadata(target)
            if request.method == "PUT":
                return self.create_directory(target)
            if request.method == "DELETE":
                return self.delete_directory(target)
        raise ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{request.method} {path}'")

    def _disk(self, path: str) -> Path:
        try:
            return self.tree.volume_file(path)
        except PathError as e:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", str(e)) from e

    # ---- files ---------------------------------------------------------------------------------

    def put_file(self, path: str, request: Request) -> Response:
        disk = self._disk(path)
        overwrite = request.query.get("overwrite", "false").lower() == "true"
        if disk.is_dir():
            raise ApiError(409, "ALREADY_EXISTS", f"{path} is a directory; delete it or upload elsewhere")
        if disk.exists() and not overwrite:
            raise ApiError(
                409, "ALREADY_EXISTS", f"The file being created already exists: {path}. Pass overwrite=true."
            )
        disk.parent.mkdir(parents=True, exist_ok=True)
        # Write beside and rename, so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=disk.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as out:
            out.write(request.body)
        os.replace(tmp, disk)
        log.info("Files API: stored %s (%s bytes)", path, len(request.body))
        return Response(204)

    def get_file(self, path: str, request: Request) -> Response:
        disk = self._disk(path)
        if not disk.is_file():
            if request.method == "HEAD":
                return Response(404)
            raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist")
        return _file_response(disk, request)

    def delete_file(self, path: str) -> Response:
        disk = self._disk(path)
        if not disk.is_file():
            raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist")
        disk.unlink()
        return Response(204)

    # ---- directories ---------------------------------------------------------------------------

    def list_directory(self, path: str, request: Request) -> Response:
        disk = self._disk(path)
        if not disk.is_dir():
            raise ApiError(404, "NOT_FOUND", f"The directory {path} does not exist")
        entries = sorted(p for p in disk.iterdir() if not p.name.startswith(".upload-"))
        try:
            start = int(request.query.get("page_token") or 0)
            size = int(request.query.get("page_size") or DIRECTORY_PAGE_SIZE)
        except ValueError as e:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", f"Bad page_token or page_size: {e}") from e
        page = entries[start : start + size]
        contents = []
        for entry in page:
            stat = entry.stat()
            item = {
                "path": self.tree.to_workspace_path(entry) + ("/" if entry.is_dir() else ""),
                "is_directory": entry.is_dir(),
                "name": entry.name,
                "last_modified": int(stat.st_mtime * 1000),
            }
            if not entry.is_dir():
                item["file_size"] = stat.st_size
            contents.append(item)
        answer: dict = {"contents": contents} if contents else {}
        if start + size < len(entries):
            answer["next_page_token"] = str(start + size)
        return json_response(answer)

    def directory_metadata(self, path: str) -> Response:
        return Response(200 if self._disk(path).is_dir() else 404)

    def create_directory(self, path: str) -> Response:
        disk = self._disk(path)
        if disk.is_file():
            raise ApiError(409, "ALREADY_EXISTS", f"{path} exists and is a file")
        disk.mkdir(parents=True, exist_ok=True)
        return Response(204)

    def delete_directory(self, path: str) -> Response:
        disk = self._disk(path)
        if not disk.is_dir():
            raise ApiError(404, "NOT_FOUND", f"The directory {path} does not exist")
        if any(disk.iterdir()):
            raise ApiError(
                409, "DIRECTORY_NOT_EMPTY", f"The directory {path} is not empty; delete its contents first"
            )
        disk.rmdir()
        return Response(204)

    # ---- presigned URLs ------------------------------------------------------------------------

    def sign(self, workspace_path: str) -> str:
        """A URL that reads ``workspace_path`` without workspace credentials, valid for an hour."""
        expires = str(int(time.time()) + PRESIGNED_TTL_SECONDS)
        query = {"path": workspace_path, "expires": expires, "sig": self._signature(workspace_path, expires)}
        return f"{self.base_url}{PRESIGNED_ROUTE}?{urlencode(query)}"

    def _signature(self, path: str, expires: str) -> str:
        return hmac.new(self._secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def create_download_url(self, request: Request) -> Response:
        path = request.param("path")
        if not path:
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "create-download-url needs 'path'")
        if not self._disk(path).is_file():
            raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist")
        return json_response({"url": self.sign(path), "headers": []})

    def presigned_get(self, request: Request) -> Response:
        path, expires, sig = (request.query.get(k, "") for k in ("path", "expires", "sig"))
        if not hmac.compare_digest(self._signature(path, expires), sig):
            raise ApiError(403, "PERMISSION_DENIED", "Presigned URL signature does not match")
        if not expires.isdigit() or int(expires) < time.time():
            # Cloud storage answers 403 for an expired URL; the SDK then asks for a new one.
            raise ApiError(403, "PERMISSION_DENIED", "Request has expired")
        disk = self._disk(path)
        if not disk.is_file():
            raise ApiError(404, "NOT_FOUND", f"The file {path} does not exist")
        return _file_response(disk, request)


def _file_response(disk: Path, request: Request) -> Response:
    stat = disk.stat()
    headers = {
        "Content-Type": "application/octet-stream",
        "Last-Modified": formatdate(stat.st_mtime, usegmt=True),
        "Accept-Ranges": "bytes",
    }
    size = stat.st_size
    byte_range = _parse_range(request.headers.get("range"), size)
    if request.method == "HEAD":
        headers["Content-Length"] = str(size)
        return Response(200, b"", headers)
    if byte_range is None:
        with disk.open("rb") as f:
            return Response(200, f.read(), headers)
    start, end = byte_range
    with disk.open("rb") as f:
        f.seek(start)
        data = f.read(end - start + 1)
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(206, data, headers)


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> inclusive (start, end); None for a whole-file read."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    try:
        if first == "":
            start, end = max(size - int(last), 0), size - 1
        else:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
    except ValueError:
        return None
    if start >= size or start > end:
        raise ApiError(416, "INVALID_PARAMETER_VALUE", f"Range {header} is outside the file ({size} bytes)")
    return start, end
