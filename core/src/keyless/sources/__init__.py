"""Where subject tokens come from: one small class per way of getting a JWT.

Every class implements :class:`~keyless.sources.base.Source` (``name`` and
``fetch(audience) -> SubjectToken | None``) and takes its config spec plus injected
dependencies (``http``: a factory of ``httpx.Client``; ``environ``; ``clock``).
:func:`build_source` builds the right one for a ``SourceSpec``.
"""

from __future__ import annotations

from .ambient import DEFAULT_TOKEN_PATHS, TOKEN_FILE_VARIABLES, AmbientTokenSource
from .aws_web_identity import AwsWebIdentityTokenSourceImpl
from .base import HttpClientFactory, Source, default_http_client
from .ci import GithubActionsTokenSource, GitlabTokenSource
from .client_credentials import ClientCredentialsTokenSource
from .command import CommandTokenSource
from .env import EnvTokenSource
from .factory import build_source
from .file import FileTokenSource
from .gcp_metadata import GcpMetadataTokenSource
from .spiffe import SpiffeTokenSource
from .token_exchange import TokenExchangeTokenSource

__all__ = [
    "DEFAULT_TOKEN_PATHS",
    "TOKEN_FILE_VARIABLES",
    "AmbientTokenSource",
    "AwsWebIdentityTokenSourceImpl",
    "ClientCredentialsTokenSource",
    "CommandTokenSource",
    "EnvTokenSource",
    "FileTokenSource",
    "GcpMetadataTokenSource",
    "GithubActionsTokenSource",
    "GitlabTokenSource",
    "HttpClientFactory",
    "Source",
    "SpiffeTokenSource",
    "TokenExchangeTokenSource",
    "build_source",
    "default_http_client",
]
