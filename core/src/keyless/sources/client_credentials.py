"""An OAuth 2.0 client-credentials grant (RFC 6749 §4.4) at the IdP.

Token endpoint: ``spec.token_url``, else ``token_endpoint`` from
``{issuer}/.well-known/openid-configuration`` (looked up once per source object; it is
configuration, not a credential).

Client authentication (``spec.auth_method``; default ``private_key_jwt`` when a private_key is
given, else ``client_secret_basic``):

- ``client_secret_basic``: ``Authorization: Basic base64(urlenc(id):urlenc(secret))``
  (RFC 6749 §2.3.1: both form-urlencoded before base64);
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form;
- ``private_key_jwt`` (RFC 7523 §2.2): a client assertion signed with the private key,
  ``iss = sub = client_id``, ``aud`` = token endpoint, random ``jti``, ``iat``/``exp`` from the
  injected clock (``exp = iat + 300``), header ``kid`` when ``key_id`` is given.

Audience precedence: the caller's audience wins (keyless asks for each target's own,
which is ``source.audience`` where the target names none: ``Keyless.target_audience``),
else ``spec.audience``. It is sent
as ``resource=`` (RFC 8707, default) or ``audience=`` (``spec.audience_parameter``);
``spec.resource``, when set, is sent as ``resource=`` instead of the audience. ``scope`` when
given.

The answer's ``access_token`` is used when it is a JWT, else its ``id_token``; neither being a
JWT is :class:`SourceMisconfigured` (the IdP must issue JWT access tokens). Errors map as in
:mod:`keyless.sources._common` (429/5xx/network -> SourceUnavailable; OAuth errors ->
SourceMisconfigured quoting ``error``/``error_description`` with a fix).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any
from urllib.parse import quote_plus

import jwt

from ..clock import Clock, SystemClock
from ..config import ClientCredentialsSource
from ..errors import SourceMisconfigured
from ..http import is_jwt, json_object, oauth_json, raise_for_status, safe_url, send
from ..tokens import SubjectToken
from .base import HttpClientFactory, default_http_client

__all__ = ["ASSERTION_LIFETIME", "CLIENT_ASSERTION_TYPE", "ClientCredentialsTokenSource",
           "basic_auth_header", "token_from_response"]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME = 300
_COMPONENT = "source client_credentials"


def basic_auth_header(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1: ``Basic`` over the form-urlencoded id and secret."""
    pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")


def token_from_response(component: str, body: dict[str, Any], where: str) -> str:
    """``access_token`` if it is a JWT, else ``id_token``; else SourceMisconfigured."""
    for field in ("access_token", "id_token"):
        value = body.get(field)
        if is_jwt(value):
            assert isinstance(value, str)
            return value
    present = [f for f in ("access_token", "id_token") if f in body]
    got = (" and ".join(present) + (" is" if len(present) == 1 else " are") + " not a JWT"
           if present else "no access_token or id_token")
    raise SourceMisconfigured(
        f"{component}: {where} answered with {got}; fix: configure the IdP to issue JWT "
        "access tokens for this client (e.g. request a resource/audience with resource "
        "indicators, or an API whose tokens are JWTs)")


class ClientCredentialsTokenSource:
    """Runs the client-credentials grant on every fetch."""

    name = "client_credentials"

    def __init__(self, spec: ClientCredentialsSource, *,
                 http: HttpClientFactory = default_http_client,
                 clock: Clock | None = None) -> None:
        self.spec = spec
        self._http = http
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._discovered: str | None = None

    @property
    def auth_method(self) -> str:
        if self.spec.auth_method is not None:
            return self.spec.auth_method
        return "private_key_jwt" if self.spec.private_key is not None else "client_secret_basic"

    def token_endpoint(self) -> str:
        """``token_url``, or the issuer's discovered ``token_endpoint``."""
        if self.spec.token_url:
            return self.spec.token_url
        if self._discovered is None:
            self._discovered = self._discover()
        return self._discovered

    def _discover(self) -> str:
        issuer = (self.spec.issuer or "").rstrip("/")
        url = f"{issuer}/.well-known/openid-configuration"
        response = send(_COMPONENT, self._http(), "GET", url,
                        headers={"Accept": "application/json"})
        raise_for_status(_COMPONENT, response,
                         "check `issuer` (discovery must be at {issuer}/.well-known/"
                         "openid-configuration), or give token_url")
        doc = json_object(response)
        endpoint = doc.get("token_endpoint") if doc is not None else None
        if not isinstance(endpoint, str) or not endpoint.startswith(("https://", "http://")):
            raise SourceMisconfigured(
                f"{_COMPONENT}: {safe_url(url)} has no usable token_endpoint; fix: give "
                "token_url")
        if issuer.startswith("https://") and not endpoint.startswith("https://"):
            raise SourceMisconfigured(
                f"{_COMPONENT}: the discovered token_endpoint {safe_url(endpoint)} is not "
                "https://; fix: give an https token_url")
        return endpoint

    def fetch(self, audience: str | None) -> SubjectToken | None:
        spec = self.spec
        endpoint = self.token_endpoint()
        form: dict[str, str] = {"grant_type": "client_credentials"}
        if spec.scope:
            form["scope"] = spec.scope
        wanted = audience or spec.audience
        if spec.audience_parameter == "audience":
            if wanted:
                form["audience"] = wanted
            if spec.resource:
                form["resource"] = spec.resource
        elif spec.resource or wanted:
            form["resource"] = spec.resource or wanted or ""
        headers = {"Accept": "application/json"}
        sent_secrets: list[str] = []
        method = self.auth_method
        if method == "private_key_jwt":
            assertion = self._client_assertion(endpoint)
            sent_secrets.append(assertion)
            form.update(client_id=spec.client_id, client_assertion_type=CLIENT_ASSERTION_TYPE,
                        client_assertion=assertion)
        else:
            secret = spec.client_secret.get_secret_value() if spec.client_secret else ""
            sent_secrets.append(secret)
            if method == "client_secret_post":
                form.update(client_id=spec.client_id, client_secret=secret)
            else:
                headers["Authorization"] = basic_auth_header(spec.client_id, secret)
        response = send(_COMPONENT, self._http(), "POST", endpoint, data=form, headers=headers)
        credential = "private_key/key_id" if method == "private_key_jwt" else "client_secret"
        body = oauth_json(_COMPONENT, response, secrets=sent_secrets, fixes={
            "invalid_client": f"check client_id {spec.client_id!r} and its {credential}, and "
                              f"that the IdP accepts auth_method {method!r} for this client",
            "invalid_target": f"the audience/resource {form.get('resource') or wanted!r} is not "
                              "allowed for this client: register it at the IdP (resource "
                              "indicators) or request another audience",
        })
        raw = token_from_response(_COMPONENT, body, safe_url(endpoint))
        return SubjectToken.from_jwt(raw, origin=f"client_credentials:{spec.client_id}")

    def _client_assertion(self, endpoint: str) -> str:
        spec = self.spec
        assert spec.private_key is not None
        now = int(self._clock.time())
        claims = {"iss": spec.client_id, "sub": spec.client_id, "aud": endpoint,
                  "jti": secrets.token_urlsafe(24), "iat": now, "nbf": now,
                  "exp": now + ASSERTION_LIFETIME}
        headers = {"kid": spec.key_id} if spec.key_id else None
        try:
            return jwt.encode(claims, spec.private_key.get_secret_value(),
                              algorithm=spec.signing_algorithm, headers=headers)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise SourceMisconfigured(
                f"{_COMPONENT}: cannot sign the client assertion with the private_key as "
                f"{spec.signing_algorithm} ({type(exc).__name__}); fix: give a PEM private key "
                "matching signing_algorithm (RSA for RS*/PS*, EC P-256/P-384 for ES*)"
            ) from None

    def __repr__(self) -> str:
        return (f"ClientCredentialsTokenSource(client_id={self.spec.client_id!r}, "
                f"token_url={self.spec.token_url!r}, issuer={self.spec.issuer!r}, "
                f"auth_method={self.auth_method!r})")
