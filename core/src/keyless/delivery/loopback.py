"""HTTP servers that keyless runs on this machine (dev issuer, credential endpoint, test
fixtures): loopback addresses only, served from a daemon thread, stopped by their owner."""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from ..config import is_loopback
from ..errors import ConfigError, KeylessError

__all__ = ["LoopbackHttpServer", "LoopbackService", "QuietHandler", "is_loopback"]


def _handle_error(server: ThreadingHTTPServer, request: object,
                  client_address: tuple[str, int]) -> None:
    """A client that hung up mid-answer (pyarrow drops idle connections) is not an error
    worth a traceback; anything else goes to the standard handler."""
    if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
        return
    ThreadingHTTPServer.handle_error(server, request, client_address)  # type: ignore[arg-type]


class LoopbackHttpServer:
    """A ``ThreadingHTTPServer`` bound to a loopback address, serving in a daemon thread.

    ``attributes`` are set on the server object, so a handler reaches its owner as
    ``self.server.<name>``. A non-loopback ``host`` raises :class:`ConfigError` naming
    ``component``; ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], *, component: str,
                 host: str = "127.0.0.1", port: int = 0,
                 attributes: Mapping[str, object] | None = None) -> None:
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
        server_class = type("LoopbackServer", (ThreadingHTTPServer,),
                            {"address_family": family, "daemon_threads": True,
                             "handle_error": _handle_error})
        try:
            server = server_class((self.host, self.port), self._handler)
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


class QuietHandler(BaseHTTPRequestHandler):
    """Request handler base for keyless's loopback servers: never logs a request (requests
    carry client secrets and tokens); ``send_json``/``send_bytes`` answer with a body, its
    length and ``Cache-Control: no-store``."""

    def log_message(self, format: str, *args: Any) -> None:
        return None

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
