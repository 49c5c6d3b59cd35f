"""ASGI ingress: refuse requests without a valid bearer JWT, hand the claims to the app.

:class:`BearerTokenMiddleware` wraps any ASGI 3 app. For ``http`` and ``websocket`` scopes
whose path is not exempt it reads ``Authorization: Bearer <jwt>``, verifies it with a
:class:`~keyless.verify.Verifier` in a worker thread (verification may fetch the JWKS) and:

- on success calls the app with ``scope["keyless.claims"]`` and
  ``scope["state"]["keyless_claims"]`` set to the verified claims (a copy of ``state``: the
  lifespan state shared by all requests is not modified);
- on a refused or missing token answers ``401`` with a JSON body
  ``{"error": "invalid_token", "error_description": ..., "claim": ...}`` and a
  ``WWW-Authenticate: Bearer`` header (the token is never echoed);
- when the issuer's keys cannot be had (any other :class:`~keyless.errors.KeylessError`:
  the issuer down, failing or too slow; see :class:`~keyless.verify.jwks.JwksCache`) answers
  ``503`` (``temporarily_unavailable``) at once, never ``401``, with ``Retry-After`` when the
  next try of the issuer is known.

A websocket that fails verification is closed (code 1008) before it is accepted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import anyio.to_thread

from ..errors import KeylessError, TokenRejected
from .jwks import IssuerUnavailable
from .verifier import Verifier

__all__ = ["BearerTokenMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BearerTokenMiddleware:
    """Verify ``Authorization: Bearer`` JWTs in front of ``app``.

    ``exempt_paths`` are exact paths served without a token (health checks).
    """

    def __init__(self, app: ASGIApp, verifier: Verifier, *,
                 exempt_paths: Sequence[str] = ()) -> None:
        self.app = app
        self.verifier = verifier
        self.exempt_paths = frozenset(exempt_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") not in ("http", "websocket") \
                or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        if token is None:
            await _refuse(scope, send, 401, "invalid_request",
                          "no bearer token; fix: send 'Authorization: Bearer <JWT>'", None)
            return
        try:
            claims = await anyio.to_thread.run_sync(self.verifier.verify, token)
        except TokenRejected as exc:
            await _refuse(scope, send, 401, "invalid_token", exc.message, exc.claim)
            return
        except KeylessError as exc:
            retry = exc.retry_after if isinstance(exc, IssuerUnavailable) else None
            await _refuse(scope, send, 503, "temporarily_unavailable", exc.message, None,
                          retry_after=retry)
            return
        state = dict(scope.get("state") or {})
        state["keyless_claims"] = claims
        inner = dict(scope)
        inner["state"] = state
        inner["keyless.claims"] = claims
        await self.app(inner, receive, send)


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if bytes(name).lower() == b"authorization":
            scheme, _, credential = bytes(value).decode("latin-1").partition(" ")
            credential = credential.strip()
            if scheme.lower() == "bearer" and credential:
                return credential
            return None
    return None


async def _refuse(scope: Scope, send: Send, status: int, error: str, description: str,
                  claim: str | None, *, retry_after: float | None = None) -> None:
    if scope.get("type") == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body = json.dumps({"error": error, "error_description": description,
                       "claim": claim}).encode()
    challenge = f'Bearer error="{error}"'.encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()),
               (b"www-authenticate", challenge), (b"cache-control", b"no-store")]
    if retry_after is not None and math.isfinite(retry_after):
        headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
