"""The request handler of the verifying storage fronts (GCS emulator, Azurite): it hands each
request to its owner, ``self.server.storage.handle(method, target, headers, body)`` ->
``(status, [(header, value)], payload)``, and writes that answer back. Bodies are read by a
strictly checked ``Content-Length`` of at most :data:`BODY_LIMIT` bytes; nothing is logged
(requests carry bearer tokens)."""

from __future__ import annotations

from keyless.delivery.loopback import BodyRefused, QuietHandler

__all__ = ["BODY_LIMIT", "FrontHandler"]

#: The largest request body a front forwards (uploads in the tests are far smaller).
BODY_LIMIT = 64 * 1024 * 1024


class FrontHandler(QuietHandler):
    """Forwards every request to ``self.server.storage`` (see the module docstring)."""

    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        try:
            body = self.read_body(BODY_LIMIT)
        except BodyRefused as refused:
            self.send_json(refused.status, {"error": {"code": refused.status,
                                                      "message": refused.description}})
            return
        status, headers, payload = self.server.storage.handle(  # type: ignore[attr-defined]
            self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve
