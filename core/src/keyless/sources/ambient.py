"""Ambient detection: the first source that applies here, like botocore's
``CredentialResolver``: a list of detector sources, each returning ``None`` when "not here".

Order (first that applies wins):

1. ``$KEYLESS_OIDC_TOKEN_FILE`` (a token file path, keyless's own explicit setting);
2. ``$AWS_WEB_IDENTITY_TOKEN_FILE``, then ``$AZURE_FEDERATED_TOKEN_FILE``;
3. well-known Kubernetes projected token paths (:data:`DEFAULT_TOKEN_PATHS`, injectable);
4. GitHub Actions (``$ACTIONS_ID_TOKEN_REQUEST_URL``/``_TOKEN``);
5. GitLab CI: the ``id_tokens:`` variable ``$KEYLESS_ID_TOKEN`` (only that configured name;
   the deprecated ``CI_JOB_JWT*`` variables are not read);
6. the GCP metadata server (a quick probe first).

A file named by a variable but missing is skipped (noted in the report). A detector that
applies but is broken raises (an empty token file, a refused request): that is not "not here".
Nothing applies -> :class:`SourceUnavailable` listing what was tried and how to configure a
source explicitly. The chain is rebuilt from ``environ`` at every fetch.

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``; it is
handed to every detector (file and GitLab detectors ignore it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..config import SOURCE_TYPES, AmbientSource, FileSource, GitlabSource
from ..errors import SourceUnavailable
from ..tokens import SubjectToken
from .base import HttpClientFactory, Source, default_http_client
from .ci import GithubActionsTokenSource, GitlabTokenSource
from .file import FileTokenSource
from .gcp_metadata import GcpMetadataTokenSource

__all__ = ["DEFAULT_TOKEN_PATHS", "TOKEN_FILE_VARIABLES", "AmbientTokenSource"]

TOKEN_FILE_VARIABLES: tuple[str, ...] = (
    "KEYLESS_OIDC_TOKEN_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AZURE_FEDERATED_TOKEN_FILE",
)
DEFAULT_TOKEN_PATHS: tuple[str, ...] = (
    "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
    "/var/run/secrets/azure/tokens/azure-identity-token",
    "/var/run/secrets/tokens/oidc",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
)
GITLAB_VARIABLE = "KEYLESS_ID_TOKEN"


class AmbientTokenSource:
    """Returns the first detector's token; see the module docstring for the order."""

    name = "ambient"

    def __init__(self, spec: AmbientSource | None = None, *,
                 http: HttpClientFactory = default_http_client,
                 environ: Mapping[str, str] | None = None,
                 token_paths: Sequence[str] = DEFAULT_TOKEN_PATHS,
                 probe_timeout: float = 1.0) -> None:
        self.spec = spec if spec is not None else AmbientSource()
        self._http = http
        self._environ = environ
        self.token_paths = tuple(token_paths)
        self.probe_timeout = probe_timeout

    def detectors(self) -> list[tuple[str, Source | None]]:
        """The chain for the current environment: ``(label, source)`` pairs in order; the
        label says why the detector did not apply, ``source`` is None for a file variable that
        is not set."""
        environ = self._environ if self._environ is not None else os.environ
        chain: list[tuple[str, Source | None]] = []
        for variable in TOKEN_FILE_VARIABLES:
            path = environ.get(variable, "")
            if path:
                chain.append((f"${variable}={path} (no such file)",
                              FileTokenSource(FileSource(path=path), missing_ok=True)))
            else:
                chain.append((f"${variable} (not set)", None))
        for path in self.token_paths:
            chain.append((f"{path} (no such file)",
                          FileTokenSource(FileSource(path=path), missing_ok=True)))
        github = ("GitHub Actions (a job without `permissions: id-token: write`)"
                  if environ.get("GITHUB_ACTIONS") else "GitHub Actions (not a GitHub job)")
        chain.append((github, GithubActionsTokenSource(http=self._http, environ=self._environ,
                                                       detect=True)))
        gitlab = (f"GitLab ${GITLAB_VARIABLE} (not set: add `id_tokens: {{{GITLAB_VARIABLE}: "
                  "{aud: ...}}` to the job)" if environ.get("GITLAB_CI")
                  else f"GitLab ${GITLAB_VARIABLE} (not set)")
        chain.append((gitlab, GitlabTokenSource(GitlabSource(variable=GITLAB_VARIABLE),
                                                environ=self._environ, detect=True)))
        gcp = GcpMetadataTokenSource(http=self._http, environ=self._environ, detect=True,
                                     probe_timeout=self.probe_timeout)
        chain.append((f"GCP metadata server {gcp.host()} (no answer)", gcp))
        return chain

    def fetch(self, audience: str | None) -> SubjectToken | None:
        wanted = audience or self.spec.audience
        tried: list[str] = []
        for label, source in self.detectors():
            token = source.fetch(wanted) if source is not None else None
            if token is not None:
                return token
            tried.append(label)
        raise SourceUnavailable(
            "source ambient: no token source found here; tried: " + "; ".join(tried)
            + ". fix: set KEYLESS_OIDC_TOKEN_FILE to a token file, or configure the source "
            "explicitly in the config's `source:` (type "
            + ", ".join(t for t in SOURCE_TYPES if t != "ambient") + "; see `keyless schema`)")

    def __repr__(self) -> str:
        return (f"AmbientTokenSource(audience={self.spec.audience!r}, "
                f"token_paths={list(self.token_paths)!r})")
