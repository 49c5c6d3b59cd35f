"""OAuth 2.0 sources: client_credentials (RFC 6749/7523/8707) and token_exchange (RFC 8693)."""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless.clock import FakeClock
from keyless.config import ClientCredentialsSource, TokenExchangeSource
from keyless.errors import SourceMisconfigured, SourceUnavailable
from keyless.sources import ClientCredentialsTokenSource, TokenExchangeTokenSource, build_source
from tests.core import helpers
from tests.core.helpers import Recorder

NOW = 1_700_000_000
TOKEN_URL = "https://idp.example/oauth/token"
CLIENT_ID = "svc worker:1"
CLIENT_SECRET = "s3cr+t/=:&value%ZZ"
Handler = Callable[[httpx.Request], httpx.Response]


def make_jwt(**claims: object) -> str:
    defaults: dict[str, object] = {"iss": "https://idp.example", "sub": "client", "aud": "aud-1"}
    return helpers.make_jwt(3600, now=NOW, **{**defaults, **claims})




def form(request: httpx.Request) -> dict[str, str]:
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    parsed = parse_qs(request.content.decode(), keep_blank_values=True, strict_parsing=True)
    assert all(len(v) == 1 for v in parsed.values())
    return {k: v[0] for k, v in parsed.items()}


def token_answer(request: httpx.Request) -> httpx.Response:
    fields = form(request)
    aud = fields.get("resource") or fields.get("audience") or "default"
    return httpx.Response(200, json={"access_token": make_jwt(aud=aud), "token_type": "Bearer",
                                     "expires_in": 3600})


@pytest.fixture(scope="module")
def rsa_pem() -> tuple[str, rsa.RSAPublicKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return pem, key.public_key()


def cc(**fields: Any) -> ClientCredentialsSource:
    base: dict[str, Any] = {"token_url": TOKEN_URL, "client_id": CLIENT_ID,
                            "client_secret": CLIENT_SECRET}
    base.update(fields)
    return ClientCredentialsSource.model_validate(base)


# ----------------------------------------------------------------------------- client creds

def test_basic_auth_form_urlencodes_before_base64() -> None:
    rec = Recorder(token_answer)
    source = ClientCredentialsTokenSource(cc(scope="read write"), http=rec.http)
    got = source.fetch("https://api.example/")
    assert got is not None and got.audience == ["https://api.example/"]
    (request,) = rec.requests
    assert request.method == "POST" and str(request.url) == TOKEN_URL
    scheme, encoded = request.headers["Authorization"].split(" ")
    assert scheme == "Basic"
    pair = base64.b64decode(encoded).decode()
    raw_id, raw_secret = pair.split(":")  # the ':' inside id/secret are encoded
    assert raw_id == "svc+worker%3A1"
    assert unquote_plus(raw_id) == CLIENT_ID and unquote_plus(raw_secret) == CLIENT_SECRET
    assert form(request) == {"grant_type": "client_credentials", "scope": "read write",
                             "resource": "https://api.example/"}
    assert source.name == "client_credentials"
    assert got.origin == f"client_credentials:{CLIENT_ID}"


def test_client_secret_post() -> None:
    rec = Recorder(token_answer)
    ClientCredentialsTokenSource(cc(auth_method="client_secret_post"), http=rec.http).fetch("a")
    (request,) = rec.requests
    assert "Authorization" not in request.headers
    fields = form(request)
    assert fields["client_id"] == CLIENT_ID and fields["client_secret"] == CLIENT_SECRET


def test_private_key_jwt_assertion(rsa_pem: tuple[str, rsa.RSAPublicKey]) -> None:
    pem, public = rsa_pem
    clock = FakeClock(start=NOW + 0.75)
    rec = Recorder(token_answer)
    spec = cc(client_secret=None, private_key=pem, key_id="key-1")
    source = ClientCredentialsTokenSource(spec, http=rec.http, clock=clock)
    assert source.auth_method == "private_key_jwt"
    source.fetch("aud-a")
    clock.advance(100)
    source.fetch("aud-a")
    jtis = []
    for request, iat in zip(rec.requests, (NOW, NOW + 100), strict=True):
        assert "Authorization" not in request.headers
        fields = form(request)
        assert fields["client_id"] == CLIENT_ID
        assert fields["client_assertion_type"] == (
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        assertion = fields["client_assertion"]
        assert jwt.get_unverified_header(assertion)["kid"] == "key-1"
        claims = jwt.decode(assertion, public, algorithms=["RS256"], audience=TOKEN_URL,
                            options={"verify_exp": False, "verify_iat": False,
                                     "verify_nbf": False})
        assert claims["iss"] == claims["sub"] == CLIENT_ID
        assert claims["iat"] == iat and claims["exp"] == iat + 300
        jtis.append(claims["jti"])
        assert "client_secret" not in fields
    assert len(set(jtis)) == 2 and all(len(j) >= 16 for j in jtis)
    helpers.assert_clean(repr(source), pem.splitlines()[1])


def test_private_key_jwt_without_kid(rsa_pem: tuple[str, rsa.RSAPublicKey]) -> None:
    rec = Recorder(token_answer)
    ClientCredentialsTokenSource(cc(client_secret=None, private_key=rsa_pem[0]),
                                 http=rec.http, clock=FakeClock()).fetch(None)
    assertion = form(rec.requests[0])["client_assertion"]
    assert "kid" not in jwt.get_unverified_header(assertion)


def test_bad_private_key_is_misconfigured_without_echo() -> None:
    bad = "-----BEGIN PRIVATE KEY-----\nMIIBnotreallyakeyQQQQQQQQQQQQ\n-----END PRIVATE KEY-----\n"
    rec = Recorder(token_answer)
    with pytest.raises(SourceMisconfigured, match="cannot sign") as info:
        ClientCredentialsTokenSource(cc(client_secret=None, private_key=bad),
                                     http=rec.http).fetch(None)
    helpers.assert_clean(str(info.value), "MIIBnotreallyakey")
    assert rec.requests == []


def test_audience_parameter_and_precedence() -> None:
    rec = Recorder(token_answer)
    ClientCredentialsTokenSource(cc(audience_parameter="audience"), http=rec.http).fetch("call")
    ClientCredentialsTokenSource(cc(audience="spec-aud"), http=rec.http).fetch("call")
    ClientCredentialsTokenSource(cc(resource="urn:res"), http=rec.http).fetch("call")
    ClientCredentialsTokenSource(cc(audience_parameter="audience", resource="urn:res"),
                                 http=rec.http).fetch("call")
    ClientCredentialsTokenSource(cc(), http=rec.http).fetch(None)
    ClientCredentialsTokenSource(cc(audience="spec-aud"), http=rec.http).fetch(None)
    f = [form(r) for r in rec.requests]
    assert f[0]["audience"] == "call" and "resource" not in f[0]
    assert f[1]["resource"] == "call"  # the caller's (the target's) audience wins
    assert f[2]["resource"] == "urn:res" and "audience" not in f[2]
    assert f[3]["audience"] == "call" and f[3]["resource"] == "urn:res"
    assert f[4] == {"grant_type": "client_credentials"}
    assert f[5]["resource"] == "spec-aud"  # the spec's serves a caller that names none


def test_discovery_finds_token_endpoint_once() -> None:
    def idp(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tenant/.well-known/openid-configuration":
            return httpx.Response(200, json={"issuer": "https://idp.example/tenant",
                                             "token_endpoint": "https://idp.example/t/tok"})
        assert str(request.url) == "https://idp.example/t/tok"
        return token_answer(request)

    rec = Recorder(idp)
    source = ClientCredentialsTokenSource(
        cc(token_url=None, issuer="https://idp.example/tenant/"), http=rec.http)
    source.fetch("a")
    source.fetch("b")
    paths = [r.url.path for r in rec.requests]
    assert paths == ["/tenant/.well-known/openid-configuration", "/t/tok", "/t/tok"]


def test_discovery_refuses_plain_http_endpoint() -> None:
    rec = Recorder(lambda r: httpx.Response(200, json={"token_endpoint": "http://evil/tok"}))
    with pytest.raises(SourceMisconfigured, match="not https"):
        ClientCredentialsTokenSource(cc(token_url=None, issuer="https://idp.example"),
                                     http=rec.http).fetch("a")


def test_discovery_errors() -> None:
    rec = Recorder(lambda r: httpx.Response(404))
    with pytest.raises(SourceMisconfigured, match="HTTP 404"):
        ClientCredentialsTokenSource(cc(token_url=None, issuer="https://idp.example"),
                                     http=rec.http).fetch("a")
    rec = Recorder(lambda r: httpx.Response(502))
    with pytest.raises(SourceUnavailable):
        ClientCredentialsTokenSource(cc(token_url=None, issuer="https://idp.example"),
                                     http=rec.http).fetch("a")


def test_opaque_access_token_falls_back_to_id_token() -> None:
    id_token = make_jwt(sub="from-id-token")
    rec = Recorder(lambda r: httpx.Response(200, json={"access_token": "opaque123",
                                                       "id_token": id_token}))
    got = ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")
    assert got is not None and got.subject == "from-id-token"


def test_jwt_access_token_preferred_over_id_token() -> None:
    rec = Recorder(lambda r: httpx.Response(200, json={"access_token": make_jwt(sub="at"),
                                                       "id_token": make_jwt(sub="id")}))
    got = ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")
    assert got is not None and got.subject == "at"


def test_no_jwt_in_answer_explains_fix() -> None:
    opaque = "opaque-access-token-value-abcdef"
    rec = Recorder(lambda r: httpx.Response(200, json={"access_token": opaque}))
    with pytest.raises(SourceMisconfigured, match="JWT access tokens") as info:
        ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")
    helpers.assert_clean(str(info.value), opaque, CLIENT_SECRET)


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429])
def test_transient_statuses(status: int) -> None:
    rec = Recorder(lambda r: httpx.Response(status, json={"error": "temporarily_unavailable"}))
    with pytest.raises(SourceUnavailable, match=f"HTTP {status}") as info:
        ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")
    helpers.assert_clean(str(info.value), CLIENT_SECRET)


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ReadTimeout, httpx.ConnectTimeout,
                                 httpx.RemoteProtocolError])
def test_transport_errors_are_transient(exc: type[httpx.TransportError]) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    with pytest.raises(SourceUnavailable):
        ClientCredentialsTokenSource(cc(), http=Recorder(fail).http).fetch("a")


def test_invalid_client_quotes_error_with_fix_and_no_secret() -> None:
    rec = Recorder(lambda r: httpx.Response(401, json={
        "error": "invalid_client",
        "error_description": f"client authentication failed for secret {CLIENT_SECRET}"}))
    source = ClientCredentialsTokenSource(cc(), http=rec.http)
    with pytest.raises(SourceMisconfigured) as info:
        source.fetch("a")
    message = str(info.value)
    assert "invalid_client" in message and "client authentication failed" in message
    assert "client_secret" in message and "client_secret_basic" in message
    assert message.startswith("source client_credentials:")
    helpers.assert_clean(message, CLIENT_SECRET)
    helpers.assert_clean(repr(source), CLIENT_SECRET)


def test_invalid_target_names_the_audience() -> None:
    rec = Recorder(lambda r: httpx.Response(400, json={"error": "invalid_target"}))
    with pytest.raises(SourceMisconfigured, match="not allowed") as info:
        ClientCredentialsTokenSource(cc(), http=rec.http).fetch("https://api.example/x")
    assert "https://api.example/x" in str(info.value)


def test_non_json_and_redirect_answers() -> None:
    rec = Recorder(lambda r: httpx.Response(200, text="<html>login</html>"))
    with pytest.raises(SourceMisconfigured, match="JSON"):
        ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")
    rec = Recorder(lambda r: httpx.Response(302, headers={"Location": "https://x.example/l"}))
    with pytest.raises(SourceMisconfigured, match="redirects"):
        ClientCredentialsTokenSource(cc(), http=rec.http).fetch("a")


def test_client_credentials_source_pickles_with_default_deps() -> None:
    source = ClientCredentialsTokenSource(cc())
    clone = pickle.loads(pickle.dumps(source))
    assert clone.spec == source.spec


# ----------------------------------------------------------------------------- token exchange

EXCHANGE_URL = "https://sts.example/v1/token"
EXCHANGE_SECRET = "exchange-client-secret-value"


def exchange_answer(request: httpx.Request) -> httpx.Response:
    fields = form(request)
    return httpx.Response(200, json={
        "access_token": make_jwt(iss="https://sts.example", aud=fields.get("audience", "none"),
                                 sub="exchanged"),
        "issued_token_type": "urn:ietf:params:oauth:token-type:jwt", "token_type": "N_A"})


def test_token_exchange_sends_rfc8693_form(tmp_path: Path) -> None:
    subject, actor = make_jwt(sub="pod"), make_jwt(sub="rank-3")
    (tmp_path / "subject").write_text(subject)
    spec = TokenExchangeSource.model_validate({
        "subject": {"type": "file", "path": str(tmp_path / "subject")},
        "actor": {"type": "env", "variable": "ACTOR_JWT"},
        "token_url": EXCHANGE_URL, "resource": "urn:res", "scope": "s1 s2",
        "client_id": "exch", "client_secret": EXCHANGE_SECRET})
    rec = Recorder(exchange_answer)
    source = build_source(spec, http=rec.http, environ={"ACTOR_JWT": actor})
    assert isinstance(source, TokenExchangeTokenSource)
    got = source.fetch("https://final.example")
    assert got is not None and got.subject == "exchanged"
    assert got.audience == ["https://final.example"]
    (request,) = rec.requests
    jwt_type = "urn:ietf:params:oauth:token-type:jwt"
    assert form(request) == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": subject, "subject_token_type": jwt_type,
        "actor_token": actor, "actor_token_type": jwt_type,
        "requested_token_type": jwt_type, "audience": "https://final.example",
        "resource": "urn:res", "scope": "s1 s2"}
    assert request.headers["Authorization"] == "Basic " + base64.b64encode(
        f"exch:{EXCHANGE_SECRET}".encode()).decode()
    helpers.assert_clean(repr(source), subject, actor, EXCHANGE_SECRET)


def test_token_exchange_spec_audience_and_public_client(tmp_path: Path) -> None:
    (tmp_path / "s").write_text(make_jwt())
    spec = TokenExchangeSource.model_validate({
        "subject": {"type": "file", "path": str(tmp_path / "s")},
        "token_url": EXCHANGE_URL, "audience": "spec-aud", "client_id": "public"})
    rec = Recorder(exchange_answer)
    build_source(spec, http=rec.http).fetch(None)
    build_source(spec, http=rec.http).fetch("caller-aud")
    fields = form(rec.requests[0])
    assert fields["audience"] == "spec-aud" and fields["client_id"] == "public"
    assert form(rec.requests[1])["audience"] == "caller-aud"
    assert "actor_token" not in fields and "Authorization" not in rec.requests[0].headers


def test_token_exchange_of_client_credentials_nested() -> None:
    def servers(request: httpx.Request) -> httpx.Response:
        if str(request.url) == TOKEN_URL:
            return token_answer(request)
        assert str(request.url) == EXCHANGE_URL
        fields = form(request)
        assert jwt.decode(fields["subject_token"], options={"verify_signature": False})[
            "aud"] == "https://sts.example"
        return exchange_answer(request)

    spec = TokenExchangeSource.model_validate({
        "subject": {"type": "client_credentials", "token_url": TOKEN_URL,
                    "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
                    "audience": "https://sts.example"},
        "token_url": EXCHANGE_URL})
    rec = Recorder(servers)
    got = build_source(spec, http=rec.http, clock=FakeClock()).fetch("final")
    assert got is not None and got.audience == ["final"]
    assert [str(r.url) for r in rec.requests] == [TOKEN_URL, EXCHANGE_URL]


def _exchange(tmp_path: Path, respond: Handler) -> tuple[TokenExchangeTokenSource, str]:
    subject = make_jwt(sub="pod")
    (tmp_path / "s").write_text(subject)
    spec = TokenExchangeSource.model_validate({
        "subject": {"type": "file", "path": str(tmp_path / "s")}, "token_url": EXCHANGE_URL,
        "client_id": "exch", "client_secret": EXCHANGE_SECRET})
    source = build_source(spec, http=Recorder(respond).http)
    assert isinstance(source, TokenExchangeTokenSource)
    return source, subject


def test_token_exchange_non_jwt_answer(tmp_path: Path) -> None:
    source, subject = _exchange(tmp_path, lambda r: httpx.Response(200, json={
        "access_token": "opaque-exchanged-token-value",
        "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}))
    with pytest.raises(SourceMisconfigured, match="JWT") as info:
        source.fetch("a")
    helpers.assert_clean(str(info.value), "opaque-exchanged-token-value", subject)


def test_token_exchange_invalid_grant_never_echoes_subject(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        sent = form(request)["subject_token"]
        return httpx.Response(400, json={"error": "invalid_grant",
                                         "error_description": f"bad token {sent}"})

    source, subject = _exchange(tmp_path, refuse)
    with pytest.raises(SourceMisconfigured, match="invalid_grant") as info:
        source.fetch("a")
    assert "iss='https://idp.example'" in str(info.value)  # names the subject's iss
    helpers.assert_clean(str(info.value), subject, subject.split(".")[1], EXCHANGE_SECRET)


def test_token_exchange_503_is_transient(tmp_path: Path) -> None:
    source, _ = _exchange(tmp_path, lambda r: httpx.Response(503))
    with pytest.raises(SourceUnavailable):
        source.fetch("a")


def test_token_exchange_nested_errors_propagate(tmp_path: Path) -> None:
    spec = TokenExchangeSource.model_validate({
        "subject": {"type": "file", "path": str(tmp_path / "missing")},
        "token_url": EXCHANGE_URL})
    rec = Recorder(exchange_answer)
    with pytest.raises(SourceMisconfigured, match="does not exist"):
        build_source(spec, http=rec.http).fetch("a")
    assert rec.requests == []
