"""keyless.verify: discovery + JWKS cache with cooldown, claim policy, ASGI middleware.

A real RSA key signs the tokens; discovery and JWKS are served by an ``httpx.MockTransport``
that counts requests; time is a :class:`FakeClock`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keyless import ConfigError, FakeClock, SourceUnavailable, TokenRejected
from keyless.verify import JwksCache, Verifier, parse_http_date
from keyless.verify.asgi import BearerTokenMiddleware

ISS = "https://issuer.test"
AUD = "sts.amazonaws.com"


def _jwk(key: Any, kid: str, alg: str | None = "RS256") -> dict[str, Any]:
    algo = jwt.algorithms.RSAAlgorithm if alg is None or alg.startswith(("RS", "PS")) \
        else jwt.algorithms.ECAlgorithm
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    data.update(kid=kid, use="sig")
    if alg:
        data["alg"] = alg
    return data


class Issuer:
    """Discovery + JWKS over a MockTransport; ``requests`` lists the paths asked for."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks: list[dict[str, Any]] = [_jwk(self.key, "k1")]
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.status = 200
        self.discovery_issuer = ISS

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(request.url.path)
        if self.status != 200:
            return httpx.Response(self.status)
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": self.discovery_issuer,
                                             "jwks_uri": f"{ISS}/jwks"},
                                  headers={"Date": "Tue, 14 Nov 2023 22:13:20 GMT"})
        if request.url.path == "/jwks":
            return httpx.Response(200, json={"keys": list(self.jwks)})
        return httpx.Response(404)

    def http(self) -> Callable[[], httpx.Client]:
        client = httpx.Client(transport=httpx.MockTransport(self.handler))
        return lambda: client

    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks")

    def token(self, *, key: Any = None, kid: str = "k1", alg: str = "RS256",
              **claims: Any) -> str:
        now = self.clock.time()
        payload: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "trainer",
                                   "iat": int(now), "exp": int(now + 300)}
        payload.update(claims)
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key or self.key, algorithm=alg, headers={"kid": kid})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def issuer(clock: FakeClock) -> Issuer:
    return Issuer(clock)


@pytest.fixture
def verifier(issuer: Issuer, clock: FakeClock) -> Verifier:
    return Verifier(ISS, [AUD], clock=clock, http=issuer.http())


def _rejected(verifier: Verifier, token: str) -> TokenRejected:
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    assert "fix:" in str(info.value)
    assert token not in str(info.value)
    return info.value


def test_a_good_token_verifies(issuer: Issuer, verifier: Verifier) -> None:
    claims = verifier.verify(issuer.token())
    assert claims["sub"] == "trainer" and claims["aud"] == AUD
    assert issuer.requests == ["/.well-known/openid-configuration", "/jwks"]
    verifier.verify(issuer.token())
    assert issuer.jwks_fetches() == 1  # cached


@pytest.mark.parametrize(("claims", "advance", "claim"), [
    ({"iss": "https://other.test"}, 0, "iss"),
    ({"aud": "someone-else"}, 0, "aud"),
    ({"aud": ["a", "b"]}, 0, "aud"),
    ({}, 300 + 61, "exp"),
    ({"nbf": 1_700_000_000 + 120}, 0, "nbf"),
    ({"iat": 1_700_000_000 + 120}, 0, "iat"),
    ({"sub": None}, 0, "sub"),
    ({"exp": "tomorrow"}, 0, "exp"),
])
def test_each_bad_claim_is_named(issuer: Issuer, verifier: Verifier, clock: FakeClock,
                                 claims: dict[str, Any], advance: float, claim: str) -> None:
    token = issuer.token(**claims)
    clock.advance(advance)
    assert _rejected(verifier, token).claim == claim


def test_leeway_is_honoured(issuer: Issuer, verifier: Verifier, clock: FakeClock) -> None:
    token = issuer.token(nbf=int(clock.time()) + 30, iat=int(clock.time()) + 30)
    assert verifier.verify(token)["sub"] == "trainer"
    clock.advance(300 + 59)
    assert verifier.verify(token)["sub"] == "trainer"


def test_audience_list_matches_any(issuer: Issuer, verifier: Verifier) -> None:
    assert verifier.verify(issuer.token(aud=["x", AUD]))["sub"] == "trainer"


def test_tampered_payload_and_foreign_key_fail_on_signature(issuer: Issuer,
                                                            verifier: Verifier) -> None:
    header, payload, signature = issuer.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert _rejected(verifier, f"{header}.{forged}.{signature}").claim == "signature"
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _rejected(verifier, issuer.token(key=other)).claim == "signature"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_alg_none_is_refused(issuer: Issuer, verifier: Verifier, clock: FakeClock) -> None:
    payload = {"iss": ISS, "aud": AUD, "sub": "trainer", "iat": int(clock.time()),
               "exp": int(clock.time()) + 300}
    for alg in ("none", "None", "NONE"):
        unsigned = f"{_b64({'alg': alg, 'kid': 'k1'})}.{_b64(payload)}."
        error = _rejected(verifier, unsigned)
        assert error.claim == "alg"
    assert issuer.requests == []  # refused before any key is fetched


def test_hs256_signed_with_the_public_key_is_refused(issuer: Issuer, verifier: Verifier,
                                                     clock: FakeClock) -> None:
    """The classic key-confusion attack: HMAC keyed with the issuer's public PEM."""
    pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = {"iss": ISS, "aud": AUD, "sub": "admin", "iat": int(clock.time()),
               "exp": int(clock.time()) + 300}
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': 'k1'})}.{_b64(payload)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert _rejected(verifier, token).claim == "alg"
    with pytest.raises(ConfigError):
        Verifier(ISS, AUD, algorithms=("RS256", "HS256"), http=issuer.http())
    with pytest.raises(ConfigError):
        Verifier(ISS, AUD, algorithms=("none",), http=issuer.http())


def test_alg_outside_the_allow_list_or_the_keys_alg_is_refused(issuer: Issuer,
                                                               verifier: Verifier) -> None:
    assert _rejected(verifier, issuer.token(alg="RS384")).claim == "alg"
    lenient = Verifier(ISS, AUD, algorithms=("RS256", "RS384"), clock=issuer.clock,
                       http=issuer.http())
    # the JWK says alg RS256: a token claiming RS384 with that key is refused
    assert _rejected(lenient, issuer.token(alg="RS384")).claim == "alg"


def test_es256_keys_verify(issuer: Issuer, clock: FakeClock) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    issuer.jwks.append(_jwk(ec_key, "ec1", "ES256"))
    verifier = Verifier(ISS, AUD, clock=clock, http=issuer.http())
    assert verifier.verify(issuer.token(key=ec_key, kid="ec1", alg="ES256"))["sub"] == "trainer"
    # an ES256 token naming the RSA key's kid does not fit that key
    assert _rejected(verifier, issuer.token(key=ec_key, kid="k1", alg="ES256")).claim == "alg"


def _flood(verifier: Verifier, issuer: Issuer, count: int = 64) -> list[str | None]:
    tokens = [issuer.token(kid=f"forged-{i}") for i in range(count)]
    claims: list[str | None] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(chunk: list[str]) -> None:
        barrier.wait()
        for token in chunk:
            try:
                verifier.verify(token)
                outcome = None
            except TokenRejected as exc:
                outcome = exc.claim
            with lock:
                claims.append(outcome)

    threads = [threading.Thread(target=worker, args=(tokens[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return claims


def test_unknown_kid_flood_refetches_at_most_once_per_cooldown(
        issuer: Issuer, verifier: Verifier, clock: FakeClock) -> None:
    verifier.verify(issuer.token())
    assert issuer.jwks_fetches() == 1
    assert _flood(verifier, issuer) == ["kid"] * 64
    assert issuer.jwks_fetches() == 1  # within the cooldown of the first fetch: none

    clock.advance(301)
    assert _flood(verifier, issuer) == ["kid"] * 64
    assert issuer.jwks_fetches() == 2  # one single-flight refetch for 64 misses
    clock.advance(100)
    _flood(verifier, issuer)
    assert issuer.jwks_fetches() == 2
    clock.advance(201)
    _flood(verifier, issuer)
    assert issuer.jwks_fetches() == 3  # cooldown expired: exactly one more


def test_a_flood_on_a_cold_cache_fetches_once(issuer: Issuer, verifier: Verifier) -> None:
    assert _flood(verifier, issuer) == ["kid"] * 64
    assert issuer.jwks_fetches() == 1
    assert issuer.requests.count("/.well-known/openid-configuration") == 1


def test_key_rotation_new_kid_is_found_after_the_cooldown(issuer: Issuer, verifier: Verifier,
                                                          clock: FakeClock) -> None:
    verifier.verify(issuer.token())
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    issuer.jwks = [_jwk(new_key, "k2"), *issuer.jwks]
    clock.advance(301)
    assert verifier.verify(issuer.token(key=new_key, kid="k2"))["sub"] == "trainer"
    assert issuer.jwks_fetches() == 2
    assert verifier.verify(issuer.token())["sub"] == "trainer"  # old key still published
    assert issuer.jwks_fetches() == 2


def test_keys_older_than_max_age_are_refetched_and_kept_on_error(issuer: Issuer,
                                                                 clock: FakeClock) -> None:
    cache = JwksCache(ISS, http=issuer.http(), clock=clock, max_age_seconds=1000)
    verifier = Verifier(ISS, AUD, clock=clock, jwks=cache)
    verifier.verify(issuer.token())
    clock.advance(1001)
    issuer.status = 503
    assert verifier.verify(issuer.token())["sub"] == "trainer"  # stale keys still serve
    assert issuer.jwks_fetches() == 2


def test_unreachable_discovery_is_source_unavailable(issuer: Issuer,
                                                     verifier: Verifier) -> None:
    issuer.status = 503
    with pytest.raises(SourceUnavailable) as info:
        verifier.verify(issuer.token())
    assert "issuer.test/.well-known/openid-configuration" in str(info.value)


def test_discovery_naming_another_issuer_is_refused(issuer: Issuer,
                                                    verifier: Verifier) -> None:
    issuer.discovery_issuer = "https://evil.test"
    assert _rejected(verifier, issuer.token()).claim == "iss"


def test_http_issuer_needs_loopback_and_opt_in(issuer: Issuer) -> None:
    from keyless import SourceMisconfigured

    for url, allow in (("http://issuer.test", True), ("http://127.0.0.1:1", False)):
        with pytest.raises(SourceMisconfigured):
            JwksCache(url, http=issuer.http(), allow_insecure_http=allow).keys()


def test_cache_records_the_issuers_date(issuer: Issuer, clock: FakeClock) -> None:
    cache = JwksCache(ISS, http=issuer.http(), clock=clock)
    cache.discovery()
    assert cache.server_date == parse_http_date("Tue, 14 Nov 2023 22:13:20 GMT")
    assert cache.local_time_at_date == clock.time()


# ----------------------------------------------------------------------------- ASGI

def _call(app: Any, path: str = "/data", authorization: str | None = None
          ) -> tuple[int, dict[bytes, bytes], bytes, list[dict[str, Any]]]:
    headers = [(b"host", b"test")]
    if authorization is not None:
        headers.append((b"authorization", authorization.encode()))
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": path, "headers": headers,
                             "state": {"shared": 1}}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    anyio.run(app, scope, receive, send)
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body, [scope]


class EchoApp:
    """A raw ASGI app that answers 200 with the claims it was given."""

    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        claims = scope.get("keyless.claims")
        body = json.dumps({"sub": claims["sub"] if claims else None}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


def test_middleware_passes_verified_claims(issuer: Issuer, verifier: Verifier) -> None:
    inner = EchoApp()
    app = BearerTokenMiddleware(inner, verifier, exempt_paths=("/healthz",))
    status, _, body, outer = _call(app, authorization=f"Bearer {issuer.token()}")
    assert status == 200 and json.loads(body) == {"sub": "trainer"}
    scope = inner.scopes[0]
    assert scope["keyless.claims"]["sub"] == "trainer"
    assert scope["state"]["keyless_claims"] is scope["keyless.claims"]
    assert scope["state"]["shared"] == 1
    assert "keyless_claims" not in outer[0]["state"]  # the shared state is not modified


def test_middleware_refuses_with_401_json_without_echoing(issuer: Issuer,
                                                          verifier: Verifier) -> None:
    inner = EchoApp()
    app = BearerTokenMiddleware(inner, verifier, exempt_paths=("/healthz",))
    expired = issuer.token(exp=int(issuer.clock.time()) - 3600)
    status, headers, body, _ = _call(app, authorization=f"Bearer {expired}")
    assert status == 401
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    answer = json.loads(body)
    assert answer["error"] == "invalid_token" and answer["claim"] == "exp"
    assert expired not in body.decode() and expired.split(".")[1] not in body.decode()

    for authorization in (None, "Basic dXNlcjpwYXNz", "Bearer "):
        status, _, body, _ = _call(app, authorization=authorization)
        assert status == 401 and json.loads(body)["error"] == "invalid_request"
    assert inner.scopes == []

    status, _, body, _ = _call(app, path="/healthz")
    assert status == 200 and json.loads(body) == {"sub": None}


def test_middleware_answers_503_when_keys_cannot_be_fetched(issuer: Issuer,
                                                            verifier: Verifier) -> None:
    issuer.status = 500
    status, _, body, _ = _call(BearerTokenMiddleware(EchoApp(), verifier),
                               authorization=f"Bearer {issuer.token()}")
    assert status == 503 and json.loads(body)["error"] == "temporarily_unavailable"
