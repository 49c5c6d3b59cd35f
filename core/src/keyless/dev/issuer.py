"""A local development OIDC issuer: discovery, JWKS, client credentials and RFC 8693 token
exchange on loopback. Never for production.

:class:`DevIssuer` serves, on a loopback address only (any other address is a
:class:`~keyless.errors.ConfigError`):

- ``GET /.well-known/openid-configuration`` and ``GET /jwks`` (one RSA key made per run);
- ``POST /token`` with ``grant_type=client_credentials``: the client authenticates with its
  secret (HTTP Basic, RFC 6749 §2.3.1, or ``client_id``/``client_secret`` in the form); the
  requested ``resource``/``audience`` values become ``aud`` (default: the client's
  ``audience``, else the issuer's ``default_audience``, else the client id); ``sub`` is the
  client's ``subject`` or its id; the issuer's and the client's extra ``claims`` are added;
  the lifetime is the client's ``lifetime_seconds`` or the issuer's;
- ``POST /token`` with ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``: the
  ``subject_token`` (and ``actor_token``, if any) must be unexpired JWTs this issuer signed;
  the new token keeps the subject's ``sub`` and extra claims, takes ``aud`` from
  ``audience``/``resource`` (default: the subject token's), and carries
  ``act: {"sub": <actor sub>}`` (nested when the actor token had its own ``act``). Client
  authentication is optional here; when given it must be right.

Errors are RFC 6749 JSON (``invalid_client`` 401, ``invalid_grant``, ``invalid_request``,
``unsupported_grant_type`` 400; a ``Content-Length`` that is not one decimal integer >= 0 is an
``invalid_request`` 400, a body over 64 KiB a 413). Nothing is logged: requests carry secrets
and tokens. The server is a :class:`~keyless.delivery.loopback.LoopbackHttpServer`, with its
request deadline and connection bound.
:meth:`DevIssuer.mint` signs a token directly, for tests and the demo.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import parse_qs, unquote_plus

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from ..clock import Clock, SystemClock
from ..delivery.loopback import (
    BodyRefused,
    LoopbackHttpServer,
    LoopbackService,
    QuietHandler,
    is_loopback,
)
from ..errors import ConfigError, KeylessError
from ..http import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT

__all__ = ["DevClient", "DevIssuer", "TOKEN_EXCHANGE_GRANT", "TOKEN_TYPE_JWT", "is_loopback"]


TOKEN_TYPE_JWT = JWT_TOKEN_TYPE
_ACCEPTED_TOKEN_TYPES = frozenset({JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE})
_RESERVED = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "act", "client_id"})
_MAX_BODY = 64 * 1024
_COMPONENT = "dev-issuer"


@dataclass(frozen=True)
class DevClient:
    """One client of the dev issuer. ``subject`` defaults to the client id; ``claims`` are
    added to its tokens; ``audience`` is the aud when the request names none."""

    client_id: str
    client_secret: str = field(repr=False)
    subject: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    lifetime_seconds: float | None = None
    audience: str | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "clients") -> DevClient:
        """Build from a config mapping; raises ConfigError naming the bad field."""
        allowed = {"client_id", "client_secret", "subject", "claims", "lifetime_seconds",
                   "audience"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"{_COMPONENT}: {where}: unknown field(s) {unknown}; allowed: "
                              f"{sorted(allowed)}", field=where)
        client_id, secret = data.get("client_id"), data.get("client_secret")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigError(f"{_COMPONENT}: {where}.client_id: give a non-empty string",
                              field=f"{where}.client_id")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"{_COMPONENT}: {where}.client_secret: give a non-empty string",
                              field=f"{where}.client_secret")
        claims = data.get("claims") or {}
        if not isinstance(claims, Mapping):
            raise ConfigError(f"{_COMPONENT}: {where}.claims: give a mapping",
                              field=f"{where}.claims")
        lifetime = data.get("lifetime_seconds")
        return cls(client_id, secret, subject=data.get("subject"), claims=dict(claims),
                   lifetime_seconds=None if lifetime is None else float(lifetime),
                   audience=data.get("audience"))


class _OAuthError(Exception):
    """An RFC 6749 §5.2 error answer (never leaves this module)."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(error)
        self.error, self.description, self.status = error, description, status


class DevIssuer(LoopbackService):
    """The dev issuer; start with :meth:`start` or ``with DevIssuer(...) as issuer``.

    ``clients``: :class:`DevClient` objects, or a mapping of client id to secret.
    ``lifetime_seconds``: default token lifetime. ``claims``: extra claims on every token.
    ``clock`` stamps ``iat``/``exp`` and judges expiry of presented tokens.
    """

    def __init__(self, clients: Iterable[DevClient] | Mapping[str, str] = (), *,
                 host: str = "127.0.0.1", port: int = 0, lifetime_seconds: float = 300.0,
                 claims: Mapping[str, Any] | None = None, default_audience: str | None = None,
                 clock: Clock | None = None) -> None:
        if not is_loopback(host):
            raise ConfigError(
                f"{_COMPONENT}: refusing to bind {host!r}: the dev issuer serves loopback "
                "only (it is never for production); fix: use 127.0.0.1, ::1 or localhost",
                field="host")
        if lifetime_seconds <= 0:
            raise ConfigError(f"{_COMPONENT}: lifetime_seconds must be > 0",
                              field="lifetime_seconds")
        if isinstance(clients, Mapping):
            clients = [DevClient(cid, secret) for cid, secret in clients.items()]
        self.host = host
        self.port = port
        self.lifetime_seconds = float(lifetime_seconds)
        self.claims = dict(claims or {})
        self.default_audience = default_audience
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._clients: dict[str, DevClient] = {}
        for client in clients:
            self.add_client(client)
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        self.kid = hashlib.sha256(f"{public['n']}.{public['e']}".encode()).hexdigest()[:16]
        self._jwk = {**public, "kid": self.kid, "use": "sig", "alg": "RS256"}
        self._lock = threading.Lock()
        self._token_requests = 0
        self._issued = 0
        self._server = LoopbackHttpServer(_Handler, component=_COMPONENT, host=host, port=port,
                                          attributes={"issuer": self})

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Bind (loopback only) and serve in a daemon thread (``stop()``, ``with``: see
        :class:`~keyless.loopback.LoopbackService`)."""
        self.port = self._server.start().port
        return self

    def __repr__(self) -> str:
        return f"DevIssuer(host={self.host!r}, port={self.port}, clients={list(self._clients)!r})"

    # ------------------------------------------------------------------ endpoints
    @property
    def issuer(self) -> str:
        """The issuer URL (``iss`` of every token), e.g. ``http://127.0.0.1:8900``."""
        return self._server.url

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    def discovery(self) -> dict[str, Any]:
        """The OpenID Provider metadata document."""
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE_GRANT],
            "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                      "client_secret_post"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    def jwks(self) -> dict[str, Any]:
        """The public signing keys (one per run)."""
        return {"keys": [dict(self._jwk)]}

    @property
    def clients(self) -> list[str]:
        """The registered client ids (never their secrets)."""
        return list(self._clients)

    def add_client(self, client: DevClient) -> None:
        """Register (or replace) a client."""
        if not client.client_id or not client.client_secret:
            raise ConfigError(f"{_COMPONENT}: a client needs a client_id and a client_secret",
                              field="clients")
        self._clients[client.client_id] = client

    def token_requests(self) -> int:
        """POSTs to the token endpoint so far (answered or refused)."""
        with self._lock:
            return self._token_requests

    def issued(self) -> int:
        """Tokens signed so far (minted or granted)."""
        with self._lock:
            return self._issued

    # ------------------------------------------------------------------ tokens
    def mint(self, sub: str, aud: str | list[str], lifetime: float | None = None,
             **claims: Any) -> str:
        """Sign a token now: ``iss`` this issuer, ``sub``, ``aud``, ``iat``/``nbf``/``exp``
        from the clock (``lifetime`` default: the issuer's), a fresh ``jti``, the issuer's
        extra claims, then ``claims``."""
        now = self.clock.time()
        ttl = self.lifetime_seconds if lifetime is None else float(lifetime)
        body: dict[str, Any] = {**self.claims, **claims, "iss": self.issuer, "sub": sub,
                                "aud": aud, "iat": int(now), "nbf": int(now),
                                "exp": int(now + ttl), "jti": uuid.uuid4().hex}
        with self._lock:
            self._issued += 1
        return jwt.encode(body, self._key, algorithm="RS256",
                          headers={"kid": self.kid, "typ": "JWT"})

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this issuer signed and that has not expired (by the
        issuer's clock); raises :class:`~keyless.errors.KeylessError` otherwise."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._key.public_key(), algorithms=["RS256"], issuer=self.issuer,
                options={"verify_aud": False, "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False, "require": ["exp", "iss", "sub"]})
        except jwt.PyJWTError as exc:
            raise KeylessError(f"{_COMPONENT}: the token was not issued by this dev issuer "
                               f"({type(exc).__name__}); fix: get the token from "
                               f"{self.issuer}") from None
        if float(claims["exp"]) <= self.clock.time():
            raise KeylessError(f"{_COMPONENT}: the token expired at {claims['exp']} "
                               f"(sub={claims.get('sub')!r}); fix: get a fresh one")
        return claims

    # ------------------------------------------------------------------ grants
    def token_response(self, form: Mapping[str, list[str]],
                       authorization: str | None) -> dict[str, Any]:
        """Answer one token request (``form`` as from ``parse_qs``); raises _OAuthError."""
        with self._lock:
            self._token_requests += 1
        grant = _one(form, "grant_type")
        client = self._authenticate(form, authorization,
                                    required=grant == "client_credentials")
        if grant == "client_credentials":
            assert client is not None
            return self._client_credentials(client, form)
        if grant == TOKEN_EXCHANGE_GRANT:
            return self._token_exchange(client, form)
        raise _OAuthError("unsupported_grant_type",
                          "use client_credentials or " + TOKEN_EXCHANGE_GRANT)

    def _authenticate(self, form: Mapping[str, list[str]], authorization: str | None, *,
                      required: bool) -> DevClient | None:
        client_id, secret = _one(form, "client_id"), _one(form, "client_secret")
        if authorization and authorization.lower().startswith("basic "):
            try:
                pair = base64.b64decode(authorization[6:].strip(), validate=True).decode()
                raw_id, _, raw_secret = pair.partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                raise _OAuthError("invalid_client", "malformed Basic credentials", 401) from None
            client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if not client_id and not secret:
            if required:
                raise _OAuthError("invalid_client", "client authentication is required", 401)
            return None
        client = self._clients.get(client_id or "")
        if client is None or not secrets.compare_digest(
                (secret or "").encode(), client.client_secret.encode()):
            raise _OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client

    def _client_credentials(self, client: DevClient,
                            form: Mapping[str, list[str]]) -> dict[str, Any]:
        wanted = form.get("resource", []) + form.get("audience", [])
        aud: str | list[str] = (wanted[0] if len(wanted) == 1 else wanted) if wanted else (
            client.audience or self.default_audience or client.client_id)
        lifetime = client.lifetime_seconds or self.lifetime_seconds
        scope = _one(form, "scope")
        extra: dict[str, Any] = {**client.claims, "client_id": client.client_id}
        if scope:
            extra["scope"] = scope
        token = self.mint(client.subject or client.client_id, aud, lifetime, **extra)
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime),
                "issued_token_type": ACCESS_TOKEN_TYPE}

    def _presented(self, form: Mapping[str, list[str]], name: str) -> dict[str, Any] | None:
        token = _one(form, f"{name}_token")
        if token is None:
            return None
        kind = _one(form, f"{name}_token_type") or TOKEN_TYPE_JWT
        if kind not in _ACCEPTED_TOKEN_TYPES:
            raise _OAuthError("invalid_request", f"{name}_token_type {kind!r} is not supported")
        try:
            return self.verify(token)
        except KeylessError:
            raise _OAuthError("invalid_grant", f"the {name}_token was not issued by this dev "
                              "issuer or has expired") from None

    def _token_exchange(self, client: DevClient | None,
                        form: Mapping[str, list[str]]) -> dict[str, Any]:
        subject = self._presented(form, "subject")
        if subject is None:
            raise _OAuthError("invalid_request", "subject_token is required")
        actor = self._presented(form, "actor")
        wanted = form.get("audience", []) + form.get("resource", [])
        aud = (wanted[0] if len(wanted) == 1 else wanted) if wanted else subject.get("aud", "")
        extra = {k: v for k, v in subject.items() if k not in _RESERVED}
        if actor is not None:
            act: dict[str, Any] = {"sub": actor["sub"]}
            if isinstance(actor.get("act"), dict):
                act["act"] = actor["act"]
            extra["act"] = act
        elif "act" in subject:
            extra["act"] = subject["act"]
        if client is not None:
            extra["client_id"] = client.client_id
        lifetime = (client.lifetime_seconds if client else None) or self.lifetime_seconds
        token = self.mint(str(subject["sub"]), aud, lifetime, **extra)
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(lifetime),
                "issued_token_type": TOKEN_TYPE_JWT}


def _one(form: Mapping[str, list[str]], name: str) -> str | None:
    values = form.get(name)
    return values[0] if values else None


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"
    server_version = "keyless-dev-issuer"

    def do_GET(self) -> None:
        issuer = self.server.issuer  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/.well-known/openid-configuration":
            self.send_json(200, issuer.discovery())
        elif path == "/jwks":
            self.send_json(200, issuer.jwks())
        else:
            self.send_json(404, {"error": "not_found"})

    def do_POST(self) -> None:
        issuer = self.server.issuer  # type: ignore[attr-defined]
        try:  # a bad Content-Length is a 400, never a traceback or a read until EOF
            raw = self.read_body(_MAX_BODY).decode("utf-8", "replace")
        except BodyRefused as refused:
            self.send_json(refused.status, {"error": "invalid_request",
                                            "error_description": refused.description})
            return
        if self.path.split("?", 1)[0] != "/token":
            self.send_json(404, {"error": "not_found"})
            return
        try:
            if "x-www-form-urlencoded" not in (self.headers.get("Content-Type") or ""):
                raise _OAuthError("invalid_request",
                                  "use Content-Type application/x-www-form-urlencoded")
            answer = issuer.token_response(parse_qs(raw, keep_blank_values=False),
                                           self.headers.get("Authorization"))
        except _OAuthError as exc:
            extra = {"WWW-Authenticate": 'Basic realm="keyless-dev-issuer"'} \
                if exc.status == 401 else None
            self.send_json(exc.status, {"error": exc.error, "error_description": exc.description},
                       extra)
            return
        self.send_json(200, answer)
