"""HTTP servers that keyless runs on this machine (dev issuer, credential endpoint, test
fixtures): loopback addresses only, served from a daemon thread, stopped by their owner.

Every such server is guarded against clients that hold a connection without finishing a
request (one thread per connection would otherwise stay blocked forever):

* a **request deadline**: from the moment the server waits for a request on a connection (it
  was accepted, or the previous answer on it was sent), the client has
  :attr:`LoopbackHttpServer.request_timeout` seconds to send the whole request (request line,
  headers and the body the handler reads); past it the connection is closed, unanswered, and
  its thread ends. Each write of an answer is bounded by the same time;
* a **connection bound**: at most :attr:`LoopbackHttpServer.max_connections` connections are
  served at once; one more is answered ``503`` (JSON ``{"code", "error", "message"}``,
  ``Retry-After: 1``) and closed at once, without a thread.

:meth:`QuietHandler.read_body` reads a request body by a strictly checked ``Content-Length``.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self, cast

from ..config import is_loopback
from ..errors import ConfigError, KeylessError

__all__ = ["MAX_CONNECTIONS", "REQUEST_TIMEOUT_SECONDS", "BodyRefused", "LoopbackHttpServer",
           "LoopbackService", "QuietHandler", "is_loopback", "socket_address"]

#: Default seconds a client has to send a whole request (see the module docstring).
REQUEST_TIMEOUT_SECONDS = 10.0
#: Default number of connections served at once (see the module docstring).
MAX_CONNECTIONS = 32
_DIGITS = re.compile(r"[0-9]+")


def socket_address(address: Any) -> tuple[str, int]:
    """``(host, port)`` of a socket address (IPv6 ones have four fields)."""
    return str(address[0]), int(address[1])


def _handle_error(server: ThreadingHTTPServer, request: object,
                  client_address: tuple[str, int]) -> None:
    """A client that hung up mid-answer (pyarrow drops idle connections) is not an error
    worth a traceback; anything else goes to the standard handler."""
    if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
        return
    ThreadingHTTPServer.handle_error(server, request, client_address)  # type: ignore[arg-type]


class _DeadlineReader(io.RawIOBase):
    """Reads a socket, each read bounded by what is left until the current request's deadline
    (:class:`TimeoutError` once it passed); the socket's own timeout, which bounds writes, is
    ``timeout`` between reads."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout
        self._deadline = time.monotonic() + timeout

    def restart(self) -> None:
        """Start the deadline of the next request: ``timeout`` seconds from now."""
        self._deadline = time.monotonic() + self._timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete within the request timeout")
        self._sock.settimeout(min(left, self._timeout))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._timeout)


class _RequestDeadline(BaseHTTPRequestHandler):
    """Put before a handler class (see :func:`_guarded`): reads of each request go through a
    :class:`_DeadlineReader`; :meth:`handle_one_request` (whose ``TimeoutError`` handling
    closes the connection) starts each request's deadline."""

    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    _deadline_reader: _DeadlineReader

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stream setup() made: reads go through the deadline instead
        self._deadline_reader = _DeadlineReader(self.connection, self.request_timeout)
        self.rfile = io.BufferedReader(self._deadline_reader)

    def handle_one_request(self) -> None:
        self._deadline_reader.restart()
        super().handle_one_request()


def _guarded(handler: type[BaseHTTPRequestHandler],
             timeout: float) -> type[BaseHTTPRequestHandler]:
    """``handler`` with a request deadline of ``timeout`` seconds."""
    namespace = {"request_timeout": timeout, "timeout": timeout}
    return cast(type[BaseHTTPRequestHandler],
                type(handler.__name__, (_RequestDeadline, handler), namespace))


class _BoundedServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` serving at most ``max_connections`` connections at once."""

    daemon_threads = True
    component = "loopback server"
    max_connections = MAX_CONNECTIONS
    _slots: threading.BoundedSemaphore

    def server_activate(self) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse_busy(self, request: socket.socket) -> None:
        """Answer 503 without blocking the accept loop (a full send buffer: just close)."""
        body = json.dumps({"code": "ServiceUnavailable", "error": "temporarily_unavailable",
                           "message": f"{self.component}: {self.max_connections} connections "
                                      "are open already; try again shortly"}).encode()
        head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
                "Connection: close\r\n\r\n").encode()
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(head + body)
            request.recv(65536)  # what the client sent already: closing on unread data resets

    def handle_error(self, request: Any, client_address: Any) -> None:
        _handle_error(self, request, client_address)


class LoopbackHttpServer:
    """A ``ThreadingHTTPServer`` bound to a loopback address, serving in a daemon thread.

    ``attributes`` are set on the server object, so a handler reaches its owner as
    ``self.server.<name>``. A non-loopback ``host`` raises :class:`ConfigError` naming
    ``component``; ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    :attr:`request_timeout` and :attr:`max_connections` (module docstring) are read by
    :meth:`start`: set them on the class (every server) or pass them (this one).
    """

    #: Seconds a client has to send a whole request on a connection.
    request_timeout: float = REQUEST_TIMEOUT_SECONDS
    #: Connections served at once; more are answered 503 and closed.
    max_connections: int = MAX_CONNECTIONS

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, component: str,
                 host: str = "127.0.0.1", port: int = 0,
                 attributes: Mapping[str, object] | None = None,
                 request_timeout: float | None = None,
                 max_connections: int | None = None) -> None:
        if request_timeout is not None:
            if not 0 < request_timeout < float("inf"):
                raise ConfigError(f"{component}: request_timeout must be a positive number of "
                                  "seconds; fix: pass e.g. 10", field="request_timeout")
            self.request_timeout = float(request_timeout)
        if max_connections is not None:
            if max_connections < 1:
                raise ConfigError(f"{component}: max_connections must be at least 1; fix: pass "
                                  "e.g. 32", field="max_connections")
            self.max_connections = int(max_connections)
        if not is_loopback(host):
            raise ConfigError(f"{component}: bind address {host!r} is not loopback; fix: use "
                              "127.0.0.1 or ::1 (this server is for local processes only)",
                              field="host")
        self.host = "127.0.0.1" if host == "localhost" else host.strip("[]")
        self.port = port
        self.component = component
        self._handler = handler
        self._attributes = dict(attributes or {})
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> LoopbackHttpServer:
        """Bind and serve (idempotent)."""
        if self._server is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("LoopbackServer", (_BoundedServer,),
                            {"address_family": family, "component": self.component,
                             "max_connections": self.max_connections})
        try:
            server = server_class((self.host, self.port),
                                  _guarded(self._handler, self.request_timeout))
        except OSError as exc:
            raise ConfigError(f"{self.component}: cannot listen on {self.host}:{self.port} "
                              f"({exc.strerror}); fix: pick another port (0: any free one)",
                              field="port") from None
        for name, value in self._attributes.items():
            setattr(server, name, value)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=self.component,
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` (IPv6 hosts in brackets)."""
        if self._server is None:
            raise KeylessError(f"{self.component}: not started; call start() first")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


class LoopbackService:
    """A component served by one :class:`LoopbackHttpServer` held in ``self._server``:
    ``start()`` (returns self), ``stop()`` (idempotent), use as a context manager, ``url``."""

    _server: LoopbackHttpServer

    def start(self) -> Self:
        """Bind (loopback only) and serve in a daemon thread."""
        self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        return self._server.url


class BodyRefused(Exception):
    """A request body :meth:`QuietHandler.read_body` will not read: answer ``status`` (400,
    411 or 413) with ``description``; the connection is closed after the answer."""

    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base for keyless's loopback servers: never logs a request (requests
    carry client secrets and tokens); ``send_json``/``send_bytes`` answer with a body, its
    length and ``Cache-Control: no-store``; ``read_body`` reads a body safely."""

    #: A request line without a version (HTTP/0.9 style) is read as HTTP/1.0, so that every
    #: answer, a 400 for a malformed request included, starts with a status line.
    default_request_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def peer_is_loopback(self) -> bool:
        """Whether the client's address is a loopback one (the servers bind loopback only:
        a second lock, kept where credentials are served)."""
        peer = str(self.client_address[0])
        try:
            return ipaddress.ip_address(peer.split("%")[0]).is_loopback
        except ValueError:
            return False

    def read_body(self, limit: int) -> bytes:
        """The request body, ``Content-Length`` bytes (no header: empty; a client that closes
        early: what it sent). Raises :class:`BodyRefused`, and marks the connection to be
        closed (what follows on it cannot be framed), for a ``Transfer-Encoding`` (411), a
        ``Content-Length`` that is not one decimal integer >= 0, or several that differ
        (400), or one over ``limit`` bytes (413). Never reads without a bound: a
        ``Content-Length: -1`` does not wait for the client to close."""
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = True
            raise BodyRefused(411, "Transfer-Encoding is not accepted; send a Content-Length")
        values = {value.strip() for value in self.headers.get_all("Content-Length") or []}
        if not values:
            return b""
        text = values.pop()
        if values or not _DIGITS.fullmatch(text):
            self.close_connection = True
            raise BodyRefused(400, "Content-Length must be one decimal integer >= 0")
        length = int(text) if len(text) <= 18 else limit + 1  # int() refuses 4300+ digits
        if length > limit:
            self.close_connection = True
            raise BodyRefused(413, f"body too large (over {limit} bytes)")
        return self.rfile.read(length) if length else b""

    def send_bytes(self, status: int, data: bytes, content_type: str,
                   headers: Mapping[str, str] | None = None) -> None:
        """Answer ``status`` with ``data`` as ``content_type``, plus ``headers``."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Cache-Control", "no-store")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_json(self, status: int, body: Any,
                  headers: Mapping[str, str] | None = None) -> None:
        """Answer ``status`` with ``body`` as JSON, plus ``headers``."""
        self.send_bytes(status, json.dumps(body).encode(), "application/json", headers)
