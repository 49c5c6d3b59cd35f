"""RFC 8693 token exchange: the generic ``oauth2`` target and Hugging Face.

:class:`TokenExchange` posts a keyless subject token to ``token_url`` with
``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` and caches the exchanged token in
a :class:`~keyless.refresher.Refresher` (expiry from ``expires_in``): one exchange per refresh
point whatever the number of calls and threads.

Hugging Face ("Trusted Publishers", checked against ``huggingface_hub._oidc`` 2.4): the body is
JSON, not a form; ``subject_token_type`` is ``urn:ietf:params:oauth:token-type:id_token``;
``resource`` is a repo (``ns/name``, ``datasets/ns/name``, ...) or a user name; no ``audience``
parameter; the subject token's ``aud`` must be the Hub URL (``https://huggingface.co``, here
the origin of ``token_url`` unless ``audience`` is set). The answer is
``{"access_token": "hf_jwt_...", "token_type": "bearer", "expires_in": 3600}``.

Errors: transport failures, HTTP 429 and 5xx -> ``ExchangeFailed(retryable=True)``; an
``invalid_grant`` answer -> :class:`~keyless.errors.TokenRejected` with the claim its
description names (``aud``, ``iss``, ``sub``, ``exp``, ``nbf``, ``signature``); any other
refusal -> ``ExchangeFailed``. Messages quote the server's error scrubbed of anything token-like.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx

from ..audit import AuditLog
from ..clock import Clock
from ..config import url_origin
from ..context import WorkerContext
from ..errors import (
    ExchangeFailed,
    SourceMisconfigured,
    SourceUnavailable,
    TokenRejected,
)
from ..http import (
    ID_TOKEN_TYPE,
    JWT_TOKEN_TYPE,
    OAUTH_FIXES,
    TOKEN_EXCHANGE_GRANT,
    json_object,
    safe_url,
    scrub,
    send,
    token_exchange_fields,
)
from ..refresher import Fetched, Refresher, RefreshPolicy
from ..secret import Secret
from ..tokens import SubjectToken, TokenGetter
from .audited import ExchangeAudit

__all__ = [
    "GRANT_TYPE",
    "HF_FILE_KEY",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "ExchangedToken",
    "TokenExchange",
    "TokenFileWriter",
    "claim_at_fault",
    "exchanged_token_files",
    "huggingface_exchange",
    "oauth2_exchange",
    "origin",
]

GRANT_TYPE = TOKEN_EXCHANGE_GRANT


_CLAIM_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("aud", re.compile(r"\baud\b|\baudiences?\b", re.I)),
    ("exp", re.compile(r"\bexp\b|\bexpired\b|\bexpiration\b|\bvalid time range\b", re.I)),
    ("nbf", re.compile(r"\bnbf\b|\bnot yet valid\b|\bnot before\b", re.I)),
    ("signature", re.compile(r"\bsignature\b", re.I)),
    ("iss", re.compile(r"\biss\b|\bissuer\b", re.I)),
    ("sub", re.compile(r"\bsub\b|\bsubject claim\b|\bassertion subject\b", re.I)),
)


def claim_at_fault(description: str) -> str | None:
    """The JWT claim a server's refusal names (first match in the order aud, exp, nbf,
    signature, iss, sub), or None."""
    for claim, pattern in _CLAIM_PATTERNS:
        if pattern.search(description):
            return claim
    return None


def origin(url: str) -> str:
    """``scheme://host[:port]`` of ``url`` (the Hub URL a Hugging Face subject token names)."""
    return url_origin(url)


@dataclasses.dataclass(frozen=True, repr=False)
class ExchangedToken:
    """A token from an exchange; ``token`` is a :class:`Secret`, ``expires_at`` epoch seconds."""

    token: Secret
    expires_at: float
    token_type: str
    issued_token_type: str | None = None
    scope: str | None = None

    def __repr__(self) -> str:
        return (f"ExchangedToken(type={self.token_type!r}, exp={self.expires_at:.0f}, "
                f"sha256={self.token.fingerprint})")


class TokenExchange:
    """An RFC 8693 exchange at ``token_url`` whose result is cached and refreshed.

    ``subject_audience`` is the aud requested for the subject token (``tokens(aud)``);
    ``audience``, ``resource`` and ``scope`` are sent as the RFC 8693 parameters. ``body`` is
    ``"form"`` (RFC 8693) or ``"json"`` (Hugging Face). :meth:`token` is the hot path.
    """

    def __init__(self, *, name: str, token_url: str, subject_audience: str,
                 tokens: TokenGetter, http: Callable[[], httpx.Client], clock: Clock,
                 policy: RefreshPolicy, audit: AuditLog, source_name: str,
                 context: WorkerContext, audience: str | None = None,
                 resource: str | None = None, scope: str | None = None,
                 subject_token_type: str = JWT_TOKEN_TYPE,
                 requested_token_type: str | None = None,
                 body: Literal["form", "json"] = "form",
                 rng: Any = None) -> None:
        self.name = name
        self.token_url = token_url
        self.subject_audience = subject_audience
        self.audience = audience
        self.resource = resource
        self.scope = scope
        self.subject_token_type = subject_token_type
        self.requested_token_type = requested_token_type
        self.body = body
        self._tokens = tokens
        self._http = http
        self._clock = clock
        self._record = ExchangeAudit(audit, source_name, name, context)
        self._context = context
        self.exchanges = 0
        self.refresher: Refresher[ExchangedToken] = Refresher(
            self._fetch, name=name, policy=policy, clock=clock, rng=rng)

    # ------------------------------------------------------------------ public
    def exchanged(self) -> ExchangedToken:
        """A valid exchanged token (cached; refreshed ahead of expiry)."""
        return self.refresher.get()

    def token(self) -> str:
        """The exchanged token's value. Hand it only to the service it is meant for."""
        return self.exchanged().token.reveal()

    def request_fields(self) -> dict[str, str]:
        """The request's fields other than the subject token (for doctor and tests)."""
        return token_exchange_fields(
            self.subject_token_type, audience=self.audience, resource=self.resource,
            scope=self.scope, requested_token_type=self.requested_token_type)

    def __repr__(self) -> str:
        return f"TokenExchange(name={self.name!r}, token_url={safe_url(self.token_url)!r})"

    # ------------------------------------------------------------------ exchange
    def _fetch(self) -> Fetched[ExchangedToken]:
        subject = self._tokens(self.subject_audience)
        fields = {**self.request_fields(), "subject_token": subject.token.reveal()}
        result = self._record.call(lambda: self._parse(self._post(fields), subject),
                                   token=lambda: subject, principal=self.resource)
        self.exchanges += 1
        self._record.exchanged(subject, principal=self.resource or self.audience)
        return Fetched(value=result, expires_at=result.expires_at,
                       issued_at=self._clock.time())

    def _post(self, fields: Mapping[str, str]) -> httpx.Response:
        as_json = self.body == "json"
        try:
            return send(self.name, self._http(), "POST", self.token_url,
                        headers={"Accept": "application/json"},
                        data=None if as_json else fields, json=fields if as_json else None)
        except SourceUnavailable as exc:
            raise ExchangeFailed(exc.message, retryable=True) from None
        except SourceMisconfigured as exc:
            raise ExchangeFailed(exc.message, retryable=False) from None

    def _parse(self, response: httpx.Response, subject: SubjectToken) -> ExchangedToken:
        status = response.status_code
        where = safe_url(self.token_url)
        secrets = (subject.token.reveal(),)
        body = json_object(response)
        if status == 429 or status >= 500:
            raise ExchangeFailed(f"{self.name}: {where} answered HTTP {status}; transient, "
                                 "retried with backoff", retryable=True)
        if status >= 300:
            error = body.get("error") if body else None
            description = body.get("error_description") if body else None
            error = error if isinstance(error, str) else ""
            description = description if isinstance(description, str) else ""
            quoted = f"error={scrub(error, secrets)!r}" if error else f"HTTP {status}"
            if description:
                quoted += f", error_description={scrub(description, secrets)!r}"
            claims = (f" (subject token iss={subject.issuer!r}, sub={subject.subject!r}, "
                      f"aud={subject.audience!r})")
            if error == "invalid_grant" or status == 401:
                claim = claim_at_fault(description or error)
                fix = (f"request the subject token for the audience the server expects "
                       f"(now {self.subject_audience!r}): set target.{_section(self.name)}"
                       ".audience" if claim == "aud" else OAUTH_FIXES["invalid_grant"])
                raise TokenRejected(f"{self.name}: {where} refused the subject token: "
                                    f"{quoted}{claims}; fix: {fix}", claim=claim)
            fix = OAUTH_FIXES.get(error, "check token_url and the server's trust configuration")
            raise ExchangeFailed(f"{self.name}: {where} refused the exchange: {quoted}{claims}; "
                                 f"fix: {fix}", retryable=False)
        if body is None:
            raise ExchangeFailed(f"{self.name}: {where} answered HTTP {status} without a JSON "
                                 "object; fix: check that token_url is a token endpoint",
                                 retryable=False)
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise ExchangeFailed(f"{self.name}: {where}'s answer has no access_token; fix: check "
                                 "that token_url is an RFC 8693 token endpoint", retryable=False)
        now = self._clock.time()
        expires_in = body.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)
        if isinstance(expires_in, (int, float)) and not isinstance(expires_in, bool) \
                and expires_in > 0:
            expires_at = now + float(expires_in)
        else:  # no expires_in: assume it lives no longer than the subject token
            expires_at = subject.expires_at
        token_type = body.get("token_type")
        issued = body.get("issued_token_type")
        scope = body.get("scope")
        return ExchangedToken(token=Secret(access), expires_at=expires_at,
                              token_type=token_type if isinstance(token_type, str) else "Bearer",
                              issued_token_type=issued if isinstance(issued, str) else None,
                              scope=scope if isinstance(scope, str) else None)


def _section(name: str) -> str:
    return "huggingface" if name == "huggingface" else "oauth2"


# ----------------------------------------------------------------------------- builders

class _Identity(Protocol):
    """What the builders need from :class:`keyless.Keyless` (kept structural: no cycle)."""

    config: Any
    context: WorkerContext

    @property
    def clock(self) -> Clock: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def policy(self) -> RefreshPolicy: ...

    def subject_token(self, audience: str | None = None) -> SubjectToken: ...

    def target_audience(self, name: str) -> str: ...


def oauth2_exchange(identity: _Identity, http: Callable[[], httpx.Client]) -> TokenExchange:
    """The generic RFC 8693 exchange for ``target.oauth2``. The subject token is requested for
    the target's audience (``subject_audience``, else ``audience``, else ``token_url``)."""
    target = identity.config.target.oauth2
    return _exchange(identity, http, "oauth2", audience=target.audience,
                     resource=target.resource, scope=target.scope,
                     subject_token_type=target.subject_token_type,
                     requested_token_type=target.requested_token_type)


def huggingface_exchange(identity: _Identity,
                         http: Callable[[], httpx.Client]) -> TokenExchange:
    """The Hugging Face exchange for ``target.huggingface`` (JSON body, id_token subject type;
    subject aud: ``audience``, else the origin of ``token_url``)."""
    target = identity.config.target.huggingface
    return _exchange(identity, http, "huggingface", resource=target.resource,
                     subject_token_type=ID_TOKEN_TYPE, body="json")


def _exchange(identity: _Identity, http: Callable[[], httpx.Client], name: str,
              **request: Any) -> TokenExchange:
    """``target.<name>``'s exchange on ``identity``'s tokens, clock, policy and audit."""
    return TokenExchange(
        name=name, token_url=getattr(identity.config.target, name).token_url,
        subject_audience=identity.target_audience(name), tokens=identity.subject_token,
        http=http, clock=identity.clock, policy=identity.policy, audit=identity.audit,
        source_name=identity.config.source.type, context=identity.context, **request)


# ----------------------------------------------------------------------------- delivery

class _Directory(Protocol):
    def write(self, audience: str, token: str) -> Path: ...


class TokenFileWriter:
    """Keeps an exchanged token in a 0600 file of a token directory (for ``HF_TOKEN_PATH``):
    :meth:`write` rewrites it only when the token changed; :meth:`next_refresh_at` tells a
    background keeper when to call again. ``key`` names the file (never a secret)."""

    def __init__(self, exchange: TokenExchange, key: str, variable: str) -> None:
        self.exchange = exchange
        self.key = key
        self.variable = variable
        self._written: str | None = None
        self._path: Path | None = None
        self._lock = threading.Lock()

    def write(self, directory: _Directory) -> Path:
        """Write the current token if it changed; the file's path."""
        token = self.exchange.exchanged()
        with self._lock:
            if self._path is None or self._written != token.token.fingerprint:
                self._path = directory.write(self.key, token.token.reveal())
                self._written = token.token.fingerprint
            return self._path

    def next_refresh_at(self) -> float | None:
        return self.exchange.refresher.next_refresh_at()

    def __repr__(self) -> str:
        return f"TokenFileWriter(key={self.key!r}, variable={self.variable!r})"


#: The key of the Hugging Face token file in a token keeper's ``files`` (not an audience).
HF_FILE_KEY = "keyless:huggingface-token"


def exchanged_token_files(identity: Any) -> list[TokenFileWriter]:
    """The exchanged-token files a subprocess needs (today: Hugging Face's, for
    ``HF_TOKEN_PATH``; huggingface_hub re-reads it on every request)."""
    if identity.config.target.huggingface is None:
        return []
    return [TokenFileWriter(identity.huggingface(), HF_FILE_KEY, "HF_TOKEN_PATH")]
