"""Build the source object for a config spec: one class per spec type.

:func:`build_source` maps each ``SourceSpec`` type to its class and hands over the injected
dependencies (``http``, ``environ``, ``clock``); a ``token_exchange`` spec's nested ``subject``
and ``actor`` are built recursively with the same dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..clock import Clock
from ..config import (
    AmbientSource,
    AwsWebIdentityTokenSource,
    ClientCredentialsSource,
    CommandSource,
    EnvSource,
    FileSource,
    GcpMetadataSource,
    GithubActionsSource,
    GitlabSource,
    SourceSpec,
    SpiffeSource,
    TokenExchangeSource,
)
from ..errors import ConfigError
from .ambient import AmbientTokenSource
from .aws_web_identity import AwsWebIdentityTokenSourceImpl
from .base import HttpClientFactory, Source, default_http_client
from .ci import GithubActionsTokenSource, GitlabTokenSource
from .client_credentials import ClientCredentialsTokenSource
from .command import CommandTokenSource
from .env import EnvTokenSource
from .file import FileTokenSource
from .gcp_metadata import GcpMetadataTokenSource
from .spiffe import SpiffeTokenSource
from .token_exchange import TokenExchangeTokenSource

__all__ = ["build_source"]


def build_source(spec: SourceSpec, *, http: HttpClientFactory = default_http_client,
                 environ: Mapping[str, str] | None = None,
                 clock: Clock | None = None) -> Source:
    """The source for ``spec``. ``environ`` defaults to ``os.environ`` read at fetch time,
    ``clock`` to the system clock. Raises :class:`ConfigError` for an unknown spec type."""
    if isinstance(spec, FileSource):
        return FileTokenSource(spec)
    if isinstance(spec, EnvSource):
        return EnvTokenSource(spec, environ=environ)
    if isinstance(spec, GithubActionsSource):
        return GithubActionsTokenSource(spec, http=http, environ=environ)
    if isinstance(spec, GitlabSource):
        return GitlabTokenSource(spec, environ=environ)
    if isinstance(spec, GcpMetadataSource):
        return GcpMetadataTokenSource(spec, http=http, environ=environ)
    if isinstance(spec, ClientCredentialsSource):
        return ClientCredentialsTokenSource(spec, http=http, clock=clock)
    if isinstance(spec, TokenExchangeSource):  # the nested sources with the same dependencies
        return TokenExchangeTokenSource(
            spec, http=http,
            subject_source=build_source(spec.subject, http=http, environ=environ, clock=clock),
            actor_source=None if spec.actor is None else build_source(
                spec.actor, http=http, environ=environ, clock=clock))
    if isinstance(spec, CommandSource):
        return CommandTokenSource(spec, environ=environ)
    if isinstance(spec, AmbientSource):
        return AmbientTokenSource(spec, http=http, environ=environ)
    if isinstance(spec, SpiffeSource):
        return SpiffeTokenSource(spec)
    if isinstance(spec, AwsWebIdentityTokenSource):
        return AwsWebIdentityTokenSourceImpl(spec, environ=environ)
    raise ConfigError(f"source: unknown source type {type(spec).__name__!r}", field="source.type")
