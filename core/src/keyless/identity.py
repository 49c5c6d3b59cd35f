"""The pipeline for one config in one process: source → refresher → exchanges → delivery.

:class:`Keyless` is what every host wraps (Airflow hook, Prefect block, Ray plugin, CLI). It owns
the subject-token caches (one :class:`~keyless.refresher.Refresher` per audience); the cloud
SDKs own their credential caches. It is picklable: only the config and the worker context
cross a process boundary; caches, locks and HTTP clients are rebuilt lazily on the other side.
"""

from __future__ import annotations

import os
import random
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .audit import AuditEvent, AuditLog
from .clock import Clock, SystemClock
from .config import KeylessConfig, load_config
from .context import WorkerContext
from .errors import ConfigError, SourceUnavailable, TokenRejected
from .refresher import Fetched, Refresher, RefreshPolicy
from .sources import build_source
from .sources.base import Source, default_http_client
from .tokens import SubjectToken

if TYPE_CHECKING:
    import boto3

    from .targets.aws import AwsExchange
    from .targets.azure import AzureCredential
    from .targets.databricks import DatabricksExchange
    from .targets.gcp import GcpExchange
    from .targets.oauth2 import TokenExchange

__all__ = ["Keyless"]


class Keyless:
    """Short-lived, refreshed identity for one worker.

    ``config`` is anything :func:`~keyless.config.load_config` takes. ``context`` names the
    worker (default: what this process can see). ``clock``, ``http`` and ``environ`` are
    injected for tests; production leaves them unset.
    """

    def __init__(self, config: KeylessConfig | Mapping[str, Any] | str | Path, *,
                 context: WorkerContext | None = None, clock: Clock | None = None,
                 http: Callable[[], httpx.Client] | None = None,
                 environ: Mapping[str, str] | None = None,
                 audit: AuditLog | None = None, rng: random.Random | None = None) -> None:
        self.config = load_config(config)
        self.context = context if context is not None else WorkerContext.from_environment()
        self._clock = clock
        self._http = http
        self._environ = environ
        self._audit = audit
        self._rng = rng
        self._init_caches()

    # ------------------------------------------------------------------ state / pickling
    def _init_caches(self) -> None:
        self._lock = threading.Lock()
        self._source: Source | None = None
        self._refreshers: dict[str, Refresher[SubjectToken]] = {}
        self._exchanges: dict[str, Any] = {}  # one per target name, built on first use
        # other processes' exchanges (aws/gcp(context=...)), by request, least recent first
        self._process_exchanges: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._audit_log: AuditLog | None = self._audit

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "context": self.context}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self.context = state["context"]
        self._clock = None
        self._http = None
        self._environ = None
        self._audit = None
        self._rng = None
        self._init_caches()

    def __repr__(self) -> str:
        targets = [name for name in type(self.config.target).model_fields
                   if getattr(self.config.target, name) is not None]
        return f"Keyless(source={self.config.source.type!r}, targets={targets!r})"

    # ------------------------------------------------------------------ parts
    @property
    def clock(self) -> Clock:
        if self._clock is None:
            self._clock = SystemClock()
        return self._clock

    @property
    def environ(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    @property
    def audit(self) -> AuditLog:
        if self._audit_log is None:
            self._audit_log = AuditLog.from_spec(self.config.audit, clock=self.clock)
        return self._audit_log

    @property
    def policy(self) -> RefreshPolicy:
        return RefreshPolicy.from_spec(self.config.refresh)

    @property
    def source(self) -> Source:
        with self._lock:
            if self._source is None:
                self._source = build_source(self.config.source, http=self._http or
                                            default_http_client, environ=self.environ,
                                            clock=self.clock)
            return self._source

    def _random(self) -> random.Random:
        return self._rng if self._rng is not None else random.Random()  # noqa: S311

    # ------------------------------------------------------------------ subject tokens
    def target_audience(self, name: str) -> str:
        """The aud of the subject tokens exchanged for ``target.<name>``: the target's own
        (its audience field, or ``subject_audience``) when its config sets one, else
        ``source.audience`` when given, else the target's default (the config refuses a
        ``source.audience`` that two targets needing different audiences would share)."""
        audience, own = self._target(name).token_audience()
        return audience if own else (self.config.source.audience or audience)

    def default_audience(self) -> str | None:
        """The subject-token audience when none is asked for: the first target's
        (:meth:`target_audience`)."""
        targets = self.config.target.configured()
        return self.target_audience(next(iter(targets))) if targets else \
            self.config.source.audience

    def resolve_audience(self, audience: str | None = None) -> str:
        """The audience a token is really requested for: the one asked for, else
        :meth:`default_audience` ("" when none)."""
        return audience or self.default_audience() or ""

    def token_refresher(self, audience: str | None = None) -> Refresher[SubjectToken]:
        """The refresher that owns the subject token for ``audience`` in this process."""
        key = self.resolve_audience(audience)
        with self._lock:
            refresher = self._refreshers.get(key)
            if refresher is None:
                refresher = Refresher(
                    lambda: self._fetch_subject_token(key or None),
                    name=f"source {self.config.source.type}", policy=self.policy,
                    clock=self.clock, rng=self._random(),
                    on_refresh=self._audit_issue, on_error=self._audit_error)
                self._refreshers[key] = refresher
            return refresher

    def subject_token(self, audience: str | None = None) -> SubjectToken:
        """A valid subject token for ``audience`` (cached, refreshed ahead of expiry)."""
        return self.token_refresher(audience).get()

    def token(self, audience: str | None = None) -> str:
        """The raw JWT for ``audience``. Hand it only to the party it is meant for."""
        return self.subject_token(audience).token.reveal()

    def _fetch_subject_token(self, audience: str | None) -> Fetched[SubjectToken]:
        token = self.source.fetch(audience)
        if token is None:
            raise SourceUnavailable(
                f"source {self.config.source.type}: no token here; fix: configure "
                "`source` explicitly (see `keyless schema`)")
        now = self.clock.time()
        if token.expires_at <= now:
            raise TokenRejected(
                f"source {self.config.source.type}: the token expired {now - token.expires_at:.0f}"
                f" s ago (exp={token.expires_at:.0f}, iss={token.issuer!r}, sub={token.subject!r}"
                f"); fix: make the source rotate its token (or check this host's clock)",
                claim="exp")
        issued_at = token.issued_at if token.issued_at is not None and token.issued_at <= now \
            else None
        return Fetched(value=token, expires_at=token.expires_at, issued_at=issued_at)

    def _audit_issue(self, token: SubjectToken, first: bool) -> None:
        self.audit.emit(AuditEvent.for_token(
            "issue" if first else "refresh", token, source=self.config.source.type,
            target="token", context=self.context.as_dict()))

    def _audit_error(self, error: BaseException, stale: bool) -> None:
        self.audit.emit(AuditEvent.for_failure(
            error, source=self.config.source.type, target="token",
            context=self.context.as_dict()))

    # ------------------------------------------------------------------ AWS
    #: How many other processes' AWS exchanges :meth:`aws` keeps (least recently used go).
    MAX_PROCESS_EXCHANGES = 256

    def aws(self, context: WorkerContext | None = None) -> AwsExchange:
        """The AWS exchange for this worker (raises ConfigError without a target.aws).

        ``context`` asks for another process's exchange (a rank launched under this one, see
        :meth:`WorkerContext.for_process`): its session name, policy and tags are rendered from
        that context, the subject tokens are this object's. Contexts whose STS request is the
        same share one exchange (a restarted rank keeps its credentials); at most
        :attr:`MAX_PROCESS_EXCHANGES` are kept. Raises :class:`ConfigError` naming the field
        when a template needs a rank the context does not have.
        """
        from .targets.aws import AwsExchange, aws_request_key, check_ranks_resolved

        target = self._target("aws")

        def build(worker: WorkerContext) -> AwsExchange:
            return AwsExchange(target, tokens=self.subject_token,
                               audience=self.target_audience("aws"),
                               source_name=self.config.source.type, context=worker,
                               policy=self.policy, audit=self.audit, environ=self.environ,
                               rng=self._random())

        if context is None or context == self.context:
            exchange: AwsExchange = self._exchange("aws", lambda: build(self.context))
            return exchange
        check_ranks_resolved(target, context)
        found: AwsExchange = self._process_exchange(
            ("aws", *aws_request_key(target, context)), lambda: build(context))
        return found

    def _process_exchange(self, key: tuple[str, ...], build: Callable[[], Any]) -> Any:
        """The exchange of another process's request ``key`` (made by ``build`` once; the
        least recently used are dropped past :attr:`MAX_PROCESS_EXCHANGES`)."""
        with self._lock:
            found = self._process_exchanges.get(key)
            if found is not None:
                self._process_exchanges.move_to_end(key)
                return found
        created = build()
        with self._lock:
            found = self._process_exchanges.setdefault(key, created)
            self._process_exchanges.move_to_end(key)
            while len(self._process_exchanges) > self.MAX_PROCESS_EXCHANGES:
                self._process_exchanges.popitem(last=False)
            return found

    def boto3_session(self) -> boto3.Session:
        """A ``boto3.Session`` whose credentials refresh themselves for as long as it lives."""
        return self.aws().boto3_session()

    # ------------------------------------------------------------------ Azure, Databricks, RFC 8693
    def _target(self, name: str) -> Any:
        target = getattr(self.config.target, name)
        if target is None:
            raise ConfigError(f"config: target.{name} is not configured; fix: add target.{name}"
                              " (see `keyless schema`)", field=f"target.{name}")
        return target

    def _exchange(self, name: str, build: Callable[[], Any]) -> Any:
        """This process's one exchange for target ``name``, built on first use. It is built
        outside the lock (building may call back into this object); if two threads race, the
        first one stored wins and the other is dropped before any upstream call."""
        with self._lock:
            exchange = self._exchanges.get(name)
        if exchange is None:
            created = build()
            with self._lock:
                exchange = self._exchanges.setdefault(name, created)
        return exchange

    def _http_client(self) -> httpx.Client:
        return (self._http or default_http_client)()

    def azure_credential(self, **credential_kwargs: Any) -> AzureCredential:
        """An azure-core ``TokenCredential`` for ``target.azure`` (one per process; the first
        call's ``credential_kwargs`` go to azure-identity, e.g. ``connection_verify``)."""
        from .targets.azure import AzureCredential

        target = self._target("azure")
        credential: AzureCredential = self._exchange("azure", lambda: AzureCredential(
            target, tokens=self.subject_token, audience=self.target_audience("azure"),
            clock=self.clock, policy=self.policy,
            audit=self.audit, source_name=self.config.source.type,
            context=self.context, rng=self._random(), **credential_kwargs))
        return credential

    def databricks(self) -> DatabricksExchange:
        """The Databricks exchange for ``target.databricks`` (one per process)."""
        from .targets.databricks import DatabricksExchange

        target = self._target("databricks")
        exchange: DatabricksExchange = self._exchange("databricks", lambda: DatabricksExchange(
            target, tokens=self.subject_token, audience=self.target_audience("databricks"),
            audit=self.audit,
            source_name=self.config.source.type, context=self.context))
        return exchange

    def databricks_config(self, **kwargs: Any) -> Any:
        """A ``databricks.sdk.core.Config`` on keyless credentials (``WorkspaceClient(config=
        ...)``); ``kwargs`` are other Config fields."""
        return self.databricks().config(**kwargs)

    def _token_exchange(self, name: str) -> TokenExchange:
        from .targets import oauth2

        self._target(name)
        build = oauth2.huggingface_exchange if name == "huggingface" else oauth2.oauth2_exchange
        exchange: TokenExchange = self._exchange(name, lambda: build(self, self._http_client))
        return exchange

    def oauth2(self) -> TokenExchange:
        """The generic RFC 8693 exchange for ``target.oauth2`` (cached, refreshed)."""
        return self._token_exchange("oauth2")

    def oauth2_token(self) -> str:
        """The exchanged ``target.oauth2`` token. Hand it only to the service it is for."""
        return self.oauth2().token()

    def huggingface(self) -> TokenExchange:
        """The Hugging Face exchange for ``target.huggingface`` (cached, refreshed)."""
        return self._token_exchange("huggingface")

    def huggingface_token(self) -> str:
        """A fresh Hugging Face token for ``huggingface_hub`` (``HfApi(token=...)``)."""
        return self.huggingface().token()

    # ------------------------------------------------------------------ GCP
    def gcp(self, context: WorkerContext | None = None) -> GcpExchange:
        """The GCP exchange for this worker (raises ConfigError without a target.gcp, or when
        the access boundary names ``{rank}``/``{local_rank}`` and the worker has none);
        ``context``: another process's, as for :meth:`aws` (its access boundary is rendered
        from that context; contexts with the same boundary share one exchange)."""
        from .context import render_json_template, require_ranks
        from .targets.gcp import GcpExchange

        target = self._target("gcp")

        def build(worker: WorkerContext) -> GcpExchange:
            return GcpExchange(
                target, tokens=self.subject_token, audience=self.target_audience("gcp"),
                source_name=self.config.source.type, context=worker, policy=self.policy,
                audit=self.audit, environ=self.environ, clock=self.clock, rng=self._random())

        templates = {} if target.access_boundary is None else {
            "target.gcp.access_boundary": target.access_boundary}
        require_ranks(templates, context or self.context)  # never a boundary for "no rank"
        if context is None or context == self.context:
            exchange: GcpExchange = self._exchange("gcp", lambda: build(self.context))
            return exchange
        key = ("gcp", *(render_json_template(t, context) for t in templates.values()))
        found: GcpExchange = self._process_exchange(key, lambda: build(context))
        return found

    def google_credentials(self) -> Any:
        """This worker's ``google.auth.credentials.Credentials`` (one token, one refresh lock,
        refreshed ahead of expiry for as long as it lives)."""
        return self.gcp().credentials()
