"""CI platforms' OIDC tokens: GitHub Actions and GitLab CI.

GitHub Actions: GET ``$ACTIONS_ID_TOKEN_REQUEST_URL`` with ``&audience=`` appended (URL-encoded)
and ``Authorization: Bearer $ACTIONS_ID_TOKEN_REQUEST_TOKEN``; the answer is ``{"value": JWT}``.
Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``, else none
(GitHub then uses the repository owner's URL). The variables exist only when the job has
``permissions: id-token: write``: without them the source is "not here" (``None``) in ambient
detection (``detect=True``) and :class:`SourceMisconfigured` when configured explicitly.

GitLab CI: the ``id_tokens:`` entry's variable ``spec.variable``. GitLab fixes ``aud`` in the
pipeline file, so the requested audience is ignored. Missing -> ``None`` when detecting, else
:class:`SourceMisconfigured` explaining the ``id_tokens:`` entry to add.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import quote

from ..config import GithubActionsSource, GitlabSource
from ..errors import SourceMisconfigured
from ..http import json_object, raise_for_status, send
from ..tokens import SubjectToken
from .base import HttpClientFactory, default_http_client

__all__ = ["GithubActionsTokenSource", "GitlabTokenSource"]

_URL_VAR = "ACTIONS_ID_TOKEN_REQUEST_URL"
_TOKEN_VAR = "ACTIONS_ID_TOKEN_REQUEST_TOKEN"
_COMPONENT_GH = "source github_actions"
_PERMISSION_FIX = ("add `permissions: id-token: write` to the workflow or job "
                   "(pull requests from forks never get an OIDC token)")


class GithubActionsTokenSource:
    """Requests a GitHub Actions OIDC token for the audience on every fetch."""

    name = "github_actions"

    def __init__(self, spec: GithubActionsSource | None = None, *,
                 http: HttpClientFactory = default_http_client,
                 environ: Mapping[str, str] | None = None, detect: bool = False) -> None:
        self.spec = spec if spec is not None else GithubActionsSource()
        self._http = http
        self._environ = environ
        self.detect = detect

    def fetch(self, audience: str | None) -> SubjectToken | None:
        environ = self._environ if self._environ is not None else os.environ
        url = environ.get(_URL_VAR, "")
        bearer = environ.get(_TOKEN_VAR, "")
        if not url or not bearer:
            if self.detect:
                return None
            missing = " and ".join(v for v, val in ((_URL_VAR, url), (_TOKEN_VAR, bearer))
                                   if not val)
            running = ("this is a GitHub Actions job but " if environ.get("GITHUB_ACTIONS")
                       else "not running in GitHub Actions, or ")
            raise SourceMisconfigured(
                f"{_COMPONENT_GH}: ${missing} not set: {running}the job may not request OIDC "
                f"tokens; fix: {_PERMISSION_FIX}")
        wanted = audience or self.spec.audience
        if wanted:
            url += ("&" if "?" in url else "?") + "audience=" + quote(wanted, safe="")
        response = send(_COMPONENT_GH, self._http(), "GET", url,
                        headers={"Authorization": f"Bearer {bearer}",
                                 "Accept": "application/json; api-version=2.0"})
        raise_for_status(_COMPONENT_GH, response,
                         f"the runner refused the token request: {_PERMISSION_FIX}")
        body = json_object(response)
        value = body.get("value") if body is not None else None
        if not isinstance(value, str) or not value:
            raise SourceMisconfigured(
                f"{_COMPONENT_GH}: the token service's answer has no `value`; fix: check "
                f"that ${_URL_VAR} is the runner's own (do not override it)")
        return SubjectToken.from_jwt(value, origin="github_actions")

    def __repr__(self) -> str:
        return f"GithubActionsTokenSource(audience={self.spec.audience!r}, detect={self.detect})"


class GitlabTokenSource:
    """Reads the GitLab ``id_tokens:`` variable ``spec.variable`` on every fetch."""

    name = "gitlab"

    def __init__(self, spec: GitlabSource | None = None, *,
                 environ: Mapping[str, str] | None = None, detect: bool = False) -> None:
        self.spec = spec if spec is not None else GitlabSource()
        self._environ = environ
        self.detect = detect

    def fetch(self, audience: str | None) -> SubjectToken | None:
        """Read the variable now; the requested ``audience`` is ignored (set in .gitlab-ci.yml)."""
        environ = self._environ if self._environ is not None else os.environ
        variable = self.spec.variable
        raw = environ.get(variable, "").strip()
        if not raw:
            if self.detect:
                return None
            aud = audience or self.spec.audience or "https://sts.amazonaws.com"
            raise SourceMisconfigured(
                f"source gitlab: ${variable} is not set; fix: add to the job in .gitlab-ci.yml "
                f"`id_tokens: {{{variable}: {{aud: {aud}}}}}`")
        return SubjectToken.from_jwt(raw, origin=f"gitlab:{variable}")

    def __repr__(self) -> str:
        return f"GitlabTokenSource(variable={self.spec.variable!r}, detect={self.detect})"
