"""HTTP and JSON plumbing shared by the sources, the targets and verification: calls with the
one error mapping every caller uses, and scrubbing of anything that might carry a token
before it reaches a message.

Error mapping (one place, so every source agrees):

- timeouts, connection errors, HTTP 429 and 5xx -> :class:`SourceUnavailable` (transient: the
  refresher retries with backoff);
- redirects, other 4xx, unsupported URL schemes, non-JSON answers -> :class:`SourceMisconfigured`
  with the facts and a fix;
- OAuth 2.0 error answers (RFC 6749 §5.2) -> :class:`SourceMisconfigured` quoting ``error`` and
  ``error_description`` (scrubbed) and a fix chosen by the error code.

Messages name URLs without user-info, query or fragment, and never carry a request's secrets.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import jwt

from .errors import SourceMisconfigured, SourceUnavailable

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "ID_TOKEN_TYPE",
    "JWT_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "token_exchange_fields",
    "OAUTH_FIXES",
    "LazyClient",
    "is_jwt",
    "json_object",
    "looks_like_token",
    "oauth_json",
    "raise_for_status",
    "safe_url",
    "scrub",
    "send",
]

#: RFC 8693 token exchange: the grant type and the token types keyless sends and accepts.
TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"



def token_exchange_fields(subject_token_type: str, *, subject_token: str | None = None,
                          actor_token: str | None = None, actor_token_type: str | None = None,
                          audience: str | None = None, resource: str | None = None,
                          scope: str | None = None, requested_token_type: str | None = None,
                          ) -> dict[str, str]:
    """An RFC 8693 token-exchange request's parameters (those given, in the RFC's names): the
    one request builder of the exchange source and the RFC 8693 targets."""
    fields = {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token_type": subject_token_type}
    for key, value in (("subject_token", subject_token), ("actor_token", actor_token),
                       ("actor_token_type", actor_token_type if actor_token else None),
                       ("audience", audience), ("resource", resource), ("scope", scope),
                       ("requested_token_type", requested_token_type)):
        if value:
            fields[key] = value
    return fields


# A JWT-ish or long opaque run of token characters: never echoed.
_TOKENISH = re.compile(
    r"[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*)?"
    r"|[A-Za-z0-9_\-+/=]{40,}"
)
_MAX_QUOTE = 300


def safe_url(url: str | httpx.URL) -> str:
    """``url`` without user-info, query and fragment: fit for a message."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace every given secret and every token-looking run in ``text``; cap its length.
    The one scrubber for text keyless did not write (a vendor's error, a server's answer, a
    command's output) before it reaches a message; :func:`keyless.audit.redact` is the audit
    sinks' last line of defence on text keyless did write."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    text = _TOKENISH.sub("[redacted]", text)
    if len(text) > _MAX_QUOTE:
        text = text[:_MAX_QUOTE] + "..."
    return text


def looks_like_token(text: str) -> bool:
    """Whether ``text`` holds something JWT-like or a long opaque credential-like run."""
    return _TOKENISH.search(text) is not None


def is_jwt(raw: object) -> bool:
    """Whether ``raw`` is a compact JWS whose header and payload decode (not verified)."""
    if not isinstance(raw, str) or raw.count(".") != 2:
        return False
    try:
        jwt.get_unverified_header(raw)
        claims = jwt.decode(raw, options={"verify_signature": False, "verify_exp": False,
                                          "verify_aud": False, "verify_iat": False,
                                          "verify_nbf": False})
    except (jwt.PyJWTError, ValueError, TypeError):
        return False
    return isinstance(claims, dict)


def send(component: str, client: httpx.Client, method: str, url: str, *,
         data: Mapping[str, str] | None = None, headers: Mapping[str, str] | None = None,
         timeout: float | None = None, json: Mapping[str, Any] | None = None,
         ) -> httpx.Response:
    """Send one request (``data``: a form, ``json``: a JSON body); transport failures become
    keyless errors naming ``component``.

    ``timeout`` overrides the client's default for this request (``None``: the client's).
    """
    kwargs: dict[str, Any] = {}
    if data is not None:
        kwargs["data"] = dict(data)
    if json is not None:
        kwargs["json"] = dict(json)
    if headers is not None:
        kwargs["headers"] = dict(headers)
    if timeout is not None:
        kwargs["timeout"] = timeout
    where = safe_url(url)
    try:
        return client.request(method, url, **kwargs)
    except httpx.UnsupportedProtocol:
        raise SourceMisconfigured(
            f"{component}: {where!r} is not an http(s) URL; fix: use an https:// URL"
        ) from None
    except httpx.TimeoutException as exc:
        raise SourceUnavailable(
            f"{component}: {where} did not answer in time ({type(exc).__name__}); "
            "transient, retried with backoff"
        ) from None
    except httpx.TransportError as exc:
        raise SourceUnavailable(
            f"{component}: cannot reach {where} ({type(exc).__name__}); "
            "transient, retried with backoff; if it persists check the URL and the network"
        ) from None
    except httpx.InvalidURL:
        raise SourceMisconfigured(f"{component}: {where!r} is not a valid URL") from None


def raise_for_status(component: str, response: httpx.Response, fix_4xx: str) -> None:
    """Map a non-2xx answer: 429/5xx -> SourceUnavailable, 3xx/4xx -> SourceMisconfigured."""
    status = response.status_code
    where = safe_url(response.request.url)
    if status == 429 or status >= 500:
        raise SourceUnavailable(
            f"{component}: {where} answered HTTP {status}; transient, retried with backoff")
    if 300 <= status < 400:
        target = safe_url(response.headers.get("location", "?"))
        raise SourceMisconfigured(
            f"{component}: {where} redirects (HTTP {status}) to {target}; "
            "fix: configure the final URL (redirects are not followed)")
    if status >= 400:
        raise SourceMisconfigured(f"{component}: {where} answered HTTP {status}; fix: {fix_4xx}")


OAUTH_FIXES: Mapping[str, str] = {
    "invalid_client": "check client_id and the client_secret/private_key, and that auth_method "
                      "is one the IdP allows for this client",
    "invalid_target": "the audience/resource is not allowed for this client: register it at the "
                      "IdP (resource indicators) or request another audience",
    "invalid_scope": "the scope is not allowed for this client: fix `scope` or the IdP's client",
    "unauthorized_client": "the client may not use this grant type: enable it at the IdP",
    "unsupported_grant_type": "the server does not support this grant type: check token_url",
    "invalid_grant": "the grant or subject token was refused (expired, wrong audience, issuer "
                     "not trusted): check the subject token's claims with `keyless doctor`",
    "invalid_request": "the request was malformed for this server: check the source's fields",
    "access_denied": "the server denied access: check the client's permissions at the IdP",
}


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON body when it is an object; None when it is not JSON or not an
    object (the caller raises its own error naming what it expected)."""
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return body if isinstance(body, dict) else None


def oauth_json(component: str, response: httpx.Response, *,
               secrets: Iterable[str] = (), fixes: Mapping[str, str] | None = None
               ) -> dict[str, Any]:
    """The JSON object of a token endpoint's success answer, or the mapped error.

    An error answer with an OAuth ``error`` quotes ``error`` and ``error_description``
    (scrubbed of ``secrets`` and of anything token-like) and a fix for that code.
    """
    status = response.status_code
    where = safe_url(response.request.url)
    secrets = tuple(secrets)
    if 400 <= status < 500 and status != 429:
        error, description = _oauth_error(response)
        if error:
            fix = {**OAUTH_FIXES, **(fixes or {})}.get(
                error, "see the server's documentation for this error")
            desc = f", error_description={scrub(description, secrets)!r}" if description else ""
            raise SourceMisconfigured(
                f"{component}: {where} refused the request (HTTP {status}): "
                f"error={scrub(error, secrets)!r}{desc}; fix: {fix}")
    raise_for_status(component, response,
                     "check token_url and the client's registration at the IdP")
    body = json_object(response)
    if body is None:
        raise SourceMisconfigured(
            f"{component}: {where} answered HTTP {status} without a JSON object; "
            "fix: check that token_url is the IdP's token endpoint")
    return body


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    body = json_object(response)
    if body is None:
        return "", ""
    error = body.get("error")
    description = body.get("error_description")
    return (error if isinstance(error, str) else "",
            description if isinstance(description, str) else "")


class LazyClient:
    """A client built once, on first use, by ``factory`` (thread-safe): the one cache of an
    SDK client a source holds, so that constructing a source never touches the SDK."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The client, built by the factory on the first call."""
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client
