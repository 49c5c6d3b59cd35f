"""GCP: google-auth credentials for workload identity federation, fed by a keyless source.

google-auth does the exchange: ``identity_pool.Credentials`` with a ``SubjectTokenSupplier``
returning our refreshed subject token, STS (RFC 8693), optional service-account impersonation
(``generateAccessToken``) and an optional ``downscoped`` access boundary rendered per worker.
google-auth has no refresh lock (32 threads on fresh credentials make 32 STS calls) and
refreshes on a fixed 3m45s skew, so :class:`GcpExchange` wraps the result in one
``google.auth.credentials.Credentials`` whose access token is owned by a keyless
:class:`~keyless.refresher.Refresher`: one exchange in flight, refresh ahead of expiry with the
configured fraction and jitter, stale-while-error, backoff. Every STS exchange is audited;
google-auth errors become :class:`TokenRejected` (naming the claim) or
:class:`ExchangeFailed` (``retryable`` for 429/5xx/timeouts), never quoting a token.

``google.auth.downscoped`` always posts to ``https://sts.googleapis.com/v1/token``; when
``token_url`` is something else (a private endpoint, a test server), that one call is routed
to ``token_url`` by the transport wrapper (same service, same RFC 8693 call).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import json
import logging
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit import AuditLog
from ..clock import Clock, SystemClock
from ..config import GcpTarget
from ..context import WorkerContext, render_json_template
from ..delivery.files import write_private_file
from ..errors import ConfigError, ExchangeFailed, KeylessError, TokenRejected
from ..http import JWT_TOKEN_TYPE, safe_url, scrub
from ..refresher import Fetched, Refresher, RefreshPolicy
from ..secret import Secret
from ..tokens import SubjectToken, TokenGetter
from .audited import ExchangeAudit

__all__ = ["DEFAULT_IMPERSONATION_URL", "SUBJECT_TOKEN_TYPE", "GcpExchange"]

logger = logging.getLogger("keyless.gcp")

SUBJECT_TOKEN_TYPE = JWT_TOKEN_TYPE
DEFAULT_IMPERSONATION_URL = ("https://iamcredentials.googleapis.com/v1/projects/-/"
                             "serviceAccounts/{sa}:generateAccessToken")
_DOWNSCOPE_STS_URL = "https://sts.googleapis.com/v1/token"  # fixed in google.auth.downscoped
_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class _Access:
    token: Secret
    expires_at: float


@dataclass
class _Response:
    url: str
    status: int
    body: str


class _Transport:
    """The google-auth request callable used for one refresh: records each response (status
    and body, for error mapping), sets a timeout, and routes downscoping to ``token_url``."""

    def __init__(self, inner: Any, token_url: str) -> None:
        self._inner = inner
        self._token_url = token_url
        self.responses: list[_Response] = []

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: Any = None, **kwargs: Any) -> Any:
        if url == _DOWNSCOPE_STS_URL and self._token_url != _DOWNSCOPE_STS_URL:
            url = self._token_url
        response = self._inner(url=url, method=method, body=body, headers=headers,
                               timeout=_TIMEOUT_SECONDS if timeout is None else timeout, **kwargs)
        data = response.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        self.responses.append(_Response(safe_url(url), int(response.status), text))
        return response


def _error_text(body: str) -> tuple[str, str]:
    """(error code, description) from an OAuth or a Google API error body."""
    try:
        data = json.loads(body)
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    error = data.get("error")
    if isinstance(error, dict):  # Google API style: {"error": {"code", "message", "status"}}
        return str(error.get("status", "")), str(error.get("message", ""))
    return str(error or ""), str(data.get("error_description", ""))


_CLAIM_HINTS = (
    ("aud", ("audience",), "request the audience the provider allows (target.gcp."
     "subject_audience, default https: + target.gcp.audience) or add it to the provider's "
     "allowed audiences"),
    ("iss", ("issuer",), "make the provider's issuer URI match the token's iss exactly"),
    ("exp", ("expired", "stale", "expir"), "refresh the source sooner or check the clock"),
    ("nbf", ("not yet valid", "nbf"), "check this machine's clock"),
    ("signature", ("signature", "jwk", "key"), "make sure the token comes from the issuer "
     "the provider trusts and its JWKS is reachable"),
    ("sub", ("attribute condition", "permission", "denied"), "allow this subject: the "
     "provider's attribute condition, or roles/iam.workloadIdentityUser on the service account"),
)


class GcpExchange:
    """This worker's GCP credentials for one :class:`GcpTarget` (see the module docstring).

    ``request`` is a google-auth transport callable (tests inject a fake); default
    ``google.auth.transport.requests.Request()``.
    """

    def __init__(self, target: GcpTarget, *, tokens: TokenGetter, source_name: str,
                 context: WorkerContext, policy: RefreshPolicy, audit: AuditLog,
                 environ: Mapping[str, str], clock: Clock | None = None,
                 rng: random.Random | None = None, request: Any = None,
                 audience: str | None = None) -> None:
        self.target = target
        self._tokens = tokens
        self.context = context
        self._record = ExchangeAudit(audit, source_name, "gcp", context)
        self._environ = environ
        self._request = request
        self.subject_audience = audience or target.requested_audience
        sa = target.service_account
        self.impersonation_url = (target.impersonation_url or DEFAULT_IMPERSONATION_URL.format(
            sa=sa)) if sa else None
        self.principal = sa or target.audience
        self.boundary = self.access_boundary()  # rendered now: a bad template fails early
        self._lock = threading.Lock()
        self._local = threading.local()
        self._inner: Any = None
        self._wrapper: Any = None
        self._used: SubjectToken | None = None
        self._last: SubjectToken | None = None
        self.clock: Clock = clock or SystemClock()
        self.refresher: Refresher[_Access] = Refresher(
            self._fetch, name="gcp-sts", policy=policy, clock=self.clock, rng=rng)

    # ------------------------------------------------------------------ request shape
    def access_boundary(self) -> dict[str, Any] | None:
        """The rendered access boundary as ``{"accessBoundary": {"accessBoundaryRules": [..]}}``
        (the config may give that document or just its inner object), or None."""
        if self.target.access_boundary is None:
            return None
        where = "target.gcp.access_boundary"
        try:
            document = json.loads(render_json_template(self.target.access_boundary, self.context))
        except ValueError:
            raise ConfigError(f"config: {where}: not a JSON object; fix: give "
                              '{"accessBoundaryRules": [...]}', field=where) from None
        inner = document.get("accessBoundary", document) if isinstance(document, dict) else None
        rules = inner.get("accessBoundaryRules") if isinstance(inner, dict) else None
        if not isinstance(rules, list) or not rules or not all(
                isinstance(r, dict) and isinstance(r.get("availableResource"), str)
                and isinstance(r.get("availablePermissions"), list) for r in rules):
            raise ConfigError(f"config: {where}: needs accessBoundaryRules, each with "
                              "availableResource and availablePermissions", field=where)
        return {"accessBoundary": {"accessBoundaryRules": rules}}

    def external_account_info(self, token_file: str | os.PathLike[str]) -> dict[str, Any]:
        """The ``external_account`` document for ``GOOGLE_APPLICATION_CREDENTIALS`` with a file
        credential source (no secret in it: only paths and URLs)."""
        info: dict[str, Any] = {
            "type": "external_account", "audience": self.target.audience,
            "subject_token_type": SUBJECT_TOKEN_TYPE, "token_url": self.target.token_url,
            "credential_source": {"file": str(token_file), "format": {"type": "text"}},
        }
        if self.impersonation_url:
            info["service_account_impersonation_url"] = self.impersonation_url
            info["service_account_impersonation"] = {
                "token_lifetime_seconds": self.target.token_lifetime_seconds}
        return info

    def write_external_account(self, token_file: str | os.PathLike[str]) -> Path:
        """Write :meth:`external_account_info` atomically (0600) next to ``token_file``.

        Raises :class:`ConfigError` when an access boundary is configured: an external_account
        file cannot carry it, and its user would get the undownscoped principal."""
        if self.boundary is not None:
            raise ConfigError(
                "config: target.gcp.access_boundary cannot be expressed in an external_account "
                "file (GOOGLE_APPLICATION_CREDENTIALS): its user would get the undownscoped "
                f"credentials of {self.principal}; fix: use Keyless(...).google_credentials() "
                "in the process", field="target.gcp.access_boundary")
        directory = Path(token_file).parent
        digest = hashlib.sha256(self.target.audience.encode()).hexdigest()[:8]
        final = directory / f"gcp-external-account-{digest}.json"
        return write_private_file(
            final, json.dumps(self.external_account_info(token_file), indent=2))

    # ------------------------------------------------------------------ google-auth wiring
    def _subject_token(self) -> str:
        token = self._tokens(self.subject_audience)
        self._used = self._last = token
        return token.token.reveal()

    def _build_inner(self) -> Any:
        identity_pool = _google("google.auth.identity_pool")
        exchange = self
        supplier_base: Any = identity_pool.SubjectTokenSupplier

        class KeylessSupplier(supplier_base):  # type: ignore[misc]
            def get_subject_token(self, context: Any, request: Any) -> str:
                return exchange._subject_token()

        target = self.target
        kwargs: dict[str, Any] = {}
        if self.impersonation_url:
            kwargs["service_account_impersonation_url"] = self.impersonation_url
            kwargs["service_account_impersonation_options"] = {
                "token_lifetime_seconds": target.token_lifetime_seconds}
        credentials = identity_pool.Credentials(
            audience=target.audience, subject_token_type=SUBJECT_TOKEN_TYPE,
            token_url=target.token_url, subject_token_supplier=KeylessSupplier(),
            scopes=list(target.scopes), **kwargs)
        if self.boundary is None:
            return credentials
        downscoped = _google("google.auth.downscoped")
        rules = []
        for rule in self.boundary["accessBoundary"]["accessBoundaryRules"]:
            condition = rule.get("availabilityCondition")
            rules.append(downscoped.AccessBoundaryRule(
                available_resource=rule["availableResource"],
                available_permissions=rule["availablePermissions"],
                availability_condition=None if not condition else downscoped.AvailabilityCondition(
                    condition["expression"], condition.get("title"),
                    condition.get("description"))))
        return downscoped.Credentials(
            source_credentials=credentials,
            credential_access_boundary=downscoped.CredentialAccessBoundary(rules=rules))

    def _transport(self) -> Any:
        request = getattr(self._local, "request", None) or self._request
        if request is None:
            request = self._request = _google("google.auth.transport.requests").Request()
        return request

    def _fetch(self) -> Fetched[_Access]:
        """One refresh of the access token (runs under the refresher's lock)."""
        with self._lock:
            if self._inner is None:
                try:
                    self._inner = self._build_inner()
                except (ValueError, TypeError) as exc:  # google-auth's InvalidValue/InvalidType
                    raise ConfigError(
                        f"config: target.gcp: google-auth refused the settings: "
                        f"{scrub(str(exc))}; fix: check access_boundary rules "
                        "(permissions look like inRole:roles/...) and audience",
                        field="target.gcp") from None
            inner = self._inner
        transport = _Transport(self._transport(), self.target.token_url)
        self._used = None
        clock_start = self.clock.time()
        wall_start = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # google-auth: naive UTC
        self._record.call(
            lambda: inner.refresh(transport), token=lambda: self._used or self._last,
            principal=self.principal,
            translate=lambda exc: self._translate(exc, transport.responses,
                                                  self._used or self._last))
        token, expiry = inner.token, inner.expiry
        if not token or expiry is None:
            raise ExchangeFailed("gcp-sts: the answer had no access_token or expiry; fix: check "
                                 "target.gcp.token_url points at Google's STS", retryable=True)
        used = self._used
        self._record.exchanged(used or self._last,
                               "exchange" if used is not None else "refresh",
                               principal=self.principal)
        expires_at = clock_start + (expiry - wall_start).total_seconds()
        return Fetched(_Access(Secret(str(token)), expires_at), expires_at=expires_at,
                       issued_at=clock_start)

    def _translate(self, exc: BaseException, responses: list[_Response],
                   token: SubjectToken | None) -> KeylessError:
        for link in (exc, exc.__cause__, exc.__context__):
            if isinstance(link, KeylessError):
                return link
        failed = next((r for r in reversed(responses) if r.status >= 400), None)
        facts = "" if token is None else (f" (token iss={token.issuer!r} sub={token.subject!r} "
                                          f"aud={token.audience!r} sha256={token.fingerprint})")
        head = f"gcp-sts: exchange for {self.principal} failed"
        if failed is None:
            where = responses[-1].url if responses else safe_url(self.target.token_url)
            return ExchangeFailed(f"{head}: {type(exc).__name__} talking to {where}{facts}; fix: "
                                  "check target.gcp.token_url and the network", retryable=True)
        code, description = _error_text(failed.body)
        secrets = () if token is None else (token.token.reveal(),)
        quoted = scrub(f"{code}: {description}" if code else failed.body[:200], secrets)
        what = f"{head}: HTTP {failed.status} from {failed.url}: {quoted}{facts}"
        if failed.status == 429 or failed.status >= 500:
            return ExchangeFailed(f"{what}; retrying with backoff", retryable=True)
        lowered = description.lower()
        for claim, words, fix in _CLAIM_HINTS:
            if any(word in lowered for word in words):
                return TokenRejected(f"{what}; the token's {claim!r} is at fault; fix: {fix}",
                                     claim=claim)
        return ExchangeFailed(f"{what}; fix: check target.gcp (audience, service_account, "
                              "scopes)", retryable=False)

    # ------------------------------------------------------------------ public
    def access_token(self, request: Any = None, *, force: bool = False) -> tuple[str, float]:
        """A valid access token and its expiry (epoch seconds), refreshed ahead of expiry;
        ``force`` gets a new one (single flight). ``request``: the caller's transport."""
        self._local.request = request
        try:
            access = self.refresher.refresh_now() if force else self.refresher.get()
        finally:
            self._local.request = None
        return access.token.reveal(), access.expires_at

    def credentials(self) -> Any:
        """This worker's one ``google.auth.credentials.Credentials`` (no STS call until first
        use); every client built on it shares one token and one refresh."""
        with self._lock:
            if self._wrapper is None:
                self._wrapper = _credentials_class()(self)
            return self._wrapper


def _google(module: str) -> Any:
    """A google-auth module, imported on first use (an optional dependency: keyless[gcp])."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - depends on extras
        raise KeylessError("gcp: google-auth is not installed; fix: pip install "
                           "'keyless[gcp]'") from None


def _credentials_class() -> type[Any]:
    gcreds = _google("google.auth.credentials")
    base: Any = gcreds.Credentials

    class KeylessGoogleCredentials(base):  # type: ignore[misc]
        """google-auth credentials whose token is owned by a keyless refresher (thread-safe:
        one exchange per refresh whatever the number of threads)."""

        def __init__(self, exchange: GcpExchange) -> None:
            self._exchange = exchange
            super().__init__()

        def _snapshot(self) -> _Access | None:
            return self._exchange.refresher.peek()

        @property
        def token(self) -> str | None:
            access = self._snapshot()
            return None if access is None else access.token.reveal()

        @token.setter
        def token(self, value: object) -> None:
            return None  # owned by the refresher

        @property
        def expiry(self) -> dt.datetime | None:
            access = self._snapshot()
            if access is None:
                return None
            return dt.datetime.fromtimestamp(access.expires_at, dt.UTC).replace(tzinfo=None)

        @expiry.setter
        def expiry(self, value: object) -> None:
            return None

        def _due(self) -> bool:
            due = self._exchange.refresher.next_refresh_at()
            return due is None or self._exchange.clock.time() >= due

        @property
        def expired(self) -> bool:
            until = self._exchange.refresher.valid_until
            return until is not None and self._exchange.clock.time() >= until

        @property
        def valid(self) -> bool:
            return self._snapshot() is not None and not self._due()

        @property
        def token_state(self) -> Any:
            if self._snapshot() is None or self.expired:
                return gcreds.TokenState.INVALID
            return gcreds.TokenState.STALE if self._due() else gcreds.TokenState.FRESH

        def refresh(self, request: Any) -> None:
            # due (or empty): the scheduled refresh; otherwise the caller saw the token
            # refused (AuthorizedSession after a 401): force a new one, single flight
            self._exchange.access_token(request, force=not (self._due() or self.expired))

        def apply(self, headers: Any, token: str | None = None) -> None:
            headers["authorization"] = f"Bearer {token or self.token}"

        def before_request(self, request: Any, method: Any, url: Any, headers: Any) -> None:
            token, _ = self._exchange.access_token(request)
            self.apply(headers, token)

        def __repr__(self) -> str:
            return f"KeylessGoogleCredentials(principal={self._exchange.principal!r})"

    return KeylessGoogleCredentials
