"""A small HTTP reverse proxy on loopback that injects faults, for tests.

:class:`FaultProxy` forwards every request (method, path, query, headers with ``Host`` set to
the upstream, body) to an upstream base URL and returns the upstream's status, headers and body.
Its mode can be changed at any time from any thread:

- :meth:`FaultProxy.passthrough`: forward faithfully (the initial mode);
- :meth:`FaultProxy.fail_with`: answer ``status`` without contacting upstream, for ``count``
  requests (then back to passthrough) or until changed (``count=None``);
- :meth:`FaultProxy.hang`: wait ``seconds`` before forwarding, to trigger client timeouts.
- :meth:`FaultProxy.reset`: read the request, then drop the connection with a TCP reset
  (``SO_LINGER`` 0), for ``count`` requests or until changed.
  A mode change or :meth:`FaultProxy.stop` releases waiting requests at once.

``requests`` counts every request the proxy received, whatever the mode; ``forwarded`` counts
those sent upstream. Put it in front of the reference IdP by pointing a token URL at
``proxy.rewrite(idp.token_url)`` (the IdP's issuer stays the IdP's own URL).
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

__all__ = ["FaultProxy"]

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


class FaultProxy:
    """Threaded reverse proxy to ``upstream`` (``http://host:port[/prefix]``); a context manager."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"fault proxy: upstream must be an http:// URL, got {upstream!r}")
        self.upstream = upstream.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 80
        self._netloc = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self._upstream_timeout = upstream_timeout
        self._lock = threading.Lock()
        self._mode = "passthrough"
        self._status = 503
        self._remaining: int | None = None
        self._hang_seconds = 0.0
        self._wake = threading.Event()
        self._requests = 0
        self._forwarded = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- modes -------------------------------------------------------------------------------

    def passthrough(self) -> None:
        """Forward every request faithfully."""
        self._set_mode("passthrough")

    def fail_with(self, status: int = 503, count: int | None = None) -> None:
        """Answer ``status`` (JSON error, upstream not contacted) ``count`` times or forever."""
        if count is not None and count < 1:
            raise ValueError("fault proxy: count must be >= 1 or None")
        self._set_mode("fail", status=status, count=count)

    def hang(self, seconds: float) -> None:
        """Hold every request ``seconds`` before forwarding it (released early by a mode change)."""
        self._set_mode("hang", seconds=seconds)

    def reset(self, count: int | None = None) -> None:
        """Answer nothing: reset the connection (TCP RST) ``count`` times or until changed."""
        if count is not None and count < 1:
            raise ValueError("fault proxy: count must be >= 1 or None")
        self._set_mode("reset", count=count)

    def _set_mode(
        self, mode: str, *, status: int = 503, count: int | None = None, seconds: float = 0.0
    ) -> None:
        with self._lock:
            self._mode, self._status, self._remaining = mode, status, count
            self._hang_seconds = seconds
            wake, self._wake = self._wake, threading.Event()
        wake.set()

    # -- counters and addresses --------------------------------------------------------------

    @property
    def requests(self) -> int:
        """Requests received, in any mode."""
        with self._lock:
            return self._requests

    @property
    def forwarded(self) -> int:
        """Requests sent upstream."""
        with self._lock:
            return self._forwarded

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the proxy's base URL (maps to ``upstream``)."""
        if self._server is None:
            raise RuntimeError("fault proxy: not started; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def rewrite(self, upstream_url: str) -> str:
        """The proxy URL for an upstream URL (e.g. ``idp.token_url``)."""
        parts = urlsplit(upstream_url)
        path = parts.path
        if self._prefix and path.startswith(self._prefix):
            path = path[len(self._prefix) :]
        base = urlsplit(self.url)
        return urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        if self._server is not None:
            return self
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        with self._lock:
            self._mode = "stopped"
            wake = self._wake
        wake.set()
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- per request -------------------------------------------------------------------------

    def _decide(self) -> tuple[str, int, float, threading.Event]:
        """Count the request and return (action, status, hang seconds, wake event)."""
        with self._lock:
            self._requests += 1
            mode = self._mode
            if mode in ("fail", "reset") and self._remaining is not None:
                self._remaining -= 1
                if self._remaining <= 0:
                    self._mode, self._remaining = "passthrough", None
            return mode, self._status, self._hang_seconds, self._wake

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        with self._lock:
            self._forwarded += 1
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._upstream_timeout)
        try:
            conn.putrequest(method, self._prefix + path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", self._netloc)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            return response.status, response.reason, response.getheaders(), data
        finally:
            conn.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        """Silence per-request logging (it would print request lines to stderr)."""

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _handle(self) -> None:
        body = self._read_body()
        action, status, seconds, wake = self.owner._decide()
        if action == "hang":
            wake.wait(seconds)
            if self.owner._server is None:  # stopped while hanging: drop the connection
                self.close_connection = True
                return
        elif action == "fail":
            payload = json.dumps(
                {"error": "temporarily_unavailable", "error_description": "injected fault"}
            ).encode()
            self._reply(status, None, [("Content-Type", "application/json")], payload)
            return
        elif action == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        elif action == "stopped":
            self.close_connection = True
            return
        headers = [
            (k, v)
            for k, v in self.headers.items()
            if k.lower() not in _HOP_BY_HOP and k.lower() not in ("host", "content-length")
        ]
        try:
            result = self.owner._forward(self.command, self.path, headers, body)
        except OSError as exc:
            payload = json.dumps({"error": "bad_gateway", "error_description": str(exc)}).encode()
            self._reply(502, None, [("Content-Type", "application/json")], payload)
            return
        self._reply(*result)

    def _reply(
        self, status: int, reason: str | None, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        names = {name.lower() for name, _ in headers}
        try:
            self.log_request(status)
            self.send_response_only(status, reason)
            if "date" not in names:  # upstream's own Date is kept (clock-skew checks read it)
                self.send_header("Date", self.date_time_string())
            for name, value in headers:
                lower = name.lower()
                if lower in _HOP_BY_HOP or (lower == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except OSError:  # the client gave up (timeout): nothing left to answer
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle
