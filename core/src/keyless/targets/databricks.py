"""Databricks workload identity federation through databricks-sdk.

databricks-sdk does the exchange and owns the cache:
``databricks.sdk.oidc.DatabricksOidcTokenSource``
posts ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange`` with our subject token
(``subject_token_type=urn:ietf:params:oauth:token-type:jwt``), ``client_id`` and
``scope=all-apis`` to the workspace's token endpoint (``{host}/oidc/v1/token``, found through
``{host}/.well-known/databricks-config`` or ``{host}/oidc/.well-known/oauth-authorization-server``)
and caches the result with a lock (one exchange at a time; stale after half the lifetime, at
most 20 minutes before expiry). keyless supplies the subject token through an ``IdTokenSource``
(fresh from our refresher on every SDK refresh), typed errors and audit events.

The subject token's aud is ``target.audience``, else the workspace token endpoint
``{host}/oidc/v1/token`` (what the SDK's own OIDC flows request when no audience is set).

Subprocesses use the SDK's ``file-oidc`` auth (``DATABRICKS_AUTH_TYPE=file-oidc``,
``DATABRICKS_OIDC_TOKEN_FILEPATH``): the same exchange, reading our refreshed token file.
"""

from __future__ import annotations

import threading
from typing import Any

from ..audit import AuditLog
from ..config import DatabricksTarget
from ..context import WorkerContext
from ..errors import ExchangeFailed, KeylessError, TokenRejected
from ..http import scrub
from ..tokens import SubjectToken, TokenGetter
from .audited import ExchangeAudit
from .oauth2 import claim_at_fault

__all__ = ["AUTH_TYPE", "DatabricksExchange", "databricks_audience", "databricks_environment"]

AUTH_TYPE = "keyless-oidc"



def databricks_audience(target: DatabricksTarget) -> str:
    """The aud requested for the subject token (see ``DatabricksTarget.token_audience``)."""
    return target.token_audience()[0]


def _host(host: str) -> str:
    host = host.rstrip("/")
    return host if "://" in host else f"https://{host}"


def _import_sdk() -> Any:
    try:
        import databricks.sdk.core
        import databricks.sdk.credentials_provider
        import databricks.sdk.oidc
    except ImportError:
        raise KeylessError("databricks: databricks-sdk is not installed; fix: pip install "
                           "'keyless[databricks]'") from None
    return databricks.sdk


class DatabricksExchange:
    """Builds ``databricks.sdk.core.Config`` objects authenticated by keyless.

    ``exchanges`` counts token exchanges made through this object's configs (one per SDK
    refresh, not per API call).
    """

    def __init__(self, target: DatabricksTarget, *, tokens: TokenGetter, audit: AuditLog,
                 source_name: str, context: WorkerContext, audience: str | None = None) -> None:
        self.target = target
        self.audience = audience or databricks_audience(target)
        self._tokens = tokens
        self._record = ExchangeAudit(audit, source_name, "databricks", context)
        self._context = context
        self._lock = threading.Lock()
        self._last_token: SubjectToken | None = None
        self._requests = 0  # subject tokens handed to the SDK: one per exchange it makes
        self.exchanges = 0

    # ------------------------------------------------------------------ SDK wiring
    def id_token_source(self) -> Any:
        """A ``databricks.sdk.oidc.IdTokenSource`` handing out our refreshed subject token."""
        sdk = _import_sdk()
        exchange = self

        class KeylessIdTokenSource(sdk.oidc.IdTokenSource):  # type: ignore[misc,name-defined]
            def id_token(self) -> Any:
                token = exchange._tokens(exchange.audience)
                with exchange._lock:
                    exchange._last_token = token
                    exchange._requests += 1
                return sdk.oidc.IdToken(jwt=token.token.reveal())

        return KeylessIdTokenSource()

    def credentials_strategy(self) -> Any:
        """A ``CredentialsStrategy`` (auth type ``keyless-oidc``) for ``Config``."""
        sdk = _import_sdk()
        exchange = self
        base: Any = sdk.credentials_provider.CredentialsStrategy

        class KeylessCredentialsStrategy(base):  # type: ignore[misc]
            def auth_type(self) -> str:
                return AUTH_TYPE

            def __call__(self, cfg: Any) -> Any:
                return exchange._provider(cfg)

        return KeylessCredentialsStrategy()

    def config(self, **kwargs: Any) -> Any:
        """A ``databricks.sdk.core.Config`` for ``target.host`` on keyless credentials;
        ``kwargs`` are other Config fields (e.g. ``disable_async_token_refresh``)."""
        sdk = _import_sdk()
        kwargs.setdefault("host", _host(self.target.host))
        if self.target.client_id:
            kwargs.setdefault("client_id", self.target.client_id)
        try:
            return sdk.core.Config(credentials_strategy=self.credentials_strategy(), **kwargs)
        except KeylessError:
            raise
        except ValueError as exc:
            cause = exc.__cause__
            if isinstance(cause, KeylessError):
                raise cause from None
            raise ExchangeFailed(f"databricks: cannot configure the SDK for "
                                 f"{_host(self.target.host)}: {scrub(str(exc))}; fix: check "
                                 "target.databricks.host", retryable=False) from None

    def workspace_client(self, **kwargs: Any) -> Any:
        """A ``databricks.sdk.WorkspaceClient`` on :meth:`config`."""
        from databricks.sdk import WorkspaceClient

        return WorkspaceClient(config=self.config(**kwargs))

    def _provider(self, cfg: Any) -> Any:
        sdk = _import_sdk()
        endpoints = cfg.databricks_oidc_endpoints
        if endpoints is None or not endpoints.token_endpoint:
            raise ExchangeFailed(f"databricks: no OIDC token endpoint found for {cfg.host}; "
                                 "fix: check target.databricks.host", retryable=False)
        source = sdk.oidc.DatabricksOidcTokenSource(
            host=cfg.host, token_endpoint=endpoints.token_endpoint,
            id_token_source=self.id_token_source(), client_id=cfg.client_id,
            account_id=cfg.account_id, disable_async=bool(cfg.disable_async_token_refresh),
            scopes=cfg.get_scopes_as_string())

        def token() -> Any:
            return self._token(source)

        def headers() -> dict[str, str]:
            value = token()
            return {"Authorization": f"{value.token_type} {value.access_token}"}

        return sdk.credentials_provider.OAuthCredentialsProvider(headers, token)

    def _last(self) -> SubjectToken | None:
        with self._lock:
            return self._last_token

    def _token(self, source: Any) -> Any:
        with self._lock:
            before = self._requests
        value = self._record.call(source.token, token=self._last,
                                  principal=self.target.client_id,
                                  translate=lambda exc: self._translate(exc, self._last()))
        with self._lock:
            exchanged = self._requests != before
            if exchanged:
                self.exchanges += 1
        if exchanged:
            self._record.exchanged(self._last(), principal=self.target.client_id)
        return value

    def _translate(self, exc: BaseException, token: SubjectToken | None) -> KeylessError:
        if isinstance(exc, KeylessError):
            return exc
        secrets = (token.token.reveal(),) if token is not None else ()
        text = scrub(str(exc), secrets)
        host = _host(self.target.host)
        seen = (f" (subject token iss={token.issuer!r}, sub={token.subject!r}, "
                f"aud={token.audience!r})") if token is not None else ""
        if isinstance(exc, ValueError):  # databricks-sdk's retrieve_token: "code: summary"
            claim = claim_at_fault(text)
            fix = ("add a federation policy for this issuer and subject to the service "
                   f"principal {self.target.client_id!r}, with audience {self.audience!r}")
            return TokenRejected(f"databricks: {host} refused the token exchange: {text}{seen}"
                                 f"; fix: {fix}", claim=claim)
        return ExchangeFailed(f"databricks: token exchange at {host} failed: "
                              f"{type(exc).__name__}; transient, retried", retryable=True)

    def __repr__(self) -> str:
        return f"DatabricksExchange(host={_host(self.target.host)!r})"


def databricks_environment(target: DatabricksTarget, token_file: str) -> dict[str, str]:
    """databricks-sdk's own variables for a subprocess (``file-oidc``; paths and ids only)."""
    env = {"DATABRICKS_HOST": _host(target.host), "DATABRICKS_AUTH_TYPE": "file-oidc",
           "DATABRICKS_OIDC_TOKEN_FILEPATH": token_file}
    if target.client_id:
        env["DATABRICKS_CLIENT_ID"] = target.client_id
    return env
