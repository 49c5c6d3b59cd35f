"""RFC 8693 token exchange as a source: the nested ``subject`` (and optional ``actor``) source's
token is exchanged at ``token_url`` for a JWT that becomes the subject token of the next hop.

Request (form): ``grant_type=urn:ietf:params:oauth:grant-type:token-exchange``,
``subject_token``, ``subject_token_type``, ``actor_token``/``actor_token_type`` (with an actor),
``requested_token_type``, ``audience``, ``resource``, ``scope`` (each when set). Client
authentication: HTTP Basic (RFC 6749 §2.3.1) when ``client_id`` and ``client_secret`` are given;
``client_id`` alone is sent in the form (a public client).

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``. The nested
sources are fetched for their own ``audience`` (their spec's), not the caller's: the caller's
audience is for the exchanged token, the nested token is for this exchange server.

The answer's ``access_token`` must be a JWT. Errors map as for client_credentials.
"""

from __future__ import annotations

from ..config import TokenExchangeSource
from ..errors import SourceMisconfigured, SourceUnavailable
from ..http import (
    TOKEN_EXCHANGE_GRANT,
    is_jwt,
    oauth_json,
    safe_url,
    send,
    token_exchange_fields,
)
from ..tokens import SubjectToken
from .base import HttpClientFactory, Source, default_http_client
from .client_credentials import basic_auth_header

__all__ = ["TOKEN_EXCHANGE_GRANT", "TokenExchangeTokenSource"]

_COMPONENT = "source token_exchange"


class TokenExchangeTokenSource:
    """Fetches the nested token(s) and exchanges them on every fetch.

    ``subject_source`` (and ``actor_source`` when the spec has an actor) are the nested
    sources, built from the spec by :func:`keyless.sources.build_source` with the same
    injected dependencies (or injected by a test).
    """

    name = "token_exchange"

    def __init__(self, spec: TokenExchangeSource, *, subject_source: Source,
                 actor_source: Source | None = None,
                 http: HttpClientFactory = default_http_client) -> None:
        self.spec = spec
        self._http = http
        self.subject_source: Source = subject_source
        self.actor_source: Source | None = actor_source

    def fetch(self, audience: str | None) -> SubjectToken | None:
        spec = self.spec
        subject = self._nested(self.subject_source, "subject")
        actor = None if self.actor_source is None else self._nested(self.actor_source, "actor")
        wanted = audience or spec.audience
        form = token_exchange_fields(
            spec.subject_token_type, subject_token=subject.token.reveal(),
            actor_token=actor.token.reveal() if actor else None,
            actor_token_type=spec.actor_token_type, audience=wanted, resource=spec.resource,
            scope=spec.scope, requested_token_type=spec.requested_token_type)
        sent_secrets = [token.token.reveal() for token in (subject, actor) if token]
        headers = {"Accept": "application/json"}
        if spec.client_id and spec.client_secret is not None:
            secret = spec.client_secret.get_secret_value()
            sent_secrets.append(secret)
            headers["Authorization"] = basic_auth_header(spec.client_id, secret)
        elif spec.client_id:
            form["client_id"] = spec.client_id
        response = send(_COMPONENT, self._http(), "POST", spec.token_url, data=form,
                        headers=headers)
        body = oauth_json(_COMPONENT, response, secrets=sent_secrets, fixes={
            "invalid_client": "check client_id and client_secret for the exchange server",
            "invalid_target": f"the audience/resource {wanted or spec.resource!r} is not "
                              "allowed at this exchange server: fix `audience`/`resource` or "
                              "the server's policy",
            "invalid_grant": f"the server refused the subject token from "
                             f"{subject.origin} (iss={subject.issuer!r}, "
                             f"aud={subject.audience!r}): check that the server trusts that "
                             "issuer and audience (`keyless doctor`)",
        })
        raw = body.get("access_token")
        where = safe_url(spec.token_url)
        if not is_jwt(raw):
            issued = body.get("issued_token_type")
            kind = f" (issued_token_type {issued!r})" if isinstance(issued, str) else ""
            raise SourceMisconfigured(
                f"{_COMPONENT}: {where} answered without a JWT access_token{kind}; fix: "
                f"have the server issue JWTs (requested_token_type is "
                f"{spec.requested_token_type!r}): the exchanged token is the next hop's "
                "subject token")
        assert isinstance(raw, str)
        return SubjectToken.from_jwt(raw, origin=f"token_exchange:{where}")

    def _nested(self, source: Source, role: str) -> SubjectToken:
        token = source.fetch(None)
        if token is None:
            raise SourceUnavailable(
                f"{_COMPONENT}: the {role} source {source.name!r} found no token here; fix: "
                f"configure the {role} source explicitly")
        return token

    def __repr__(self) -> str:
        return (f"TokenExchangeTokenSource(token_url={safe_url(self.spec.token_url)!r}, "
                f"subject={self.subject_source!r}, actor={self.actor_source!r})")
