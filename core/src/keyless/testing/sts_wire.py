"""The STS front's HTTP side: request parsing, STS/S3 XML answers, byte-for-byte forwarding
to moto, and the request handler. Nothing here records or logs a request body (it may carry a
token)."""

from __future__ import annotations

import datetime as dt
import http.client
import uuid
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit
from xml.sax.saxutils import escape

__all__ = ["FrontHandler", "Headers", "Reply", "error_reply", "forward_to", "header_value",
           "query_params", "s3_expired_reply", "web_identity_reply"]

Headers = list[tuple[str, str]]
Reply = tuple[int, Headers, bytes]


class _Front(Protocol):
    def handle(self, method: str, path: str, headers: Headers, body: bytes) -> Reply: ...


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _x(text: object) -> str:
    return escape(str(text))


def web_identity_reply(
    creds: dict[str, Any],
    expiration: float,
    role: dict[str, Any],
    session: str,
    claims: dict[str, Any],
    audience: str,
    provider_arn: str,
) -> Reply:
    account = role["Arn"].split(":")[4]
    arn = f"arn:aws:sts::{account}:assumed-role/{role['RoleName']}/{session}"
    body = (
        '<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        "<AssumeRoleWithWebIdentityResult>"
        f"<SubjectFromWebIdentityToken>{_x(claims.get('sub', ''))}</SubjectFromWebIdentityToken>"
        f"<Audience>{_x(audience)}</Audience>"
        f"<AssumedRoleUser><Arn>{_x(arn)}</Arn>"
        f"<AssumedRoleId>{_x(role['RoleId'])}:{_x(session)}</AssumedRoleId></AssumedRoleUser>"
        "<Credentials>"
        f"<SessionToken>{_x(creds['SessionToken'])}</SessionToken>"
        f"<SecretAccessKey>{_x(creds['SecretAccessKey'])}</SecretAccessKey>"
        f"<Expiration>{_iso(expiration)}</Expiration>"
        f"<AccessKeyId>{_x(creds['AccessKeyId'])}</AccessKeyId>"
        "</Credentials>"
        f"<Provider>{_x(provider_arn)}</Provider>"
        "</AssumeRoleWithWebIdentityResult>"
        f"<ResponseMetadata><RequestId>{_request_id()}</RequestId></ResponseMetadata>"
        "</AssumeRoleWithWebIdentityResponse>"
    ).encode()
    return 200, [("Content-Type", "text/xml")], body


def _request_id() -> str:
    return str(uuid.uuid4())


def s3_expired_reply() -> Reply:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ExpiredToken</Code>'
        "<Message>The provided token has expired.</Message>"
        f"<RequestId>{_request_id()}</RequestId></Error>"
    ).encode()
    return 400, [("Content-Type", "application/xml")], body


_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "expect", "content-length"}


def header_value(headers: Headers, name: str) -> str:
    return next((v for k, v in headers if k.lower() == name), "")


def query_params(method: str, path: str, headers: Headers, body: bytes) -> dict[str, str]:
    """Query-protocol parameters of a request to ``/`` (query string and form body)."""
    target, _, query = path.partition("?")
    if target != "/":
        return {}
    params = dict(parse_qsl(query, keep_blank_values=True))
    if method == "POST" and "x-www-form-urlencoded" in header_value(headers, "content-type"):
        params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return params


def error_reply(status: int, code: str, message: str, type_: str = "Sender") -> Reply:
    """An STS (query protocol) XML error answer."""
    body = ('<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
            f"<Error><Type>{type_}</Type><Code>{_x(code)}</Code><Message>{_x(message)}</Message>"
            f"</Error><RequestId>{_request_id()}</RequestId></ErrorResponse>").encode()
    return status, [("Content-Type", "text/xml")], body


def forward_to(base_url: str, method: str, path: str, headers: Headers, body: bytes) -> Reply:
    """Send the request to ``base_url`` unchanged (Host kept) and return moto's answer."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=120)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            if k.lower() not in _HOP:
                conn.putheader(k, v)
        if body or method in ("POST", "PUT", "PATCH"):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        data = resp.read()
        out = [(k, v) for k, v in resp.getheaders()
               if k.lower() not in _HOP or (method == "HEAD" and k.lower() == "content-length")]
        return resp.status, out, data
    finally:
        conn.close()


class FrontHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "sts-front"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: requests may carry tokens in their bodies, never log them."""

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size < 0:
                    raise ValueError("negative chunk size")
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0:
            raise ValueError("negative Content-Length")
        return self.rfile.read(length)

    def _serve(self) -> None:
        front: _Front = self.server.front  # type: ignore[attr-defined]
        try:
            body = self._read_body()
        except ValueError:  # a Content-Length or chunk size that is not a number, or < 0
            self.close_connection = True
            status, headers, out = error_reply(400, "InvalidRequest",
                                               "sts-front: the body cannot be framed", "Sender")
            body = None
        try:
            if body is not None:
                status, headers, out = front.handle(self.command, self.path,
                                                    list(self.headers.items()), body)
        except Exception as e:  # the fixture must answer, whatever broke
            status, headers, out = error_reply(500, "InternalFailure",
                                               f"sts-front: {type(e).__name__}: {e}", "Receiver")
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(out)))
        elif not any(k.lower() == "content-length" for k, _ in headers):
            self.send_header("Content-Length", "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _serve
