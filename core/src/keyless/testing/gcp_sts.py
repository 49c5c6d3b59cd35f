"""A verifying GCP security token service on loopback, for tests and the demo (never production).

No GCP emulator exists. :class:`GcpSts` serves, in a daemon thread on 127.0.0.1:

- ``POST /v1/token`` (RFC 8693 as google-auth sends it): a JWT subject token is verified like
  workload identity federation does: ``iss`` must be the trusted issuer, the signature must
  verify against the issuer's JWKS (found through its discovery document), ``exp``/``nbf``
  against the injected clock, ``aud`` must be ``"https:" + audience`` (GCP's default rule,
  the provider's full resource name) or one of ``allowed_audiences``, ``sub`` in
  ``allowed_subjects`` when given (the provider's attribute condition). An ``access_token``
  subject token (google-auth's downscoping call) must be a live token issued here and gets the
  ``accessBoundary`` from ``options``. Answers google's JSON, or ``{"error",
  "error_description"}`` with Google's wording;
- ``POST /v1/projects/-/serviceAccounts/{sa}:generateAccessToken`` (impersonation): the bearer
  must be a live federated token whose subject may use ``sa`` (``service_accounts``);
- ``GET /storage/v1/b/{bucket}/o/{object}``: returns the object's bytes to a live bearer
  within its access boundary (resource and ``resource.name.startsWith('...')`` conditions).
  :meth:`GcpSts.authorize_storage` makes the same check for a storage front (the GCS emulator
  front of the tests) and raises :class:`StorageRefused` with Google's JSON error.

Tokens are random opaque strings remembered with their subject and expiry; every lifetime is
capped by ``max_lifetime_seconds`` (to force rollovers). Records hold fingerprints, never
tokens. ``with GcpSts(...) as sts:`` starts and stops it; the ``gcp_sts_factory`` pytest
fixture makes started ones that stop at teardown.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import jwt

from ..clock import Clock, SystemClock
from ..delivery.loopback import BodyRefused, LoopbackHttpServer, LoopbackService, QuietHandler
from ..http import ACCESS_TOKEN_TYPE, ID_TOKEN_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT
from ..secret import fingerprint
from .jwks import issuer_jwks_client

__all__ = ["GcpSts", "IssuedToken", "StorageRefused", "gcp_sts_factory"]

_JWT_TYPES = (JWT_TOKEN_TYPE, ID_TOKEN_TYPE)
_ACCESS_TYPE = ACCESS_TOKEN_TYPE
_GRANT = TOKEN_EXCHANGE_GRANT
_IMPERSONATE = re.compile(r"^/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken$")
_OBJECT = re.compile(r"^/storage/v1/b/([^/]+)/o/(.+)$")
_STARTS_WITH = re.compile(r"^resource\.name\.startsWith\(['\"]([^'\"]*)['\"]\)$")
_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")

Reply = tuple[int, dict[str, Any] | bytes]


@dataclass
class IssuedToken:
    """What the server remembers about a token it issued (never the token itself)."""

    kind: str  # "federated" | "impersonated" | "downscoped"
    sub: str
    principal: str
    expires_at: float
    boundary: list[dict[str, Any]] | None = None
    subject_sha256: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Rejected(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


class StorageRefused(_Rejected):
    """A storage request :meth:`GcpSts.authorize_storage` refused: answer ``status`` (401 or
    403) with ``body`` (Google's JSON error)."""


def _oauth_error(error: str, description: str, status: int = 400) -> _Rejected:
    return _Rejected(status, {"error": error, "error_description": description})


def _api_error(status: int, message: str, code: str) -> _Rejected:
    return _Rejected(status, {"error": {"code": status, "message": message, "status": code}})


class GcpSts(LoopbackService):
    """The loopback STS + IAM credentials + storage server; see the module docstring.

    ``audience`` is the provider's resource name (``//iam.googleapis.com/projects/N/...``).
    ``service_accounts`` maps each impersonable service account to the subjects allowed to
    impersonate it (``None``: any verified subject).
    """

    def __init__(self, *, trusted_issuer: str, audience: str,
                 allowed_audiences: Sequence[str] = (),
                 allowed_subjects: Sequence[str] | None = None,
                 service_accounts: Mapping[str, Sequence[str] | None] | None = None,
                 max_lifetime_seconds: float | None = None, clock: Clock | None = None) -> None:
        self.trusted_issuer = trusted_issuer
        self.audience = audience
        self.allowed_audiences = list(allowed_audiences) or ["https:" + audience
                                                             if audience.startswith("//")
                                                             else audience]
        self.allowed_subjects = None if allowed_subjects is None else list(allowed_subjects)
        self.service_accounts = dict(service_accounts or {})
        self.max_lifetime_seconds = max_lifetime_seconds
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._tokens: dict[str, IssuedToken] = {}
        self._objects: dict[tuple[str, str], bytes] = {}
        self._fail: list[int] = []
        self._jwks: jwt.PyJWKClient | None = None
        self.exchanges = 0
        self.impersonations = 0
        self.accepted: list[dict[str, Any]] = []
        self.rejected: list[str] = []
        self.reads: list[dict[str, Any]] = []
        self.expired_uses = 0
        self._server = LoopbackHttpServer(_Handler, component="gcp-sts fixture",
                                          attributes={"sts": self})

    @property
    def token_url(self) -> str:
        return self.url + "/v1/token"

    @property
    def impersonation_base(self) -> str:
        return self.url + "/v1/projects/-/serviceAccounts/"

    def impersonation_url(self, service_account: str) -> str:
        return f"{self.impersonation_base}{service_account}:generateAccessToken"

    def object_url(self, bucket: str, name: str) -> str:
        path = f"/storage/v1/b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"
        return f"{self.url}{path}?alt=media"

    # ------------------------------------------------------------------ test hooks
    def put_object(self, bucket: str, name: str, data: bytes) -> None:
        with self._lock:
            self._objects[(bucket, name)] = data

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next ``n`` token-endpoint calls with HTTP ``status``."""
        with self._lock:
            self._fail.extend([status] * n)

    def issued(self, access_token: str) -> IssuedToken | None:
        with self._lock:
            return self._tokens.get(access_token)

    # ------------------------------------------------------------------ dispatch
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        try:
            route = urlsplit(path).path
            if method == "POST" and route == "/v1/token":
                return 200, self._token(dict(parse_qsl(body.decode("utf-8"))))
            match = _IMPERSONATE.match(route)
            if method == "POST" and match:
                return 200, self._impersonate(unquote(match.group(1)), headers, body)
            match = _OBJECT.match(route)
            if method == "GET" and match:
                return 200, self._read(unquote(match.group(1)), unquote(match.group(2)), headers)
            return 404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}}
        except _Rejected as exc:
            with self._lock:
                self.rejected.append(json.dumps(exc.body))
            return exc.status, exc.body

    def _lifetime(self, wanted: float) -> float:
        cap = self.max_lifetime_seconds
        return wanted if cap is None else min(wanted, cap)

    def _mint(self, issued: IssuedToken) -> str:
        token = "ya29.fixture-" + secrets.token_urlsafe(24)
        with self._lock:
            self._tokens[token] = issued
        return token

    def _token(self, form: dict[str, str]) -> dict[str, Any]:
        with self._lock:
            self.exchanges += 1
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            raise _Rejected(fail, {"error": "internal_failure",
                                   "error_description": "The service is currently unavailable."})
        if form.get("grant_type") != _GRANT:
            raise _oauth_error("unsupported_grant_type", "Invalid value for \"grant_type\".")
        if form.get("requested_token_type", _ACCESS_TYPE) != _ACCESS_TYPE:
            raise _oauth_error("invalid_request", "Invalid value for \"requested_token_type\".")
        subject, kind = form.get("subject_token", ""), form.get("subject_token_type", "")
        options = json.loads(unquote(form["options"])) if form.get("options") else {}
        now = self.clock.time()
        if kind == _ACCESS_TYPE:  # downscoping
            source = self._live(subject, now, oauth=True)
            rules = (options.get("accessBoundary") or {}).get("accessBoundaryRules")
            if not isinstance(rules, list) or not rules:
                raise _oauth_error("invalid_request", "The access boundary must have rules.")
            issued = IssuedToken("downscoped", source.sub, source.principal, source.expires_at,
                                 boundary=rules, subject_sha256=fingerprint(subject))
        elif kind in _JWT_TYPES:
            if form.get("audience") != self.audience:
                raise _oauth_error("invalid_request", "Invalid value for \"audience\". This value "
                                   "should be the full resource name of the Identity Provider.")
            claims = self._verify(subject, now)
            sub = str(claims.get("sub"))
            pool = self.audience.removeprefix("//iam.googleapis.com/").split("/providers/")[0]
            principal = f"principal://iam.googleapis.com/{pool}/subject/{sub}"
            issued = IssuedToken("federated", sub, principal, now + self._lifetime(3600),
                                 subject_sha256=fingerprint(subject),
                                 extra={"aud": claims.get("aud"), "iss": claims.get("iss"),
                                        "scope": form.get("scope")})
        else:
            raise _oauth_error("invalid_request", "Invalid value for \"subject_token_type\".")
        token = self._mint(issued)
        with self._lock:
            self.accepted.append({"kind": issued.kind, "sub": issued.sub,
                                  "subject_sha256": issued.subject_sha256,
                                  "expires_at": issued.expires_at, **issued.extra})
        return {"access_token": token, "issued_token_type": _ACCESS_TYPE,
                "token_type": "Bearer", "expires_in": max(int(issued.expires_at - now), 1)}

    def _verify(self, token: str, now: float) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
            claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise _oauth_error("invalid_grant", "Unable to parse the ID Token.") from None
        iss = claims.get("iss")
        if iss != self.trusted_issuer:
            raise _oauth_error("invalid_grant", f"The issuer in ID Token {iss} does not match "
                               "the expected ones.")
        if header.get("alg") not in _ALGORITHMS:
            raise _oauth_error("invalid_grant", "Invalid ID Token signature algorithm.")
        try:
            key = self._jwks_client().get_signing_key_from_jwt(token).key
            jwt.decode(token, key, algorithms=[str(header["alg"])], options={
                "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                "verify_aud": False, "verify_iss": False})
        except jwt.PyJWKClientConnectionError:
            raise _oauth_error("invalid_grant", "Error connecting to the given credential's "
                               "issuer.") from None
        except jwt.PyJWTError:
            raise _oauth_error("invalid_grant", "Invalid ID Token signature: the ID Token is "
                               "not signed by a key of the issuer's JWKS.") from None
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or now >= exp:
            raise _oauth_error("invalid_grant", f"ID Token expired at {exp}; the current time is "
                               f"{int(now)}.")
        if isinstance(nbf, int | float) and now < nbf:
            raise _oauth_error("invalid_grant", f"ID Token is not yet valid (nbf {nbf}).")
        auds = claims.get("aud")
        auds = [auds] if isinstance(auds, str) else list(auds or [])
        if not any(a in self.allowed_audiences for a in auds):
            shown = auds[0] if len(auds) == 1 else auds
            raise _oauth_error("invalid_grant", f"The audience in ID Token [{shown}] does not "
                               "match the expected audience.")
        if self.allowed_subjects is not None and claims.get("sub") not in self.allowed_subjects:
            raise _oauth_error("unauthorized_client", "The given credential is rejected by the "
                               "attribute condition.")
        return claims

    def _jwks_client(self) -> jwt.PyJWKClient:
        with self._lock:
            client = self._jwks
        if client is None:
            client = issuer_jwks_client(self.trusted_issuer)
            with self._lock:
                self._jwks = client
        return client

    def _live(self, token: str, now: float, *, oauth: bool = False) -> IssuedToken:
        with self._lock:
            issued = self._tokens.get(token)
            expired = issued is not None and now >= issued.expires_at
            if expired:
                self.expired_uses += 1
        if issued is None or expired:
            if oauth:
                raise _oauth_error("invalid_grant", "The access token is invalid or expired.")
            raise _api_error(401, "Request had invalid authentication credentials. Expected OAuth "
                             "2 access token, login cookie or other valid authentication "
                             "credential.", "UNAUTHENTICATED")
        return issued

    def _bearer(self, headers: Mapping[str, str]) -> str:
        value = headers.get("authorization", "")
        return value[7:] if value.lower().startswith("bearer ") else ""

    def _impersonate(self, sa: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        with self._lock:
            self.impersonations += 1
        now = self.clock.time()
        source = self._live(self._bearer(headers), now)
        allowed = self.service_accounts.get(sa, ())
        if source.kind != "federated" or (allowed is not None and source.sub not in allowed):
            raise _api_error(403, "Permission 'iam.serviceAccounts.getAccessToken' denied on "
                             "resource (or it may not exist).", "PERMISSION_DENIED")
        request = json.loads(body or b"{}")
        wanted = float(str(request.get("lifetime") or "3600s").rstrip("s"))
        expires = now + self._lifetime(wanted)
        token = self._mint(IssuedToken("impersonated", source.sub, sa, expires))
        expire_time = dt.datetime.fromtimestamp(expires, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"accessToken": token, "expireTime": expire_time}

    def authorize_storage(self, headers: Mapping[str, str], bucket: str,
                          name: str | None = None, *, action: str = "get") -> IssuedToken:
        """The token behind ``headers``' ``Authorization: Bearer``, checked as Cloud Storage
        does: issued here and live (else 401), and a downscoped token's access boundary allows
        object ``name`` of ``bucket`` (else 403; a bucket-level request, ``name=None``, needs a
        rule for the bucket). ``action`` (``get``, ``create`` ...) only words the 403. Raises
        :class:`StorageRefused`."""
        try:
            issued = self._live(self._bearer(headers), self.clock.time())
        except _Rejected as exc:
            raise StorageRefused(exc.status, exc.body) from None
        if issued.boundary is not None and not _boundary_allows(issued.boundary, bucket, name):
            what = "object" if name is not None else "bucket"
            raise StorageRefused(403, _api_error(
                403, f"{issued.principal} does not have storage.{what}s.{action} access to the "
                f"Google Cloud Storage {what}.", "PERMISSION_DENIED").body)
        return issued

    def _read(self, bucket: str, name: str, headers: Mapping[str, str]) -> bytes:
        issued = self.authorize_storage(headers, bucket, name)
        with self._lock:
            data = self._objects.get((bucket, name))
            self.reads.append({"bucket": bucket, "object": name, "principal": issued.principal,
                               "kind": issued.kind, "ok": data is not None})
        if data is None:
            raise _api_error(404, f"No such object: {bucket}/{name}", "NOT_FOUND")
        return data


def _boundary_allows(rules: list[dict[str, Any]], bucket: str, name: str | None) -> bool:
    """Whether a rule makes ``bucket`` (``name=None``: the bucket itself, which any rule on
    it allows) or its object ``name`` available."""
    resource = f"//storage.googleapis.com/projects/_/buckets/{bucket}"
    object_name = f"projects/_/buckets/{bucket}/objects/{name}"
    for rule in rules:
        if rule.get("availableResource") != resource:
            continue
        expression = (rule.get("availabilityCondition") or {}).get("expression")
        if expression is None or name is None:
            return True
        match = _STARTS_WITH.match(str(expression).strip())
        if match and object_name.startswith(match.group(1)):
            return True
    return False


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        try:  # a bad Content-Length is a 400, never a traceback or a read until EOF
            body = self.read_body(1024 * 1024)
        except BodyRefused as refused:
            self.send_json(refused.status, {"error": "invalid_request",
                                            "error_description": refused.description})
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = self.server.sts.handle(  # type: ignore[attr-defined]
            self.command, self.path, headers, body)
        if isinstance(payload, bytes):
            self.send_bytes(status, payload, "application/octet-stream")
        else:
            self.send_json(status, payload)

    do_GET = _serve
    do_POST = _serve


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is only there in test environments
    pytest = None  # type: ignore[assignment]

if pytest is not None:
    @pytest.fixture
    def gcp_sts_factory() -> Iterator[Callable[..., GcpSts]]:
        """``make(trusted_issuer=..., audience=..., **options)``: a started :class:`GcpSts`,
        stopped when the test ends."""
        started: list[GcpSts] = []

        def make(**kwargs: Any) -> GcpSts:
            sts = GcpSts(**kwargs).start()
            started.append(sts)
            return sts

        yield make
        for sts in started:
            sts.stop()
