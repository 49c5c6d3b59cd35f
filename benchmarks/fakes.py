"""Fake upstreams for the benchmarks: a google-auth transport answering RFC 8693 like
Google's STS, botocore-style credential metadata, and a counting fetch for a Refresher.

Each counts its calls (thread-safe) and can add a fixed latency, so that concurrent callers
really overlap, as they would against a remote service.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

from keyless.refresher import Fetched

__all__ = ["Counter", "FakeGoogleSts", "botocore_metadata", "CountingFetch"]


class Counter:
    """A thread-safe call counter."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self) -> int:
        with self._lock:
            self.value += 1
            return self.value


class _Response:
    def __init__(self, status: int, data: bytes) -> None:
        self.status = status
        self.headers = {"content-type": "application/json"}
        self.data = data


class FakeGoogleSts:
    """A google-auth ``transport.Request``: every call is one STS token exchange."""

    def __init__(self, latency: float = 0.0, lifetime: int = 3600) -> None:
        self.calls = Counter()
        self.latency = latency
        self.lifetime = lifetime

    def __call__(self, url: str, method: str = "GET", body: Any = None,
                 headers: Any = None, timeout: Any = None, **kwargs: Any) -> _Response:
        n = self.calls.add()
        if self.latency:
            time.sleep(self.latency)
        answer = {"access_token": f"ya29.fake-{n}", "token_type": "Bearer",
                  "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                  "expires_in": self.lifetime}
        return _Response(200, json.dumps(answer).encode())


class FakeSupplier:
    """A google-auth ``SubjectTokenSupplier`` body: counts subject-token reads."""

    def __init__(self) -> None:
        self.calls = Counter()

    def get_subject_token(self, context: Any, request: Any) -> str:
        self.calls.add()
        return "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"  # shape only; the fake STS does not verify


def botocore_metadata(n: int, lifetime: float = 3600.0, now: float | None = None) -> dict[str, str]:
    """Credential metadata as botocore's refresh functions return it."""
    expiry = datetime.fromtimestamp((now if now is not None else time.time()) + lifetime, UTC)
    return {"access_key": f"AKIAFAKE{n:012d}", "secret_key": "fake-secret",
            "token": f"fake-session-{n}", "expiry_time": expiry.isoformat()}


class CountingFetch:
    """A ``Refresher`` fetch: counts calls, sleeps ``latency``, returns a value valid for
    ``lifetime`` seconds of ``now()``."""

    def __init__(self, latency: float = 0.0, lifetime: float = 3600.0) -> None:
        self.calls = Counter()
        self.latency = latency
        self.lifetime = lifetime

    def __call__(self) -> Fetched[str]:
        n = self.calls.add()
        if self.latency:
            time.sleep(self.latency)
        now = time.time()
        return Fetched(f"value-{n}", expires_at=now + self.lifetime, issued_at=now)
