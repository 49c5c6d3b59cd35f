"""Property-based tests over the inputs issue 18 found mishandled: JWT time claims of any size,
URL fields carrying userinfo, config documents with a key given twice, and raw HTTP requests
(any method, path, header and ``Content-Length``) to the credential endpoint and the dev
issuer. Whatever comes in, keyless answers with a value or its own typed error, never quotes a
secret, and its servers answer (or close) promptly and keep serving."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from keyless import ConfigError, Keyless, TokenRejected, load_config
from keyless.audit import AuditLog, MemorySink
from keyless.clock import FakeClock
from keyless.delivery import TokenDirectory
from keyless.delivery.credential_server import CREDENTIALS_PATH, CredentialServer
from keyless.dev.issuer import DevClient, DevIssuer
from keyless.verify import Verifier
from tests.core.test_credential_server import Sets, refreshable
from tests.core.test_properties import SECRET as CONFIG_SECRET
from tests.core.test_properties import VALID_CONFIGS
from tests.core.test_verify import AUD, ISS, Issuer

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SECRET = "fuzz-SENTINEL-secret-0451"
ROLE = "arn:aws:iam::123456789012:role/trainer"

# ---------------------------------------------------------------------- JWT time claims

HUGE = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([10**400, -(10**400), 2**63, 2**1024, 10**308 * 10, 1e308, -1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
)


@FUZZ
@given(exp=HUGE, iat=HUGE, nbf=HUGE)
def test_any_time_claims_give_claims_or_token_rejected(exp: Any, iat: Any, nbf: Any) -> None:
    clock = FakeClock(1_700_000_000.0)
    issuer = Issuer(clock)
    verifier = Verifier(ISS, [AUD], clock=clock, http=issuer.http())
    token = issuer.token(exp=exp, iat=iat, nbf=nbf)
    try:
        claims = verifier.verify(token)
    except TokenRejected as refused:
        assert refused.claim in {"exp", "iat", "nbf", None}
        assert token not in str(refused)
    else:
        assert claims["sub"] == "trainer"


# ---------------------------------------------------------------------- configs

def _configs_with_url(url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(field, config) pairs placing ``url`` in each URL field of the schema."""
    yield "source.token_url", {
        "source": {"type": "client_credentials", "token_url": url, "client_id": "c",
                   "client_secret": "x"},
        "target": {"aws": {"role_arn": ROLE}}}
    yield "target.oauth2.token_url", {
        "source": {"type": "file", "path": "/t"}, "target": {"oauth2": {"token_url": url}}}
    yield "target.databricks.host", {
        "source": {"type": "file", "path": "/t"}, "target": {"databricks": {"host": url}}}
    yield "audit.mlflow_tracking_uri", {
        "source": {"type": "file", "path": "/t"}, "target": {"aws": {"role_arn": ROLE}},
        "audit": {"sinks": ["mlflow"], "mlflow_tracking_uri": url}}


HOSTS = st.sampled_from(["idp.example", "127.0.0.1:8080", "[::1]:9", "localhost", "a.b.c"])
USERINFO = st.one_of(st.just(f"user:{SECRET}@"), st.just(f"{SECRET}@"),
                     st.just(f":{SECRET}@"), st.just(""))
URLS = st.builds(lambda scheme, userinfo, host, path: f"{scheme}://{userinfo}{host}{path}",
                 st.sampled_from(["https", "http", "ftp", "HTTPS"]), USERINFO, HOSTS,
                 st.sampled_from(["", "/", "/token", "/a/b?x=1", "#f", "/%40"]))


@FUZZ
@given(url=URLS)
def test_url_fields_never_accept_or_quote_userinfo(url: str) -> None:
    for field, document in _configs_with_url(url):
        try:
            config = load_config(document)
        except ConfigError as refused:
            assert SECRET not in str(refused) and SECRET not in repr(refused)
            if SECRET in url:
                assert refused.field is not None and refused.field.startswith(field), field
        else:
            assert SECRET not in json.dumps(config.model_dump(mode="json"), default=str), field


def _key_paths(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield (*path, key)
            yield from _key_paths(inner, (*path, key))


def _emit(value: Any, twice: tuple[str, ...], fmt: str, path: tuple[str, ...] = (),
          indent: str = "") -> str:
    """``value`` as JSON or block YAML text, with the key at ``twice`` written two times."""
    if not isinstance(value, dict):
        return json.dumps(value)  # a JSON scalar or list is valid YAML flow too
    entries: list[tuple[str, Any]] = []
    for key, inner in value.items():
        entries.append((key, inner))
        if (*path, key) == twice:
            entries.append((key, inner))
    if fmt == "json":
        return "{" + ", ".join(f"{json.dumps(k)}: {_emit(v, twice, fmt, (*path, k))}"
                               for k, v in entries) + "}"
    lines = []
    for key, inner in entries:
        if isinstance(inner, dict) and inner:
            nested = _emit(inner, twice, fmt, (*path, key), indent + "  ")
            lines.append(f"{indent}{json.dumps(key)}:\n{nested}")
        else:
            lines.append(f"{indent}{json.dumps(key)}: {_emit(inner, twice, fmt)}")
    return "\n".join(lines)


@FUZZ
@given(data=st.data(), fmt=st.sampled_from(["yaml", "json"]))
def test_a_key_given_twice_anywhere_is_refused_naming_it(data: st.DataObject, fmt: str) -> None:
    document = data.draw(st.sampled_from(VALID_CONFIGS))
    twice = data.draw(st.sampled_from(list(_key_paths(document))))
    text = _emit(document, twice, fmt)
    assert load_config(_emit(document, (), fmt)) is not None  # the emitter's control
    with pytest.raises(ConfigError) as refused:
        load_config(text)
    assert repr(twice[-1]) in str(refused.value)
    assert CONFIG_SECRET not in str(refused.value)


# ---------------------------------------------------------------------- raw HTTP requests

METHODS = st.one_of(st.sampled_from(["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "G T",
                                     "get", "\x00", ""]), st.text(max_size=8))
PATHS = st.one_of(st.sampled_from([CREDENTIALS_PATH, "/token", "/jwks",
                                   "/.well-known/openid-configuration", "/", "*",
                                   "/" + "a" * 5000, "/%00", "http://evil.example/"]),
                  st.text(max_size=30))
LENGTHS = st.sampled_from([None, "-1", "abc", "", "99999999999999999999", " 5", "1e3", "0x10",
                           "5, 5", "0", "3", "-0"])
HEADERS = st.lists(st.tuples(st.sampled_from(["Host", "Authorization", "Content-Type",
                                              "Transfer-Encoding", "X-Junk", "Expect"]),
                             st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126),
                                     max_size=40)), max_size=4)
BODY = st.binary(max_size=64)


def _request(method: str, path: str, length: str | None, headers: list[tuple[str, str]],
             body: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\n"
    for name, value in headers:
        head += f"{name}: {value}\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


def _exchange(port: int, raw: bytes, wait: float = 15.0) -> bytes:
    """Send ``raw``, end the write side, return the first bytes answered (b"" on close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        conn.sendall(raw)
        conn.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        try:
            answer = conn.recv(64)
        except ConnectionResetError:
            answer = b""
        assert time.monotonic() - started < wait
        return answer


def _check_answer(answer: bytes) -> None:
    if answer:
        assert answer.startswith(b"HTTP/1."), answer[:20]
        status = int(answer.split(b" ", 2)[1])
        # 501: an unknown method (http.server's answer, as RFC 9110 says); never a 500
        assert 200 <= status < 500 or status == 501, status


@pytest.fixture(scope="module")
def endpoint() -> Iterator[CredentialServer]:
    identity = Keyless({"source": {"type": "env"},
                        "target": {"aws": {"role_arn": ROLE, "region": "eu-west-1"}}},
                       clock=FakeClock(time.time()), environ={}, audit=AuditLog([MemorySink()]))
    directory = TokenDirectory()
    server = CredentialServer(identity, token_dir=directory,
                              credentials=refreshable(Sets(3600.0))).start()
    yield server
    server.stop()
    directory.cleanup()


@pytest.fixture(scope="module")
def dev_issuer() -> Iterator[DevIssuer]:
    with DevIssuer([DevClient("trainer", SECRET)], lifetime_seconds=120) as started:
        yield started


@FUZZ
@given(method=METHODS, path=PATHS, length=LENGTHS, headers=HEADERS, body=BODY)
def test_any_request_to_the_credential_endpoint_is_answered_and_it_keeps_serving(
        endpoint: CredentialServer, method: str, path: str, length: str | None,
        headers: list[tuple[str, str]], body: bytes) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        _check_answer(_exchange(endpoint.port, _request(method, path, length, headers, body)))
    assert "Traceback" not in errors.getvalue()


@FUZZ
@given(method=METHODS, path=PATHS, length=LENGTHS, headers=HEADERS, body=BODY)
def test_any_request_to_the_dev_issuer_is_answered_and_it_keeps_serving(
        dev_issuer: DevIssuer, method: str, path: str, length: str | None,
        headers: list[tuple[str, str]], body: bytes) -> None:
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        _check_answer(_exchange(dev_issuer.port, _request(method, path, length, headers, body)))
    assert "Traceback" not in errors.getvalue()
    assert SECRET not in errors.getvalue()


def test_both_servers_still_serve_after_the_fuzzing(endpoint: CredentialServer,
                                                    dev_issuer: DevIssuer) -> None:
    token = (endpoint.env()["AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"])
    with open(token) as handle, httpx.Client(trust_env=False, timeout=10) as client:
        served = client.get(f"http://127.0.0.1:{endpoint.port}{CREDENTIALS_PATH}",
                            headers={"Authorization": handle.read()})
        assert served.status_code == 200 and served.json()["AccessKeyId"].startswith("ASIA")
        discovery = client.get(f"http://127.0.0.1:{dev_issuer.port}"
                               "/.well-known/openid-configuration")
        assert discovery.status_code == 200
