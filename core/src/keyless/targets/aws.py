"""AWS: a ``boto3.Session`` whose credentials refresh themselves through botocore's own
web-identity fetcher, fed by a keyless source.

botocore does the exchange (``AssumeRoleWithWebIdentityCredentialFetcher``) and owns the
credential cache (``DeferredRefreshableCredentials``); keyless supplies the subject token,
per-worker session name / policy / tags, refresh windows scaled to the real session length
(botocore's fixed 15/10-minute windows make a 900 s session call STS on every access), backoff
after a failed advisory refresh, typed errors and audit events. The provider is installed with
the public ``CredentialResolver.insert_before`` and always answers, so the session never falls
back to a broader credential chain.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..audit import AuditLog
from ..config import AwsTarget
from ..context import (
    WorkerContext,
    render_json_template,
    render_session_name,
    render_template,
    require_ranks,
)
from ..errors import KeylessError
from ..refresher import RefreshPolicy, due_fraction
from ..tokens import SubjectToken, TokenGetter
from .audited import ExchangeAudit
from .aws_errors import translate_sts_error

if TYPE_CHECKING:
    import boto3

__all__ = ["AwsExchange", "aws_request_key", "aws_templates", "check_ranks_resolved",
           "resolve_region", "resolve_sts_endpoint"]

logger = logging.getLogger("keyless.aws")



def resolve_region(target: AwsTarget, environ: Mapping[str, str]) -> str:
    """The region: the target's, else $AWS_REGION / $AWS_DEFAULT_REGION, else us-east-1."""
    return target.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") \
        or "us-east-1"


def resolve_sts_endpoint(target: AwsTarget, environ: Mapping[str, str]) -> str | None:
    """The STS endpoint: the target's, else the standard $AWS_ENDPOINT_URL_STS, else botocore's
    regional default (None)."""
    return target.sts_endpoint_url or environ.get("AWS_ENDPOINT_URL_STS") or None


def aws_templates(target: AwsTarget) -> dict[str, str | dict[str, Any]]:
    """Config field -> template, for the templates the config writes itself: the session
    name unless it is the default one (whose ``{rank}`` is simply left out when there is
    none), the session policy and the tags."""
    templates: dict[str, str | dict[str, Any]] = {}
    if target.session_name != type(target).model_fields["session_name"].default:
        templates["target.aws.session_name"] = target.session_name
    if target.session_policy is not None:
        templates["target.aws.session_policy"] = target.session_policy
    for key, value in target.tags.items():
        templates[f"target.aws.tags.{key}"] = value
    return templates


def check_ranks_resolved(target: AwsTarget, context: WorkerContext) -> None:
    """:func:`~keyless.context.require_ranks` over the AWS templates."""
    require_ranks(aws_templates(target), context)


def aws_request_key(target: AwsTarget, context: WorkerContext) -> tuple[str, ...]:
    """What a worker's STS request depends on (session name, policy, tags) rendered for
    ``context``: two contexts with the same key can share one credential set."""
    templates = aws_templates(target)
    return (render_session_name(target.session_name, context)[0],
            *(render_json_template(template, context) if field.endswith("session_policy")
              else render_template(str(template), context)
              for field, template in sorted(templates.items())
              if field != "target.aws.session_name"))


class _NoCache(dict[str, Any]):
    """The fetcher's cache, disabled: the refreshable credentials are the one owner."""

    def __contains__(self, key: object) -> bool:
        return False

    def __setitem__(self, key: str, value: Any) -> None:
        return None


def _credentials_class() -> type[Any]:
    from botocore.credentials import DeferredRefreshableCredentials

    base: Any = DeferredRefreshableCredentials  # its private fields are not in the stubs

    class ScaledRefreshableCredentials(base):  # type: ignore[misc]
        """Deferred refreshable credentials whose advisory/mandatory windows follow each
        credential set's real lifetime (with jitter), and that back off after a failed
        advisory refresh instead of retrying on every access."""

        def __init__(self, refresh_using: Callable[[], dict[str, Any]], method: str,
                     policy: RefreshPolicy, rng: random.Random,
                     time_fetcher: Callable[[], Any] | None = None) -> None:
            extra = {} if time_fetcher is None else {"time_fetcher": time_fetcher}
            super().__init__(refresh_using=self._refresh_and_scale, method=method, **extra)
            self._fetch_metadata = refresh_using
            self._policy = policy
            self._rng = rng
            self._failures = 0
            self._retry_at: float = 0.0
            self._system_clock = time_fetcher is None

        def _now(self) -> float:
            if self._system_clock:  # what botocore's default fetcher reads, without the tz
                return time.time()
            return float(self._time_fetcher().timestamp())

        def _refresh_and_scale(self) -> dict[str, Any]:
            from botocore.utils import parse_timestamp

            try:
                metadata = self._fetch_metadata()
            except Exception:
                self._failures += 1
                ceiling = self._policy.backoff_cap(self._failures)
                self._retry_at = self._now() + self._rng.uniform(0.0, ceiling)
                raise
            first = self._frozen_credentials is None
            after_failure = self._failures > 0
            self._failures = 0
            self._retry_at = 0.0
            lifetime = max(parse_timestamp(metadata["expiry_time"]).timestamp() - self._now(), 1.0)
            mandatory = max(min(0.1 * lifetime, 120.0), 0.5)
            advisory = lifetime * (1.0 - due_fraction(self._policy, self._rng, first=first,
                                                      after_failure=after_failure))
            self._mandatory_refresh_timeout = mandatory
            self._advisory_refresh_timeout = min(max(advisory, mandatory + 0.5), lifetime)
            return metadata

        def frozen_with_expiry(self) -> tuple[Any, float]:
            """One consistent pair: the frozen credentials (refreshed if due) and their expiry
            in epoch seconds. botocore publishes both under its refresh lock, so reading them
            under that lock never pairs keys with another refresh's expiry."""
            self.get_frozen_credentials()
            with self._refresh_lock:
                return self._frozen_credentials, float(self._expiry_time.timestamp())

        def refresh_needed(self, refresh_in: float | None = None) -> bool:
            """botocore's test (deferred: nothing fetched yet means a refresh; else whether
            fewer than ``refresh_in`` seconds remain), in epoch seconds: botocore's own builds
            ``datetime.now(tzlocal())`` on every call, most of a cached read's cost. Plus the
            backoff: after a failed advisory refresh, none until ``_retry_at`` unless the
            mandatory window has begun."""
            if self._frozen_credentials is None:
                return True
            if self._expiry_time is None:
                return False
            if refresh_in is None:
                refresh_in = self._advisory_refresh_timeout
            now = self._now()
            remaining = self._expiry_time.timestamp() - now
            if remaining >= refresh_in:
                return False
            return not (self._retry_at and now < self._retry_at
                        and remaining >= self._mandatory_refresh_timeout)

    return ScaledRefreshableCredentials


class AwsExchange:
    """Builds self-refreshing boto3 sessions for one :class:`AwsTarget` and worker context."""

    METHOD = "keyless-web-identity"

    def __init__(self, target: AwsTarget, *, tokens: TokenGetter, source_name: str,
                 context: WorkerContext, policy: RefreshPolicy, audit: AuditLog,
                 environ: Mapping[str, str], rng: random.Random | None = None,
                 audience: str | None = None) -> None:
        self.target = target
        self.audience = audience or target.audience  # the subject token's aud
        self._tokens = tokens
        self.context = context
        self._policy = policy
        self._record = ExchangeAudit(audit, source_name, "aws", context)
        self._environ = environ
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not security
        self.region = resolve_region(target, environ)
        self.sts_endpoint_url = resolve_sts_endpoint(target, environ)
        check_ranks_resolved(target, context)
        self.session_name, self.full_session_name = render_session_name(target.session_name,
                                                                        context)
        self._last_token: SubjectToken | None = None
        self._lock = threading.Lock()
        self._credentials: Any = None

    # ------------------------------------------------------------------ request shape
    def assume_role_arguments(self) -> dict[str, Any]:
        """The AssumeRoleWithWebIdentity arguments other than the token (for audit/doctor)."""
        target = self.target
        args: dict[str, Any] = {"RoleSessionName": self.session_name,
                                "DurationSeconds": target.duration_seconds}
        if target.session_policy is not None:
            args["Policy"] = render_json_template(target.session_policy, self.context)
        if target.policy_arns:
            args["PolicyArns"] = [{"arn": arn} for arn in target.policy_arns]
        return args

    def session_tags(self) -> dict[str, str]:
        """The rendered ``tags``. AssumeRoleWithWebIdentity takes no Tags parameter (AWS reads
        session tags from the token's ``https://aws.amazon.com/tags`` claim), so these are
        recorded on each exchange's audit event (``tags``), not sent to STS."""
        return {key: render_template(value, self.context)
                for key, value in self.target.tags.items()}

    # ------------------------------------------------------------------ botocore wiring
    def _token_loader(self) -> str:
        token = self._tokens(self.audience)
        with self._lock:
            self._last_token = token
        return token.token.reveal()

    def _client_creator(self, botocore_session: Any) -> Callable[..., Any]:
        """botocore's fetcher asks for a new STS client on every refresh (about 20 ms of CPU
        each: endpoint resolution, the service model, the handler chain); its arguments never
        change, so the first client of a process serves every later refresh in it (a forked
        child builds its own rather than share the parent's connection pool)."""
        from botocore.config import Config

        retry = Config(retries={"mode": "standard", "max_attempts": 5},
                       connect_timeout=10, read_timeout=20)
        clients: dict[tuple[int, str], Any] = {}  # refreshes are serialised by botocore

        def create(service_name: str, **kwargs: Any) -> Any:
            key = (os.getpid(), service_name)
            client = clients.get(key)
            if client is None:
                config = kwargs.pop("config", None)
                merged = retry.merge(config) if config is not None else retry
                kwargs.setdefault("region_name", self.region)
                if self.sts_endpoint_url:
                    kwargs.setdefault("endpoint_url", self.sts_endpoint_url)
                client = botocore_session.create_client(service_name, config=merged, **kwargs)
                clients.clear()  # another process's client, if any
                clients[key] = client
            return client

        return create

    def _last(self) -> SubjectToken | None:
        with self._lock:
            return self._last_token

    def _fetch_metadata(self, fetcher: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"principal": self.target.role_arn,
                                  "tags": self.session_tags(), **self._audited_names()}
        metadata: dict[str, Any] = self._record.call(
            fetcher.fetch_credentials, token=self._last, **fields,
            translate=lambda exc: translate_sts_error(exc, role_arn=self.target.role_arn,
                                                      token=self._last()))
        self._record.exchanged(self._last(), "exchange", **fields)
        return metadata

    def _audited_names(self) -> dict[str, str]:
        """The session name STS got, and the full rendered one when it had to be shortened."""
        names = {"session_name": self.session_name}
        if self.full_session_name != self.session_name:
            names["session_name_full"] = self.full_session_name
        return names

    def credentials(self) -> Any:
        """This worker's one botocore ``DeferredRefreshableCredentials`` (no STS call until
        first use). Every session built here shares it: one cache, one STS call per refresh
        whatever the number of sessions and threads."""
        with self._lock:
            if self._credentials is None:
                self._credentials = self._new_credentials()
            return self._credentials

    def _new_credentials(self) -> Any:
        import botocore.session
        from botocore.credentials import AssumeRoleWithWebIdentityCredentialFetcher

        fetcher = AssumeRoleWithWebIdentityCredentialFetcher(
            client_creator=self._client_creator(botocore.session.Session()),
            web_identity_token_loader=self._token_loader,
            role_arn=self.target.role_arn,
            extra_args=self.assume_role_arguments(),
            cache=_NoCache(),
        )
        return _credentials_class()(
            refresh_using=lambda: self._fetch_metadata(fetcher), method=self.METHOD,
            policy=self._policy, rng=self._rng)

    def frozen_credentials(self) -> tuple[Any, float]:
        """A consistent (botocore ``ReadOnlyCredentials``, expiry epoch seconds) pair, for
        consumers that need the expiry too (the loopback credential endpoint)."""
        pair: tuple[Any, float] = self.credentials().frozen_with_expiry()
        return pair

    def botocore_session(self) -> Any:
        """A botocore session whose credential chain starts with keyless (and never falls
        through: the keyless provider always answers)."""
        import botocore.session
        from botocore.credentials import CredentialProvider

        session = botocore.session.Session()
        exchange = self

        class KeylessCredentialProvider(CredentialProvider):
            METHOD = AwsExchange.METHOD
            CANONICAL_NAME = "custom-keyless"

            def load(self) -> Any:
                return exchange.credentials()

        resolver = session.get_component("credential_provider")
        resolver.insert_before(resolver.providers[0].METHOD, KeylessCredentialProvider())
        session.set_config_variable("region", self.region)
        return session

    def boto3_session(self) -> boto3.Session:
        """A ``boto3.Session`` on keyless credentials (one refreshable credential set)."""
        try:
            import boto3
        except ImportError:  # pragma: no cover - depends on extras
            raise KeylessError("aws: boto3 is not installed; fix: pip install 'keyless[aws]'") \
                from None
        return boto3.Session(botocore_session=self.botocore_session(), region_name=self.region)
