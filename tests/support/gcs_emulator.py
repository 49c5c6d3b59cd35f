"""Cloud Storage on loopback for whole-system tests: gcp-storage-emulator behind a front that
verifies every bearer token against what :class:`~keyless.testing.gcp_sts.GcpSts` issued.

The emulator (``gcp-storage-emulator``, in memory) accepts any request; the front is what makes
it a fair stand-in for Cloud Storage: each request must carry ``Authorization: Bearer`` with a
token the STS fixture issued, not expired (401 otherwise, as Cloud Storage answers), and a
downscoped token's access boundary must allow the bucket/object (403). Accepted requests are
forwarded unchanged (the ``Host`` header too, so the emulator's resumable-upload ``Location``
and media links point back at the front), minus the ``Authorization`` header.

google-cloud-storage reaches it through ``STORAGE_EMULATOR_HOST`` (:meth:`GcsStorage.env`) and
still sends the credentials it was given. :attr:`GcsStorage.requests` records, per request,
method, bucket, object, the principal and kind of the token (never the token) and the status.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit

from gcp_storage_emulator.handlers import buckets  # type: ignore[import-untyped]
from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]

from keyless.delivery.loopback import LoopbackHttpServer, LoopbackService
from keyless.testing.gcp_sts import GcpSts, StorageRefused
from keyless.testing.ports import free_ports
from tests.support.storage_front import FrontHandler

__all__ = ["GcsStorage"]

#: (pattern, group of the bucket, group of the object or None) for the JSON API's routes
_ROUTES = (
    re.compile(r"^/(?:upload|download)?/?storage/v1/b/([^/]+)/o/(.+?)(?:/(?:acl|compose))?$"),
    re.compile(r"^/(?:upload/)?storage/v1/b/([^/]+)(?:/o)?(?:/[a-zA-Z]+)?$"),
)
_HOP_HEADERS = {"authorization", "connection", "keep-alive", "transfer-encoding",
                "proxy-authorization", "te", "upgrade"}


def _target(path: str, query: Mapping[str, list[str]]) -> tuple[str | None, str | None]:
    """(bucket, object) a JSON API request's path and query name (an upload's object may be
    in its body instead: :func:`_upload_name`). ``(None, None)`` for project-level requests
    (bucket listing and creation)."""
    for pattern in _ROUTES:
        match = pattern.match(path)
        if match:
            bucket = unquote(match.group(1))
            name = unquote(match.group(2)) if match.lastindex and match.lastindex > 1 else None
            return bucket, name or (query.get("name") or [None])[0]
    return None, None


def _upload_name(headers: Mapping[str, str], body: bytes) -> str | None:
    """The object name in an upload's metadata: the JSON body of a resumable upload's first
    request, or the first (JSON) part of a multipart one."""
    kind = headers.get("content-type", "")
    if kind.startswith("application/json"):
        document = body
    elif kind.startswith("multipart/"):
        match = re.search(rb"\r?\n\r?\n(\{.*?\})\r?\n--", body, re.DOTALL)
        document = match.group(1) if match else b""
    else:
        return None
    try:
        name = json.loads(document or b"null")
    except ValueError:
        return None
    return str(name["name"]) if isinstance(name, dict) and name.get("name") else None


class GcsStorage(LoopbackService):
    """gcp-storage-emulator (in memory) behind the verifying front; see the module doc.
    ``with GcsStorage(sts) as gcs:`` starts both and stops them; :attr:`url` is the front's."""

    def __init__(self, sts: GcpSts) -> None:
        self.sts = sts
        self.requests: list[dict[str, Any]] = []
        self._uploads: dict[str, str] = {}  # resumable upload id -> object name
        self._lock = threading.Lock()
        self._emulator_port = free_ports(1)[0]
        self._emulator: Any = None
        self._server = LoopbackHttpServer(FrontHandler, component="gcs emulator front",
                                         attributes={"storage": self}, request_timeout=60)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._emulator is None:
            self._emulator = create_server("127.0.0.1", self._emulator_port, in_memory=True)
            self._emulator.start()
        return super().start()

    def stop(self) -> None:
        super().stop()
        if self._emulator is not None:
            self._emulator.stop()
            self._emulator = None

    def env(self) -> dict[str, str]:
        """The variable google-cloud-storage reads to talk to this front."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    # ------------------------------------------------------------------ setup, no bearer
    @property
    def _direct(self) -> str:
        return f"http://127.0.0.1:{self._emulator_port}"

    def create_bucket(self, name: str) -> None:
        """Create bucket ``name`` straight on the emulator (test setup)."""
        buckets.create_bucket(name, self._emulator._storage)

    def put_object(self, bucket: str, name: str, data: bytes) -> None:
        """Upload ``data`` as ``bucket/name`` straight to the emulator (test setup)."""
        url = (f"{self._direct}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
               f"?uploadType=media&name={quote(name, safe='')}")
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def get_object(self, bucket: str, name: str) -> bytes | None:
        """``bucket/name``'s bytes straight from the emulator, or None if there is none."""
        url = (f"{self._direct}/download/storage/v1/b/{quote(bucket, safe='')}/o/"
               f"{quote(name, safe='')}?alt=media")
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return bytes(answer.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    # ------------------------------------------------------------------ the front
    def handle(self, method: str, target: str, headers: Mapping[str, str],
               body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Verify the bearer, then forward to the emulator; (status, headers, body)."""
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        bucket, name = _target(parts.path, query)
        upload_id = (query.get("upload_id") or [None])[0]
        if bucket and name is None and parts.path.startswith("/upload/"):
            with self._lock:
                name = self._uploads.get(upload_id or "") or _upload_name(headers, body)
        record: dict[str, Any] = {"method": method, "bucket": bucket, "object": name,
                                  "principal": None, "kind": None}
        try:
            action = {"GET": "get", "HEAD": "get", "DELETE": "delete"}.get(method, "create")
            # a request naming no bucket (list or create buckets) needs a live token that is
            # not downscoped: no boundary rule makes bucket "" available
            issued = self.sts.authorize_storage(headers, bucket or "", name, action=action)
            record.update(principal=issued.principal, kind=issued.kind)
        except StorageRefused as refused:
            record["status"] = refused.status
            self._record(record)
            return refused.status, [("Content-Type", "application/json")], \
                json.dumps(refused.body).encode()
        status, answer_headers, payload = self._forward(method, target, headers, body)
        record["status"] = status
        location = dict((k.lower(), v) for k, v in answer_headers).get("location")
        started = (parse_qs(urlsplit(location).query).get("upload_id") or [None])[0] \
            if location else None
        if started and name:  # a resumable upload: its later requests name only the upload
            with self._lock:
                self._uploads[started] = name
        self._record(record)
        return status, answer_headers, payload

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(record)

    def _forward(self, method: str, target: str, headers: Mapping[str, str],
                 body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self._emulator_port, timeout=30)
        try:
            forwarded = {k: v for k, v in headers.items() if k not in _HOP_HEADERS}
            connection.request(method, target, body=body or None, headers=forwarded)
            answer = connection.getresponse()
            payload = answer.read()
            kept = [(k, v) for k, v in answer.getheaders()
                    if k.lower() not in _HOP_HEADERS and k.lower() != "content-length"]
            return answer.status, kept, payload
        finally:
            connection.close()
