"""JWKS rotation under load, for ``keyless.verify.Verifier`` (ingress and pre-flight checks):
an issuer publishes a second key, switches signing to it, has its JWKS endpoint fail for a
while (a fault proxy answering 503) and retires the old key, while threads verify tokens.

Valid tokens never fail; tokens signed by the retired key, by an unpublished key or forged
under a published kid are refused; a storm of unknown kids costs at most one JWKS fetch per
cooldown. The clock is injected (the JWKS cache's max age and cooldown), so nothing sleeps.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.clock import FakeClock
from keyless.errors import TokenRejected
from keyless.verify import Verifier
from tests.support.faults import FaultProxy

AUDIENCE = "https://ingress.example"
THREADS = 4


class Issuer:
    """A loopback issuer: discovery + JWKS from mutable keys; counts JWKS fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.published: list[str] = []
        self.jwks_fetches = 0
        self.issuer = ""  # the URL clients use (the fault proxy's), set once it is known
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                body: dict[str, Any]
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": owner.issuer, "jwks_uri": owner.issuer + "/jwks"}
                else:
                    owner.jwks_fetches += 1
                    body = {"keys": [owner.jwk(kid) for kid in list(owner.published)]}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def new_key(self, publish: bool = True) -> str:
        kid = uuid.uuid4().hex[:8]
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published.append(kid)
        return kid

    def jwk(self, kid: str) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.keys[kid].public_key()))
        return {**public, "kid": kid, "use": "sig", "alg": "RS256"}

    def token(self, kid: str, now: float, *, key_of: str | None = None) -> str:
        claims = {"iss": self.issuer, "sub": "worker", "aud": AUDIENCE, "iat": int(now),
                  "exp": int(now) + 3600, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.keys[key_of or kid], algorithm="RS256",
                          headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    server = Issuer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=10)


def _verify_all(verifier: Verifier, tokens: list[str]) -> tuple[int, list[str]]:
    """Verify ``tokens`` from THREADS threads; (accepted, refusal claims)."""
    accepted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    def work(chunk: list[str]) -> None:
        for token in chunk:
            try:
                verifier.verify(token)
                with lock:
                    accepted.append(1)
            except TokenRejected as exc:
                with lock:
                    refused.append(str(exc.claim))

    threads = [threading.Thread(target=work, args=(tokens[i::THREADS],))
               for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(accepted), refused


def test_jwks_rotation_under_load_never_refuses_a_valid_token(
        issuer: Issuer, reliability_summary: Callable[..., str]) -> None:
    clock = FakeClock()
    old = issuer.new_key()
    with FaultProxy(issuer.url) as proxy:
        issuer.issuer = proxy.url
        verifier = Verifier(proxy.url, AUDIENCE, clock=clock, allow_insecure_http=True,
                            cooldown_seconds=300)
        max_age = verifier.jwks.max_age_seconds
        valid = bad = 0
        failures: list[str] = []

        def valid_round(kid: str, n: int = 200) -> None:
            nonlocal valid
            accepted, refused = _verify_all(verifier, [issuer.token(kid, clock.time())
                                                       for _ in range(n)])
            valid += n
            failures.extend(refused)
            assert accepted == n, f"valid tokens refused: {refused[:5]}"

        valid_round(old)
        assert issuer.jwks_fetches == 1
        new = issuer.new_key()  # 1. publish the next key ahead of use
        clock.advance(max_age)
        valid_round(old)  # the cache is stale: one refetch, which learns the new key
        assert issuer.jwks_fetches == 2
        valid_round(new)  # 2. switch signing: known already, no fetch
        assert issuer.jwks_fetches == 2

        proxy.fail_with(503)  # 3. the JWKS endpoint fails past the max age
        clock.advance(max_age)
        valid_round(new)
        valid_round(old)
        assert proxy.requests >= 1, "the stale cache never tried to refetch"
        proxy.passthrough()

        issuer.published.remove(old)  # 4. retire the old key
        clock.advance(max_age)
        valid_round(new)
        accepted, refused = _verify_all(verifier, [issuer.token(old, clock.time())
                                                   for _ in range(50)])
        bad += 50
        assert accepted == 0 and set(refused) == {"kid"}

        fetches = issuer.jwks_fetches  # 5. a storm of unknown kids and forged tokens
        rogue = issuer.new_key(publish=False)
        storm = [issuer.token(rogue, clock.time()) for _ in range(300)]
        forged = [issuer.token(new, clock.time(), key_of=rogue) for _ in range(100)]
        clock.advance(verifier.jwks.cooldown_seconds)
        accepted, refused = _verify_all(verifier, storm + forged)
        bad += len(storm) + len(forged)
        assert accepted == 0
        assert refused.count("kid") == len(storm) and refused.count("signature") == len(forged)
        assert issuer.jwks_fetches - fetches <= 1, "unknown kids refetched the JWKS each time"
        valid_round(new)

    reliability_summary(
        "jwks rotation", load=f"{valid} valid tokens on {THREADS} threads",
        faults="key published, signing switched, JWKS 503 past max age, old key retired",
        bad_inputs=bad, failures=len(failures), jwks_fetches=issuer.jwks_fetches)
    assert failures == []
