"""Azure / Entra ID workload identity federation through azure-identity.

azure-identity does the exchange: ``ClientAssertionCredential(tenant_id, client_id, func=...)``
posts ``client_assertion`` (our subject token, aud ``api://AzureADTokenExchange`` by default)
with ``grant_type=client_credentials`` to ``{authority}/{tenant}/oauth2/v2.0/token``; the
authority must be https (azure-identity refuses anything else) and needs no instance discovery
(this credential does not use MSAL's authority validation). Not the file credential: it re-reads
its file only every 600 s.

Caching: azure-identity's own cache has no lock (N threads on a cold cache make N exchanges) and
refreshes 5 minutes before expiry whatever the lifetime. So :class:`AzureCredential` is the one
owner of the cache: the inner credential is given a token cache that stores nothing, and each
(scopes, tenant, CAE) key gets a :class:`~keyless.refresher.Refresher` (single flight, refresh
at a fraction of the lifetime with jitter, stale-while-error, backoff). A request with
``claims`` (a CAE challenge) bypasses the cache, as azure-identity does.

Errors: Entra's ``AADSTS`` codes map to :class:`~keyless.errors.TokenRejected` with the claim at
fault (700211 iss, 700212 aud, 700213 sub, 700024 exp, 50013/700027 signature); transport
failures to ``ExchangeFailed(retryable=True)``. Messages never carry the assertion.
"""

from __future__ import annotations

import random
import re
import threading
from typing import Any

from ..audit import AuditLog
from ..clock import Clock
from ..config import AzureTarget
from ..context import WorkerContext
from ..errors import ExchangeFailed, KeylessError, TokenRejected
from ..http import scrub
from ..refresher import Fetched, Refresher, RefreshPolicy
from ..tokens import SubjectToken, TokenGetter
from .audited import ExchangeAudit
from .oauth2 import claim_at_fault

__all__ = ["AzureCredential", "azure_environment", "translate_azure_error"]


_AADSTS_CLAIMS = {
    "700211": "iss", "700212": "aud", "700213": "sub", "700024": "exp",
    "50013": "signature", "700027": "signature", "70021": None,
}
_AADSTS = re.compile(r"AADSTS(\d+)")


def _import_azure() -> Any:
    try:
        import azure.identity
    except ImportError:
        raise KeylessError("azure: azure-identity is not installed; fix: pip install "
                           "'keyless[azure]'") from None
    return azure.identity


def translate_azure_error(exc: BaseException, *, token: SubjectToken | None,
                          target: AzureTarget) -> KeylessError:
    """A keyless error for what azure-identity raised (the assertion is never quoted)."""
    if isinstance(exc, KeylessError):
        return exc
    from azure.core.exceptions import (
        ClientAuthenticationError,
        ServiceRequestError,
        ServiceResponseError,
    )

    secrets = (token.token.reveal(),) if token is not None else ()
    seen = ""
    if token is not None:
        seen = (f" (assertion iss={token.issuer!r}, sub={token.subject!r}, "
                f"aud={token.audience!r})")
    where = f"tenant {target.tenant_id!r}, client {target.client_id!r}"
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return ExchangeFailed(f"azure: cannot reach the Entra token endpoint for {where} "
                              f"({type(exc).__name__}); transient, retried with backoff",
                              retryable=True)
    if isinstance(exc, ClientAuthenticationError):
        text = scrub(str(getattr(exc, "message", "") or ""), secrets)
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int) and (status == 429 or status >= 500):
            return ExchangeFailed(f"azure: Entra answered HTTP {status} for {where}; "
                                  "transient, retried with backoff", retryable=True)
        code = _AADSTS.search(text)
        claim = _AADSTS_CLAIMS.get(code.group(1)) if code else None
        if claim is None:
            claim = claim_at_fault(text)
        fix = ("add a federated identity credential to the app registration whose issuer, "
               f"subject and audience match the assertion (audience {target.audience!r})")
        if claim == "exp":
            fix = "make the source rotate its token (or check this host's clock)"
        elif claim == "signature":
            fix = "check that the issuer's JWKS is reachable by Entra and holds the signing key"
        return TokenRejected(f"azure: Entra refused the assertion for {where}: {text}{seen}; "
                             f"fix: {fix}", claim=claim)
    return ExchangeFailed(f"azure: token request for {where} failed: {type(exc).__name__}",
                          retryable=True)


def _no_store_cache() -> Any:
    from msal import TokenCache  # type: ignore[import-untyped]

    class NoStoreTokenCache(TokenCache):  # type: ignore[misc]
        """A token cache that stores nothing: keyless's refreshers own the cache."""

        def add(self, event: Any, now: Any = None) -> None:
            return None

    return NoStoreTokenCache()


class AzureCredential:
    """An azure-core ``TokenCredential`` (``get_token``) and ``SupportsTokenInfo``
    (``get_token_info``) on keyless subject tokens, for any Azure SDK client.

    ``credential_kwargs`` go to ``ClientAssertionCredential`` (e.g. ``connection_verify``,
    ``transport``, ``retry_total``). ``exchanges`` counts successful token requests.
    """

    def __init__(self, target: AzureTarget, *, tokens: TokenGetter, clock: Clock,
                 policy: RefreshPolicy, audit: AuditLog, source_name: str,
                 context: WorkerContext, rng: random.Random | None = None,
                 audience: str | None = None, **credential_kwargs: Any) -> None:
        identity = _import_azure()
        self.target = target
        self.audience = audience or target.audience  # the subject token's aud
        self._tokens = tokens
        self._clock = clock
        self._policy = policy
        self._record = ExchangeAudit(audit, source_name, "azure", context)
        self._context = context
        self._rng = rng
        self._lock = threading.Lock()
        self._last_token: SubjectToken | None = None
        self._refreshers: dict[tuple[Any, ...], Refresher[Any]] = {}
        self.exchanges = 0
        if target.authority_host:
            credential_kwargs.setdefault("authority", target.authority_host)
        self._inner = identity.ClientAssertionCredential(
            target.tenant_id, target.client_id, func=self._assertion,
            cache=_no_store_cache(), cae_cache=_no_store_cache(), **credential_kwargs)

    # ------------------------------------------------------------------ TokenCredential
    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> Any:
        """An ``azure.core.credentials.AccessToken`` for ``scopes``."""
        from azure.core.credentials import AccessToken

        options: dict[str, Any] = {"enable_cae": enable_cae}
        if claims:
            options["claims"] = claims
        if tenant_id:
            options["tenant_id"] = tenant_id
        info = self.get_token_info(*scopes, options=options)
        return AccessToken(info.token, info.expires_on)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        """An ``azure.core.credentials.AccessTokenInfo`` for ``scopes`` (cached, refreshed)."""
        if not scopes:
            raise KeylessError("azure: get_token_info needs at least one scope, e.g. "
                               "'https://storage.azure.com/.default'")
        opts = dict(options or {})
        if opts.get("claims"):
            return self._request(scopes, opts)
        key = (tuple(scopes), opts.get("tenant_id"), bool(opts.get("enable_cae")))
        with self._lock:
            refresher = self._refreshers.get(key)
            if refresher is None:
                refresher = Refresher(lambda: self._fetch(scopes, opts),
                                      name=f"azure {' '.join(scopes)}", policy=self._policy,
                                      clock=self._clock, rng=self._rng)
                self._refreshers[key] = refresher
        return refresher.get()

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> AzureCredential:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"AzureCredential(tenant_id={self.target.tenant_id!r}, "
                f"client_id={self.target.client_id!r})")

    # ------------------------------------------------------------------ internals
    def _assertion(self) -> str:
        token = self._tokens(self.audience)
        with self._lock:
            self._last_token = token
        return token.token.reveal()

    def _last(self) -> SubjectToken | None:
        with self._lock:
            return self._last_token

    def _request(self, scopes: tuple[str, ...], options: dict[str, Any]) -> Any:
        info = self._record.call(
            lambda: self._inner.get_token_info(*scopes, options=options), token=self._last,
            principal=self.target.client_id,
            translate=lambda exc: translate_azure_error(exc, token=self._last(),
                                                        target=self.target))
        with self._lock:
            self.exchanges += 1
        self._record.exchanged(self._last(), principal=self.target.client_id)
        return info

    def _fetch(self, scopes: tuple[str, ...], options: dict[str, Any]) -> Fetched[Any]:
        info = self._request(scopes, options)
        return Fetched(value=info, expires_at=float(info.expires_on),
                       issued_at=self._clock.time())


def azure_environment(target: AzureTarget, token_file: str) -> dict[str, str]:
    """azure-identity's own variables for a subprocess (paths and ids only)."""
    env = {"AZURE_FEDERATED_TOKEN_FILE": token_file, "AZURE_CLIENT_ID": target.client_id,
           "AZURE_TENANT_ID": target.tenant_id}
    if target.authority_host:
        env["AZURE_AUTHORITY_HOST"] = target.authority_host
    return env
