"""Issue 18 (hardening) for keyless.verify: the JWKS cache under issuer failures, the ASGI
middleware's 503s, and ``keyless doctor``'s duplicate kids, size rule and issuer choice.

A real RSA key signs the tokens; discovery and JWKS are served by an ``httpx.MockTransport``
that records every URL asked for, can fail per endpoint or hang; time is a :class:`FakeClock`
(the waits bounded by ``fetch_wait_seconds`` are real, and short).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless import FakeClock, SourceMisconfigured, SourceUnavailable, TokenRejected
from keyless.cli import main
from keyless.config import FileSource
from keyless.identity import Keyless
from keyless.sources.file import FileTokenSource
from keyless.tokens import MAX_TOKEN_BYTES
from keyless.verify import IssuerUnavailable, JwksCache, Verifier
from keyless.verify import doctor as doctor_module
from keyless.verify.asgi import BearerTokenMiddleware
from keyless.verify.doctor import Check, diagnose

ISS = "https://issuer.test"
AUD = "sts.amazonaws.com"
DISCOVERY = f"{ISS}/.well-known/openid-configuration"
SLACK = 1.5  # seconds: these machines are shared and noisy; assert bounds, not timings


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    data.update(kid=kid, use="sig", alg="RS256")
    return data


@pytest.fixture(scope="module")
def keys() -> list[rsa.RSAPrivateKey]:
    return [_new_key() for _ in range(2)]


class FakeIssuer:
    """Discovery + JWKS; ``status`` per endpoint; ``gate`` (when set) holds every request
    until it is set (at most 5 s); ``urls`` lists every URL asked for."""

    def __init__(self, clock: FakeClock, key: rsa.RSAPrivateKey) -> None:
        self.clock = clock
        self.key = key
        self.jwks: list[dict[str, Any]] = [_jwk(key, "k1")]
        self.status = {"discovery": 200, "jwks": 200}
        self.gate: threading.Event | None = None
        self.urls: list[str] = []
        self.lock = threading.Lock()
        self.client = httpx.Client(transport=httpx.MockTransport(self.handler))

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.urls.append(str(request.url))
        gate = self.gate
        if gate is not None:
            gate.wait(5.0)
        if request.url.path == "/.well-known/openid-configuration":
            if self.status["discovery"] != 200:
                return httpx.Response(self.status["discovery"])
            return httpx.Response(200, json={"issuer": ISS, "jwks_uri": f"{ISS}/jwks"})
        if request.url.path == "/jwks":
            if self.status["jwks"] != 200:
                return httpx.Response(self.status["jwks"])
            return httpx.Response(200, json={"keys": list(self.jwks)})
        return httpx.Response(404)

    def http(self) -> httpx.Client:
        return self.client

    def fetches(self) -> int:
        with self.lock:
            return len(self.urls)

    def token(self, *, key: rsa.RSAPrivateKey | None = None, kid: str = "k1",
              **claims: Any) -> str:
        now = self.clock.time()
        payload: dict[str, Any] = {"iss": ISS, "aud": AUD, "sub": "trainer", "iat": int(now),
                                   "exp": int(now + 300), **claims}
        return jwt.encode(payload, key or self.key, algorithm="RS256", headers={"kid": kid})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


@pytest.fixture
def issuer(clock: FakeClock, keys: list[rsa.RSAPrivateKey]) -> Iterator[FakeIssuer]:
    fake = FakeIssuer(clock, keys[0])
    yield fake
    if fake.gate is not None:
        fake.gate.set()
    fake.client.close()


def _verifier(issuer: FakeIssuer, clock: FakeClock, **cache: Any) -> Verifier:
    jwks = JwksCache(ISS, http=issuer.http, clock=clock, **cache)
    return Verifier(ISS, AUD, clock=clock, jwks=jwks)


def _unavailable(verifier: Verifier, token: str) -> IssuerUnavailable:
    """Verification fails as "the issuer is unavailable", never as a refused token."""
    with pytest.raises(IssuerUnavailable) as info:
        verifier.verify(token)
    message = str(info.value)
    assert "is unavailable" in message and "fix:" in message and token not in message
    return info.value


# ----------------------------------------------------------------------------- backoff

def test_failed_fetches_back_off_doubling_to_the_maximum_and_reset_on_success(
        issuer: FakeIssuer, clock: FakeClock) -> None:
    verifier = _verifier(issuer, clock, max_age_seconds=1000)
    token = issuer.token()
    issuer.status["discovery"] = 503
    error = _unavailable(verifier, token)
    assert "next try in 1 s" in str(error) and error.retry_after == 1.0
    assert DISCOVERY in str(error)
    for _ in range(5):  # within the backoff: no request at all
        _unavailable(verifier, token)
    assert issuer.fetches() == 1
    for delay in (1, 2, 4, 8, 16, 30, 30):  # the delay before each retry, capped at 30 s
        before = issuer.fetches()
        clock.advance(delay - 0.5)
        _unavailable(verifier, token)
        assert issuer.fetches() == before, delay
        clock.advance(0.5)
        _unavailable(verifier, token)
        assert issuer.fetches() == before + 1, delay
    assert "next try in 30 s" in str(_unavailable(verifier, token))

    issuer.status["discovery"] = 200
    clock.advance(30)
    assert verifier.verify(issuer.token())["sub"] == "trainer"
    issuer.status["jwks"] = 503  # now a failure after a success: back to 1 s
    clock.advance(1000)  # the keys are stale: a refetch is due, and fails
    before = issuer.fetches()
    assert verifier.verify(issuer.token())["sub"] == "trainer"  # the known key still serves
    assert issuer.fetches() == before + 1
    clock.advance(0.5)
    verifier.verify(issuer.token())
    assert issuer.fetches() == before + 1
    clock.advance(0.5)
    verifier.verify(issuer.token())
    assert issuer.fetches() == before + 2  # retried after 1 s, not after 30


def test_a_jwks_blip_is_retried_after_a_second_not_locked_out_for_the_cooldown(
        issuer: FakeIssuer, clock: FakeClock) -> None:
    verifier = _verifier(issuer, clock)
    token = issuer.token()
    issuer.status["jwks"] = 503
    error = _unavailable(verifier, token)
    assert "known kids" not in str(error)
    issuer.status["jwks"] = 200
    _unavailable(verifier, token)  # still within the 1 s backoff: unavailable, not a 401
    clock.advance(1)
    assert verifier.verify(token)["sub"] == "trainer"


def test_a_new_kid_during_a_jwks_outage_is_unavailable_then_accepted(
        issuer: FakeIssuer, clock: FakeClock, keys: list[rsa.RSAPrivateKey]) -> None:
    verifier = _verifier(issuer, clock)
    assert verifier.verify(issuer.token())["sub"] == "trainer"
    issuer.jwks.append(_jwk(keys[1], "k2"))  # rotation: a new key, not yet fetched
    issuer.status["jwks"] = 503
    clock.advance(301)  # past the unknown-kid cooldown
    rotated = issuer.token(key=keys[1], kid="k2")
    _unavailable(verifier, rotated)  # it may be a new key: 503, not "no signing key"
    assert verifier.verify(issuer.token())["sub"] == "trainer"  # known keys still serve
    issuer.status["jwks"] = 200
    clock.advance(1)
    assert verifier.verify(rotated)["sub"] == "trainer"  # no 300 s lockout
    with pytest.raises(TokenRejected) as info:  # and forged kids are refused again at once
        verifier.verify(issuer.token(kid="forged"))
    assert info.value.claim == "kid"


# ----------------------------------------------------------------------------- concurrency

def _timed_verifications(verifier: Verifier, tokens: list[str]
                         ) -> list[tuple[float, str]]:
    """Verify each token in its own thread, all at once: (seconds taken, outcome)."""
    results: list[tuple[float, str]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(tokens))

    def work(token: str) -> None:
        barrier.wait()
        started = time.monotonic()
        try:
            verifier.verify(token)
            outcome = "ok"
        except Exception as exc:  # the outcome is what the test asserts on
            outcome = type(exc).__name__
        with lock:
            results.append((time.monotonic() - started, outcome))

    threads = [threading.Thread(target=work, args=(token,)) for token in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


def test_a_hung_issuer_holds_no_caller_longer_than_the_bound(
        issuer: FakeIssuer, clock: FakeClock) -> None:
    verifier = _verifier(issuer, clock)  # fetch_wait_seconds: 2 s by default
    issuer.gate = threading.Event()  # every request hangs (5 s)
    results = _timed_verifications(verifier, [issuer.token() for _ in range(8)])
    assert {outcome for _, outcome in results} == {"IssuerUnavailable"}
    assert max(seconds for seconds, _ in results) < 2.0 + SLACK, results
    assert issuer.fetches() == 1  # single flight
    issuer.gate.set()  # the issuer answers: the one fetch lands, verification works again
    deadline = time.monotonic() + 10
    while True:
        try:
            assert verifier.verify(issuer.token())["sub"] == "trainer"
            break
        except IssuerUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert issuer.fetches() == 2  # discovery + JWKS, once


def test_known_keys_serve_at_once_while_a_refetch_hangs(issuer: FakeIssuer,
                                                       clock: FakeClock) -> None:
    verifier = _verifier(issuer, clock, max_age_seconds=100)
    assert verifier.verify(issuer.token())["sub"] == "trainer"
    clock.advance(100)  # stale: a refetch is due
    issuer.gate = threading.Event()
    results = _timed_verifications(verifier, [issuer.token() for _ in range(8)])
    assert {outcome for _, outcome in results} == {"ok"}
    assert max(seconds for seconds, _ in results) < 2.0 + SLACK, results
    assert sorted(seconds for seconds, _ in results)[-2] < SLACK  # only the fetcher waited
    assert issuer.fetches() == 3  # discovery, JWKS, one hung JWKS refetch


# ----------------------------------------------------------------------------- ASGI

def _call(app: BearerTokenMiddleware, token: str) -> tuple[int, dict[bytes, bytes], bytes]:
    scope: dict[str, Any] = {"type": "http", "method": "GET", "path": "/data",
                             "headers": [(b"authorization", f"Bearer {token}".encode())]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    anyio.run(app, scope, receive, send)
    return (sent[0]["status"], dict(sent[0]["headers"]),
            b"".join(m.get("body", b"") for m in sent[1:]))


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_the_middleware_answers_503_with_retry_after_not_401_during_an_outage(
        issuer: FakeIssuer, clock: FakeClock) -> None:
    app = BearerTokenMiddleware(_ok_app, _verifier(issuer, clock))
    token = issuer.token()
    issuer.status["jwks"] = 503
    for _ in range(3):
        status, headers, body = _call(app, token)
        assert status == 503, body
        answer = json.loads(body)
        assert answer["error"] == "temporarily_unavailable" and answer["claim"] is None
        assert "is unavailable" in answer["error_description"]
        assert headers[b"retry-after"] == b"1"
        assert token not in body.decode() and token.split(".")[1] not in body.decode()
    issuer.status["jwks"] = 200
    clock.advance(1)
    assert _call(app, token)[0] == 200


# ----------------------------------------------------------------------------- doctor

def _checks(token: str, fake: FakeIssuer, clock: FakeClock, **kwargs: Any
            ) -> dict[str, Check]:
    return {c.name: c for c in diagnose(token, token_origin="test", audience=AUD,
                                        http=fake.http, clock=clock, **kwargs)}


def test_a_duplicate_kid_is_named_as_the_cause_of_a_bad_signature(
        issuer: FakeIssuer, clock: FakeClock, keys: list[rsa.RSAPrivateKey]) -> None:
    issuer.jwks.append(_jwk(keys[1], "k1"))  # a second key under the same kid shadows k1
    token = issuer.token()  # signed by the first, shadowed key
    verifier = _verifier(issuer, clock)
    with pytest.raises(TokenRejected) as info:
        verifier.verify(token)
    assert info.value.claim == "signature"
    assert "several keys with kid='k1'" in str(info.value) and "fix:" in str(info.value)
    assert verifier.jwks.duplicate_kids == frozenset({"k1"})

    checks = _checks(token, issuer, clock, issuer=ISS)
    assert checks["signature"].status == "FAIL"
    assert "several keys with kid='k1'" in checks["signature"].detail
    assert "altered" not in checks["signature"].detail


def test_one_size_rule_for_the_file_source_the_verifier_and_doctor(
        issuer: FakeIssuer, clock: FakeClock, tmp_path: Path) -> None:
    big = issuer.token(padding="x" * 1_050_000)  # a valid, signed, 1.4 MB token
    assert 1_300_000 < len(big) < 1_500_000 and len(big) > MAX_TOKEN_BYTES
    with pytest.raises(TokenRejected) as info:
        _verifier(issuer, clock).verify(big)
    message = str(info.value)
    assert info.value.claim is None and "fix:" in message
    assert f"{len(big)} bytes" in message and str(MAX_TOKEN_BYTES) in message
    assert big[:40] not in message
    assert issuer.fetches() == 0  # refused before decoding, before any fetch

    checks = _checks(big, issuer, clock, issuer=ISS)
    assert checks["token"].status == "FAIL" and str(MAX_TOKEN_BYTES) in checks["token"].detail
    assert checks["signature"].status == "skip" and issuer.fetches() == 0

    path = tmp_path / "token"
    path.write_text(big)
    with pytest.raises(SourceMisconfigured) as source_info:
        FileTokenSource(FileSource(path=str(path))).fetch(None)
    assert str(MAX_TOKEN_BYTES) in str(source_info.value)
    assert _verifier(issuer, clock).verify(issuer.token())["sub"] == "trainer"  # normal size


def _hosts(issuer: FakeIssuer) -> set[str | None]:
    with issuer.lock:
        return {urlsplit(url).hostname for url in issuer.urls}


def test_doctor_contacts_only_the_configured_issuer(
        issuer: FakeIssuer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor_module, "_exchange",
                        lambda report, identity: report.add("exchange", "skip", "test"))
    token = issuer.token(iss="https://elsewhere.test")
    identity = Keyless({"source": {"type": "client_credentials", "issuer": ISS,
                                   "client_id": "trainer", "client_secret": "not-used"},
                        "target": {"aws": {"role_arn": "arn:aws:iam::123456789012:role/x"}}})
    for kwargs in ({"identity": identity}, {"issuer": ISS}):
        checks = _checks(token, issuer, clock, **kwargs)
        assert _hosts(issuer) == {"issuer.test"}, kwargs  # never the token's iss host
        assert checks["iss"].status == "FAIL", kwargs
        assert "elsewhere.test" in checks["iss"].detail and "fix:" in checks["iss"].detail
        assert checks["discovery"].status == "ok"
    announced: list[str] = []
    _checks(token, issuer, clock, identity=identity, announce=announced.append)
    assert announced == []  # a configured issuer needs no announcement


def test_doctor_without_an_issuer_says_whose_discovery_it_fetches_first(
        issuer: FakeIssuer, clock: FakeClock) -> None:
    said: list[tuple[str, int]] = []
    checks = _checks(issuer.token(), issuer, clock,
                     announce=lambda text: said.append((text, issuer.fetches())))
    assert len(said) == 1
    text, fetched_before = said[0]
    assert fetched_before == 0 and DISCOVERY in text and "--issuer" in text
    assert checks["discovery"].status == "ok" and checks["iss"].status == "ok"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_doctor_cli_announces_on_stderr_and_keeps_stdout_the_report(
        tmp_path: Path, keys: list[rsa.RSAPrivateKey],
        capsys: pytest.CaptureFixture[str]) -> None:
    origin = f"http://127.0.0.1:{_closed_port()}"
    now = int(time.time())
    token = jwt.encode({"iss": origin, "aud": AUD, "sub": "trainer", "iat": now,
                        "exp": now + 300}, keys[0], algorithm="RS256", headers={"kid": "k1"})
    path = tmp_path / "token.jwt"
    path.write_text(token)
    code = main(["doctor", "--token-file", str(path), "--audience", AUD,
                 "--allow-insecure-http", "--json"])
    out = capsys.readouterr()
    assert code == 1
    report = {c["name"]: c for c in json.loads(out.out)["checks"]}  # stdout: only the JSON
    assert report["discovery"]["status"] == "FAIL"
    assert f"{origin}/.well-known/openid-configuration" in out.err and "--issuer" in out.err
    assert token not in out.out + out.err


def test_issuer_unavailable_is_a_source_unavailable_and_pickles() -> None:
    import pickle

    error = IssuerUnavailable("verify: the issuer x is unavailable; fix: wait", retry_after=4.0)
    assert isinstance(error, SourceUnavailable)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, IssuerUnavailable) and copy.retry_after == 4.0
