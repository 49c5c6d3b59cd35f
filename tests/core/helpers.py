"""Small helpers for unit tests: unsigned-looking test JWTs with chosen claims."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt


def make_jwt(exp_in: float = 600.0, *, now: float | None = None, **claims: Any) -> str:
    """An HS256 JWT (the key is irrelevant: keyless only reads claims) expiring in exp_in s."""
    issued = time.time() if now is None else now
    payload: dict[str, Any] = {"iss": "https://issuer.test", "sub": "worker", "aud": "test",
                               "iat": int(issued), "exp": int(issued + exp_in)}
    payload.update(claims)
    return jwt.encode(payload, "k" * 32, algorithm="HS256")


def assert_clean(text: str, *secrets: str) -> None:
    """Fail if any of ``secrets`` appears in ``text`` (a message, a repr, a log)."""
    for secret in secrets:
        assert secret not in text, "a secret leaked into a message or repr"


class Recorder:
    """An ``httpx.MockTransport`` handler that records every request and answers with
    ``respond``; ``http()`` is the injected client factory sources take."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def http(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))
