"""What every source is: one small class with one method.

``fetch(audience)`` returns a fresh :class:`~keyless.tokens.SubjectToken`, or ``None`` when the
source does not apply here (ambient detection only). A source that applies but is broken raises
:class:`~keyless.errors.SourceMisconfigured` (fix the config) or
:class:`~keyless.errors.SourceUnavailable` (transient: retried with backoff). Sources never
cache: the refresher owns every cache. HTTP goes through an injected ``httpx.Client``.
"""

from __future__ import annotations

import os
import threading
from typing import Protocol, runtime_checkable

import httpx

from ..tokens import SubjectToken

__all__ = ["HttpClientFactory", "Source", "default_http_client"]


@runtime_checkable
class Source(Protocol):
    """A way to get a JWT."""

    name: str

    def fetch(self, audience: str | None) -> SubjectToken | None: ...


class HttpClientFactory(Protocol):
    def __call__(self) -> httpx.Client: ...


_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def default_http_client() -> httpx.Client:
    """This process's shared HTTP client (one per pid: a forked child makes its own,
    since connection pools do not survive fork). Timeouts: 10 s, TLS verified, no proxies
    from the environment beyond what httpx honours by default."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        with _clients_lock:
            client = _clients.get(pid)
            if client is None:
                client = httpx.Client(timeout=httpx.Timeout(10.0), follow_redirects=False)
                _clients.clear()
                _clients[pid] = client
    return client
