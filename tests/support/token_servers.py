"""Loopback token endpoints that verify subject tokens like the real services do.

- :class:`EntraLike`: HTTPS (self-signed certificate made per run: azure-identity refuses an
  http authority; pass ``connection_verify=server.ca_file``). ``POST /{tenant}/oauth2/v2.0/token``
  with ``grant_type=client_credentials`` and a ``client_assertion``, checked against the
  federated identity credentials added with :meth:`EntraLike.federate`; Entra's AADSTS codes on
  refusal (700016 unknown app, 700211 issuer, 700212 audience, 700213 subject, 700024 time
  range, 50013 signature). ``GET /api/me`` checks a bearer it issued.
- :class:`DatabricksLike`: ``/.well-known/databricks-config``,
  ``/oidc/.well-known/oauth-authorization-server``, ``POST /oidc/v1/token`` (RFC 8693,
  checked against :meth:`DatabricksLike.federate` policies) and
  ``GET /api/2.0/preview/scim/v2/Me`` (bearer checked).
- :class:`Rfc8693Server`: ``POST /token`` (form, RFC 8693) and ``POST /oauth/token`` (JSON, the
  Hugging Face flavour: ``subject_token_type`` id_token, ``resource``); ``GET /api/whoami-v2``
  (bearer checked). Refusals are ``invalid_grant`` naming the claim at fault.

Every subject JWT is verified against its issuer's JWKS (discovery at ``iss``, loopback only):
signature, ``iss``, ``aud``, ``sub``, ``exp``. ``expires_in`` is settable for refresh tests;
``exchanges`` counts successful exchanges, ``refusals`` the claims of refused ones. Issued
tokens are random and recorded in ``issued`` (tests forbid them in output).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.idp import ReferenceIdP

__all__ = ["DatabricksLike", "EntraLike", "Federation", "Grant", "Refusal", "Rfc8693Server",
           "TokenServer", "databricks_server", "entra_server", "rfc8693_server"]

Reply = tuple[int, dict[str, str], bytes]
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class Federation:
    """A trust rule: tokens from ``issuer`` with ``subject`` and ``audience`` are accepted."""

    issuer: str
    subject: str
    audience: str


class Refusal(Exception):
    """A verification failure: ``claim`` at fault and a message in the service's words."""

    def __init__(self, claim: str, message: str) -> None:
        super().__init__(message)
        self.claim, self.message = claim, message


def _json(status: int, body: Any) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(body).encode()


class _JwksCache:
    def __init__(self) -> None:
        self._clients: dict[str, jwt.PyJWKClient] = {}
        self._lock = threading.Lock()

    def key(self, iss: str, token: str) -> Any:
        if urlsplit(iss).hostname not in _LOOPBACK:
            raise Refusal("iss", f"issuer {iss} is not reachable from this test server")
        with self._lock:
            client = self._clients.get(iss)
        if client is None:
            url = iss.rstrip("/") + "/.well-known/openid-configuration"
            with urllib.request.urlopen(url, timeout=10) as response:
                jwks_uri = json.load(response)["jwks_uri"]
            client = jwt.PyJWKClient(jwks_uri, cache_keys=False, lifespan=300, timeout=10)
            with self._lock:
                self._clients[iss] = client
        try:
            return client.get_signing_key_from_jwt(token).key
        except jwt.PyJWTError:
            raise Refusal("signature", "no key of the issuer matches the token's kid") from None


class TokenServer:
    """A threaded loopback HTTP(S) server; subclasses implement :meth:`handle`."""

    def __init__(self, *, tls: bool = False, expires_in: int = 3600) -> None:
        self.expires_in = expires_in
        self.federations: list[Federation] = []
        self.exchanges = 0
        self.refusals: list[str] = []
        self.issued: dict[str, str] = {}  # access token -> subject
        self.api_calls = 0
        self._lock = threading.Lock()
        self._jwks = _JwksCache()
        self._tmp = Path(tempfile.mkdtemp(prefix="keyless-token-server-"))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.ca_file: str | None = None
        if tls:
            cert, key = _self_signed(self._tmp)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
            self.ca_file = str(cert)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=type(self).__name__)

    @property
    def url(self) -> str:
        scheme = "https" if self.ca_file else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> TokenServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def federate(self, issuer: str, subject: str, audience: str) -> None:
        """Trust tokens from ``issuer`` for ``subject`` with ``audience``."""
        self.federations.append(Federation(issuer, subject, audience))

    # ------------------------------------------------------------------ helpers
    def verify(self, token: str, federations: list[Federation] | None = None
               ) -> dict[str, Any]:
        """Check signature, iss, aud, sub, exp against the federations; the claims."""
        try:
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Refusal("signature", "the subject token is not a JWT") from None
        iss = claims.get("iss")
        trusted = self.federations if federations is None else federations
        rules = [f for f in trusted if f.issuer == iss]
        if not rules:
            raise Refusal("iss", f"no federation trusts issuer {iss!r}")
        key = self._jwks.key(str(iss), token)
        try:
            jwt.decode(token, key, algorithms=[str(header.get("alg"))], options={
                "verify_exp": False, "verify_aud": False, "verify_iat": False,
                "verify_nbf": False})
        except jwt.PyJWTError:
            raise Refusal("signature", "the token's signature does not verify") from None
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or time.time() >= exp:
            raise Refusal("exp", "the token is expired")
        auds = claims.get("aud")
        auds = [auds] if isinstance(auds, str) else list(auds or [])
        rules_aud = [f for f in rules if f.audience in auds]
        if not rules_aud:
            raise Refusal("aud", f"audience {auds!r} is not accepted; expected "
                          f"{sorted({f.audience for f in rules})!r}")
        if not any(f.subject == claims.get("sub") for f in rules_aud):
            raise Refusal("sub", f"sub claim {claims.get('sub')!r} is not trusted")
        return claims

    def mint(self, subject: str, prefix: str = "") -> str:
        token = prefix + secrets.token_urlsafe(32)
        with self._lock:
            self.issued[token] = subject
            self.exchanges += 1
        return token

    def refused(self, claim: str) -> None:
        with self._lock:
            self.refusals.append(claim)

    def bearer(self, headers: dict[str, str]) -> str | None:
        """The subject a valid ``Authorization: Bearer`` header was issued to, else None."""
        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self._lock:
            self.api_calls += 1
            return self.issued.get(token)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        raise NotImplementedError

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, extra, payload = server.handle(
                        self.command, urlsplit(self.path).path, headers, body)
                except Exception as exc:  # a fixture bug: say so, never hang the client
                    status, extra, payload = _json(500, {"error": type(exc).__name__})
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                return None

        return Handler


def _form(body: bytes) -> dict[str, str]:
    return dict(parse_qsl(body.decode(), keep_blank_values=True))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keyless test 127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# ----------------------------------------------------------------------------- Entra

_AADSTS = {"iss": ("700211", "No matching federated identity record found for presented "
                   "assertion issuer"),
           "aud": ("700212", "No matching federated identity record found for presented "
                   "assertion audience"),
           "sub": ("700213", "No matching federated identity record found for presented "
                   "assertion subject"),
           "exp": ("700024", "Client assertion is not within its valid time range"),
           "signature": ("50013", "Assertion failed signature validation")}


@dataclass(frozen=True)
class Grant:
    """What an access token :class:`EntraLike` issued was for: ``subject`` (the assertion's
    ``sub``), ``scope`` as requested, and when it expires (epoch seconds)."""

    subject: str
    scope: str
    expires_at: float


class EntraLike(TokenServer):
    """An Entra ID token endpoint for federated client assertions (HTTPS). ``grants`` maps
    each access token it issued to its :class:`Grant`, so a resource server can check the
    audience and expiry of a bearer (:meth:`grant_for`)."""

    ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

    def __init__(self, *, expires_in: int = 3600) -> None:
        super().__init__(tls=True, expires_in=expires_in)
        self.apps: dict[tuple[str, str], list[Federation]] = {}
        self.scopes: list[str] = []
        self.grants: dict[str, Grant] = {}

    def grant_for(self, headers: dict[str, str], scope: str) -> Grant | None:
        """The grant of a valid ``Authorization: Bearer`` token issued for ``scope`` and not
        expired, else None."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        with self._lock:
            grant = self.grants.get(token) if scheme.lower() == "bearer" else None
        if grant is None or grant.scope != scope or time.time() >= grant.expires_at:
            return None
        return grant

    def register(self, tenant: str, client_id: str, *, issuer: str, subject: str,
                 audience: str = "api://AzureADTokenExchange") -> None:
        """An app registration with one federated identity credential."""
        self.apps.setdefault((tenant, client_id), []).append(Federation(issuer, subject,
                                                                         audience))

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/api/me":
            who = self.bearer(headers)
            return _json(200, {"appId": who}) if who else _json(401, {"error": "invalid_token"})
        if method != "POST" or parts[1:] != ["oauth2", "v2.0", "token"]:
            return _json(404, {"error": "not_found"})
        form = _form(body)
        if form.get("grant_type") != "client_credentials" or \
                form.get("client_assertion_type") != self.ASSERTION_TYPE:
            return self._error(400, "unsupported_grant_type", "70003", "unsupported grant")
        rules = self.apps.get((parts[0], form.get("client_id", "")))
        if rules is None:
            return self._error(400, "unauthorized_client", "700016",
                               f"Application with identifier '{form.get('client_id')}' was "
                               f"not found in the directory '{parts[0]}'")
        try:
            claims = self.verify(form.get("client_assertion", ""), rules)
        except Refusal as refusal:
            self.refused(refusal.claim)
            code, text = _AADSTS[refusal.claim]
            return self._error(400 if refusal.claim != "signature" else 401, "invalid_client",
                               code, f"{text}. {refusal.message}.")
        with self._lock:
            self.scopes.append(form.get("scope", ""))
        token = self.mint(str(claims.get("sub")))
        with self._lock:
            self.grants[token] = Grant(str(claims.get("sub")), form.get("scope", ""),
                                       time.time() + self.expires_in)
        return _json(200, {"token_type": "Bearer", "expires_in": self.expires_in,
                           "ext_expires_in": self.expires_in, "access_token": token})

    @staticmethod
    def _error(status: int, error: str, code: str, text: str) -> Reply:
        return _json(status, {"error": error, "error_description": f"AADSTS{code}: {text} "
                              "Trace ID: 00000000-0000-0000-0000-000000000000",
                              "error_codes": [int(code)]})


# ----------------------------------------------------------------------------- Databricks

class DatabricksLike(TokenServer):
    """A Databricks workspace's OIDC token exchange and one API (HTTP)."""

    def __init__(self, *, expires_in: int = 3600, client_id: str = "sp-keyless") -> None:
        super().__init__(expires_in=expires_in)
        self.client_id = client_id

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        base = self.url
        if method == "GET" and path == "/.well-known/databricks-config":
            return _json(200, {"oidc_endpoint": f"{base}/oidc", "workspace_id": "1234567",
                               "account_id": "00000000-acct"})
        if method == "GET" and path == "/oidc/.well-known/oauth-authorization-server":
            return _json(200, {"authorization_endpoint": f"{base}/oidc/v1/authorize",
                               "token_endpoint": f"{base}/oidc/v1/token", "issuer": base})
        if method == "GET" and path == "/api/2.0/preview/scim/v2/Me":
            who = self.bearer(headers)
            if who is None:
                return _json(401, {"error_code": "UNAUTHENTICATED",
                                   "message": "Invalid access token."})
            return _json(200, {"id": "42", "userName": self.client_id, "active": True,
                               "displayName": f"federated:{who}"})
        if method == "POST" and path == "/oidc/v1/token":
            return self._token(_form(body))
        return _json(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": path})

    def _token(self, form: dict[str, str]) -> Reply:
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" or \
                form.get("subject_token_type") != "urn:ietf:params:oauth:token-type:jwt":
            return _json(400, {"error": "unsupported_grant_type",
                               "error_description": "expected an RFC 8693 JWT exchange"})
        if form.get("client_id") != self.client_id:
            return _json(400, {"error": "invalid_client",
                               "error_description": "unknown service principal"})
        try:
            claims = self.verify(form.get("subject_token", ""))
        except Refusal as refusal:
            self.refused(refusal.claim)
            return _json(400, {"error": "invalid_grant", "error_description":
                               f"Token federation policy rejected the token: {refusal.message}"})
        token = self.mint(str(claims.get("sub")), prefix="dbx-")
        return _json(200, {"access_token": token, "token_type": "Bearer",
                           "expires_in": self.expires_in, "scope": form.get("scope", "")})


# ----------------------------------------------------------------------------- RFC 8693 / HF

class Rfc8693Server(TokenServer):
    """A generic RFC 8693 endpoint (``/token``, form) and a Hugging Face-like one
    (``/oauth/token``, JSON), with ``/api/whoami-v2``."""

    def __init__(self, *, expires_in: int = 3600) -> None:
        super().__init__(expires_in=expires_in)
        self.requests: list[dict[str, str]] = []  # fields other than subject_token

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method == "GET" and path == "/api/whoami-v2":
            who = self.bearer(headers)
            if who is None:
                return _json(401, {"error": "Invalid credentials in Authorization header"})
            return _json(200, {"type": "user", "name": who, "auth": {"type": "access_token"}})
        if method == "POST" and path == "/token":
            return self._exchange(_form(body), "urn:ietf:params:oauth:token-type:jwt", "")
        if method == "POST" and path == "/oauth/token":
            try:
                fields = json.loads(body)
            except ValueError:
                return _json(400, {"error": "invalid_request",
                                   "error_description": "the body must be JSON"})
            return self._exchange({str(k): str(v) for k, v in fields.items()},
                                  "urn:ietf:params:oauth:token-type:id_token", "hf_jwt_")
        return _json(404, {"error": "not_found"})

    def _exchange(self, form: dict[str, str], subject_type: str, prefix: str) -> Reply:
        with self._lock:
            self.requests.append({k: v for k, v in form.items() if k != "subject_token"})
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            return _json(400, {"error": "unsupported_grant_type"})
        if form.get("subject_token_type") != subject_type:
            return _json(400, {"error": "invalid_request",
                               "error_description": f"subject_token_type must be {subject_type}"})
        try:
            claims = self.verify(form.get("subject_token", ""))
        except Refusal as refusal:
            self.refused(refusal.claim)
            return _json(400, {"error": "invalid_grant", "error_description": refusal.message})
        token = self.mint(str(claims.get("sub")), prefix=prefix)
        return _json(200, {"access_token": token, "token_type": "bearer",
                           "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                           "expires_in": self.expires_in})


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture
def entra_server(reference_idp: ReferenceIdP) -> Iterator[EntraLike]:
    """An Entra-like HTTPS endpoint; tenant ``tenant-1`` app ``app-1`` trusts the reference
    IdP's ``trainer`` client (aud ``api://AzureADTokenExchange``)."""
    server = EntraLike().start()
    assert isinstance(server, EntraLike)
    server.register("tenant-1", "app-1", issuer=reference_idp.issuer, subject="trainer")
    yield server
    server.stop()


@pytest.fixture
def databricks_server(reference_idp: ReferenceIdP) -> Iterator[DatabricksLike]:
    """A Databricks-like workspace whose service principal ``sp-keyless`` trusts the reference
    IdP's ``trainer`` client with aud ``{url}/oidc/v1/token``."""
    server = DatabricksLike().start()
    assert isinstance(server, DatabricksLike)
    server.federate(reference_idp.issuer, "trainer", f"{server.url}/oidc/v1/token")
    yield server
    server.stop()


@pytest.fixture
def rfc8693_server(reference_idp: ReferenceIdP) -> Iterator[Rfc8693Server]:
    """An RFC 8693 / Hugging Face-like endpoint trusting the reference IdP's ``trainer`` with
    aud ``https://sts.example.test`` (``/token``) and ``{url}`` (``/oauth/token``)."""
    server = Rfc8693Server().start()
    assert isinstance(server, Rfc8693Server)
    server.federate(reference_idp.issuer, "trainer", "https://sts.example.test")
    server.federate(reference_idp.issuer, "trainer", server.url)
    yield server
    server.stop()
