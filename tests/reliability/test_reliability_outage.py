"""An issuer outage in front of the ASGI ingress (``keyless.verify.asgi.BearerTokenMiddleware``),
with real parts: a loopback HTTP issuer (discovery + JWKS for an RSA key generated here) that
the test switches between hung (accepts, never answers; the verifier's client times out after
3 s), down (nothing listens: connection refused), a 503 burst and up; pyjwt-signed tokens;
concurrent requests through ``httpx.ASGITransport``; the real clock.

While the issuer is out and no keys are known, every request is answered 503
(``temporarily_unavailable``, with ``Retry-After``), never 401 or 500; no request waits longer
than the fetch bound (+ slack); the fetches the issuer sees are bounded by the backoff (about
log2 of the outage, not one per request); valid tokens are accepted again within the maximum
backoff of recovery. Then, with keys known but stale, a hung or failing issuer does not hold
back valid tokens at all.
"""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.verify import JwksCache, Verifier
from keyless.verify.asgi import BearerTokenMiddleware

AUDIENCE = "https://ingress.example"
KID = "outage-1"
WORKERS = 6
FETCH_WAIT = 2.0  # the bound a request may wait for the issuer
CLIENT_TIMEOUT = 3.0  # the verifier's HTTP client: a hung issuer costs this per fetch
MIN_BACKOFF, MAX_BACKOFF = 1.0, 8.0
SLACK = 3.0  # shared, noisy machines: assert bounds, not timings
PHASE_SECONDS = 4.0
MAX_AGE = 3.0  # the keys' max age: short, so that they go stale during the test


class SwitchableIssuer:
    """Discovery + JWKS on a fixed loopback port; :meth:`switch` to ``up``, ``503``,
    ``hang`` or ``down`` (the listening socket closed). ``served`` counts the requests that
    reached it, by mode."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "down"
        self.served: dict[str, int] = {}
        self.lock = threading.Lock()
        self.release = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KID, "use": "sig", "alg": "RS256"}]}

    def token(self) -> str:
        now = int(time.time())
        claims = {"iss": self.url, "aud": AUDIENCE, "sub": "worker", "iat": now,
                  "exp": now + 3600}
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})

    def switch(self, mode: str) -> None:
        """Change the mode; releases hung requests; opens or closes the port as needed."""
        with self.lock:
            self.mode = mode
            release, self.release = self.release, threading.Event()
        release.set()
        if mode == "down":
            self._close()
        elif self.server is None:
            self._open()

    def _open(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                owner.answer(self)

        deadline = time.monotonic() + 5
        while True:
            try:
                server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
                break
            except OSError:  # the port is briefly busy: try again, then give up loudly
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        server.daemon_threads = True
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def _close(self) -> None:
        server, thread, self.server, self.thread = self.server, self.thread, None, None
        if server is not None and thread is not None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        with self.lock:
            mode, release = self.mode, self.release
            self.served[mode] = self.served.get(mode, 0) + 1
        if mode == "hang":
            release.wait(30)  # accepted, never answered (the client times out first)
            return
        if mode != "up":
            self._send(handler, 503, {"error": "temporarily_unavailable"})
        elif handler.path == "/.well-known/openid-configuration":
            self._send(handler, 200, {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})
        elif handler.path == "/jwks":
            self._send(handler, 200, self.jwks())
        else:
            self._send(handler, 404, {"error": "not_found"})

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


class CountingTransport(httpx.HTTPTransport):
    """Counts every request the verifier sends upstream (refused connections included)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.count += 1
        return super().handle_request(request)


@dataclass
class Tally:
    """What the load saw: answers by status, the longest wait, the wrong answers."""

    statuses: dict[int, int] = field(default_factory=dict)
    max_wait: float = 0.0
    wrong: list[str] = field(default_factory=list)

    def total(self) -> int:
        return sum(self.statuses.values())


@pytest.fixture
def issuer() -> Iterator[SwitchableIssuer]:
    server = SwitchableIssuer()
    yield server
    server.switch("down")


async def _ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def _judge(tally: Tally, response: httpx.Response, waited: float, token: str,
           expect: int) -> None:
    status = response.status_code
    tally.statuses[status] = tally.statuses.get(status, 0) + 1
    tally.max_wait = max(tally.max_wait, waited)
    body = response.text
    if token in body or token.split(".")[1] in body:
        tally.wrong.append("the token was echoed")
    if status != expect:
        tally.wrong.append(f"{status} where {expect} was due: {body[:200]}")
    elif status == 503 and (json.loads(body).get("error") != "temporarily_unavailable"
                            or "retry-after" not in response.headers):
        tally.wrong.append(f"503 without temporarily_unavailable or Retry-After: {body[:200]}")


async def _load(client: httpx.AsyncClient, token: str, seconds: float, expect: int) -> Tally:
    """WORKERS concurrent clients, each sending requests back to back for ``seconds``."""
    tally = Tally()
    end = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            response = await client.get("/data", headers={"Authorization": f"Bearer {token}"})
            _judge(tally, response, time.monotonic() - started, token, expect)
            await anyio.sleep(0.02)

    async with anyio.create_task_group() as group:
        for _ in range(WORKERS):
            group.start_soon(worker)
    return tally


async def _recover(client: httpx.AsyncClient, token: str, limit: float) -> float:
    """Seconds until a valid token is accepted again (polling); fails after ``limit``."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        response = await client.get("/data", headers={"Authorization": f"Bearer {token}"})
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 503, response.text
        await anyio.sleep(0.2)
    pytest.fail(f"valid tokens still refused {limit:.0f} s after the issuer recovered")


def _fetch_bound(outage_seconds: float) -> int:
    """Fetch attempts a doubling backoff allows in ``outage_seconds``, plus a few."""
    return math.ceil(math.log2(outage_seconds / MIN_BACKOFF + 1)) + 3


def test_an_issuer_outage_is_503_bounded_and_recovers(
        issuer: SwitchableIssuer, reliability_summary: Callable[..., str]) -> None:
    upstream = CountingTransport()
    client = httpx.Client(transport=upstream, timeout=CLIENT_TIMEOUT)
    cache = JwksCache(issuer.url, http=lambda: client, allow_insecure_http=True,
                      fetch_wait_seconds=FETCH_WAIT, min_backoff_seconds=MIN_BACKOFF,
                      max_backoff_seconds=MAX_BACKOFF, max_age_seconds=MAX_AGE)
    app = BearerTokenMiddleware(_ok, Verifier(issuer.url, AUDIENCE, jwks=cache))
    token = issuer.token()
    tallies: dict[str, Tally] = {}
    fetches: dict[str, int] = {}

    async def scenario() -> float:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingress") as ingress:
            started = time.monotonic()
            for mode in ("hang", "down", "503"):  # 1. a cold cache while the issuer is out
                issuer.switch(mode)
                before = upstream.count
                tallies[mode] = await _load(ingress, token, PHASE_SECONDS, expect=503)
                fetches[mode] = upstream.count - before
            outage = time.monotonic() - started
            fetches["cold outage"] = upstream.count
            assert upstream.count <= _fetch_bound(outage), (fetches, outage)
            assert fetches["hang"] >= 1 and fetches["down"] >= 1, fetches  # each fault hit
            issuer.switch("up")  # 2. recovery: within the maximum backoff
            recovery = await _recover(ingress, token, limit=40.0)
            tallies["up"] = await _load(ingress, token, 1.0, expect=200)
            await anyio.sleep(MAX_AGE)  # 3. the keys go stale ...
            for mode in ("hang", "503"):  # ... and the issuer fails: known keys still serve
                issuer.switch(mode)
                before = upstream.count
                tallies[f"stale, {mode}"] = await _load(ingress, token, PHASE_SECONDS,
                                                        expect=200)
                fetches[f"stale, {mode}"] = upstream.count - before
            issuer.switch("up")
            return recovery

    try:
        recovery = anyio.run(scenario)
    finally:
        client.close()
    wrong = [f"{phase}: {text}" for phase, tally in tallies.items() for text in tally.wrong]
    max_wait = max(tally.max_wait for tally in tallies.values())
    refused = sum(tallies[mode].statuses.get(503, 0) for mode in ("hang", "down", "503"))
    stale = fetches["stale, hang"] + fetches["stale, 503"]
    reliability_summary(
        "ingress outage", load=f"{sum(t.total() for t in tallies.values())} requests from "
        f"{WORKERS} concurrent clients",
        faults="issuer hung (3 s client timeout), down, 503 burst, recovered; stale keys "
        "while hung and 503", bad_inputs=refused, failures=len(wrong),
        cold_outage_fetches=fetches["cold outage"], stale_outage_fetches=stale,
        max_wait=f"{max_wait:.2f}s", recovery=f"{recovery:.1f}s",
        fetches_by_phase=fetches, served_by_mode=dict(sorted(issuer.served.items())))
    assert wrong == [], wrong[:5]
    assert refused > 0 and tallies["up"].total() > 0
    assert max_wait <= FETCH_WAIT + SLACK, max_wait
    assert recovery <= MAX_BACKOFF + SLACK, recovery
    assert stale <= 2 * _fetch_bound(PHASE_SECONDS), fetches
