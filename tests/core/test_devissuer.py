"""The dev OIDC issuer, over real loopback HTTP: discovery, JWKS, client credentials, RFC 8693
token exchange, loopback-only binding, and keyless's own sources against it."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyless import Keyless
from keyless.cli import main as cli_main
from keyless.clock import FakeClock
from keyless.dev.issuer import TOKEN_EXCHANGE_GRANT, DevClient, DevIssuer
from keyless.errors import ConfigError, KeylessError

SECRET = "s3cret-for-tests"
JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"


@pytest.fixture(scope="module")
def issuer() -> Iterator[DevIssuer]:
    clients = [DevClient("trainer", SECRET),
               DevClient("rank-3", "other-secret", subject="job-7/rank-3",
                         claims={"team": "vision"}, lifetime_seconds=60),
               DevClient("launcher", "launcher-secret")]
    with DevIssuer(clients, lifetime_seconds=120, claims={"env": "dev"}) as started:
        yield started


def _post(issuer: DevIssuer, form: dict[str, Any], auth: tuple[str, str] | None = None
          ) -> httpx.Response:
    return httpx.post(issuer.token_endpoint, data=form, auth=auth, timeout=10)


def _verify(issuer: DevIssuer, token: str, audience: str) -> dict[str, Any]:
    """Verify like a relying party: keys from the JWKS found through discovery."""
    discovery = httpx.get(issuer.issuer + "/.well-known/openid-configuration").json()
    key = jwt.PyJWKClient(discovery["jwks_uri"]).get_signing_key_from_jwt(token).key
    claims: dict[str, Any] = jwt.decode(token, key, algorithms=["RS256"], audience=audience,
                                        issuer=discovery["issuer"])
    return claims


def _cc(issuer: DevIssuer, client: str, secret: str, **form: str) -> str:
    response = _post(issuer, {"grant_type": "client_credentials", **form}, (client, secret))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    return str(body["access_token"])


def test_discovery_names_its_endpoints(issuer: DevIssuer) -> None:
    response = httpx.get(issuer.issuer + "/.well-known/openid-configuration")
    assert response.status_code == 200
    doc = response.json()
    assert doc["issuer"] == issuer.issuer and issuer.issuer.startswith("http://127.0.0.1:")
    assert doc["token_endpoint"] == issuer.issuer + "/token"
    assert set(doc["grant_types_supported"]) == {"client_credentials", TOKEN_EXCHANGE_GRANT}
    keys = httpx.get(doc["jwks_uri"]).json()["keys"]
    assert [(k["kty"], k["alg"], k["use"]) for k in keys] == [("RSA", "RS256", "sig")]
    assert "d" not in keys[0], "the JWKS must hold only the public key"
    assert httpx.get(issuer.issuer + "/nothing").status_code == 404


def test_keys_are_made_per_run() -> None:
    with DevIssuer({"a": "b"}) as one, DevIssuer({"a": "b"}) as two:
        assert one.jwks()["keys"][0]["n"] != two.jwks()["keys"][0]["n"]


def test_client_credentials_token_verifies_with_the_jwks(issuer: DevIssuer) -> None:
    token = _cc(issuer, "trainer", SECRET, resource="sts.amazonaws.com")
    claims = _verify(issuer, token, "sts.amazonaws.com")
    assert claims["sub"] == "trainer" and claims["client_id"] == "trainer"
    assert claims["aud"] == "sts.amazonaws.com"
    assert claims["exp"] - claims["iat"] == 120
    assert claims["env"] == "dev"
    with pytest.raises(jwt.InvalidAudienceError):
        _verify(issuer, token, "https://other.example")


def test_client_credentials_subject_claims_lifetime_and_audiences(issuer: DevIssuer) -> None:
    token = httpx.post(issuer.token_endpoint, timeout=10, data={
        "grant_type": "client_credentials", "client_id": "rank-3",
        "client_secret": "other-secret", "audience": "https://a.example",
        "resource": "https://b.example"}).json()["access_token"]
    claims = _verify(issuer, token, "https://b.example")
    assert claims["sub"] == "job-7/rank-3" and claims["team"] == "vision"
    assert sorted(claims["aud"]) == ["https://a.example", "https://b.example"]
    assert claims["exp"] - claims["iat"] == 60
    default_aud = jwt.decode(_cc(issuer, "trainer", SECRET), options={"verify_signature": False})
    assert default_aud["aud"] == "trainer"


@pytest.mark.parametrize("auth, form", [
    (("trainer", "wrong"), {}),
    (("nobody", SECRET), {}),
    (None, {}),
    (None, {"client_id": "trainer", "client_secret": "wrong"}),
])
def test_client_credentials_refuses_bad_clients(issuer: DevIssuer, auth: Any,
                                                form: dict[str, str]) -> None:
    response = _post(issuer, {"grant_type": "client_credentials", **form}, auth)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert SECRET not in response.text


def test_unsupported_grant_and_bad_requests(issuer: DevIssuer) -> None:
    response = _post(issuer, {"grant_type": "password"}, ("trainer", SECRET))
    assert (response.status_code, response.json()["error"]) == (400, "unsupported_grant_type")
    response = httpx.post(issuer.token_endpoint, content=b"{}", timeout=10,
                          headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")
    response = _post(issuer, {"grant_type": TOKEN_EXCHANGE_GRANT})
    assert (response.status_code, response.json()["error"]) == (400, "invalid_request")


def _exchange(issuer: DevIssuer, subject: str, **form: str) -> httpx.Response:
    return _post(issuer, {"grant_type": TOKEN_EXCHANGE_GRANT, "subject_token": subject,
                          "subject_token_type": JWT_TYPE, **form})


def test_token_exchange_keeps_sub_sets_aud_and_act(issuer: DevIssuer) -> None:
    subject = _cc(issuer, "rank-3", "other-secret", resource="https://issuer.local")
    actor = _cc(issuer, "launcher", "launcher-secret")
    response = _exchange(issuer, subject, audience="https://hf.example",
                         actor_token=actor, actor_token_type=JWT_TYPE)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == JWT_TYPE
    claims = _verify(issuer, body["access_token"], "https://hf.example")
    assert claims["sub"] == "job-7/rank-3" and claims["team"] == "vision"
    assert claims["act"] == {"sub": "launcher"}
    # Without an audience, the subject's aud is kept; chained: the act claim nests.
    again = _exchange(issuer, body["access_token"], actor_token=_cc(
        issuer, "trainer", SECRET), actor_token_type=JWT_TYPE).json()["access_token"]
    nested = _verify(issuer, again, "https://hf.example")
    assert nested["act"] == {"sub": "trainer"}
    via_actor = _exchange(issuer, subject, actor_token=body["access_token"],
                          actor_token_type=JWT_TYPE).json()["access_token"]
    assert jwt.decode(via_actor, options={"verify_signature": False})["act"] == {
        "sub": "job-7/rank-3", "act": {"sub": "launcher"}}


def test_token_exchange_refuses_foreign_and_expired_tokens(issuer: DevIssuer) -> None:
    genuine = _cc(issuer, "trainer", SECRET)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other, algorithm="RS256",
                        headers={"kid": jwt.get_unverified_header(genuine)["kid"]})
    for bad in (forged, "not-a-jwt"):
        response = _exchange(issuer, bad)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")
    response = _exchange(issuer, genuine, actor_token=forged, actor_token_type=JWT_TYPE)
    assert response.json()["error"] == "invalid_grant"
    response = _exchange(issuer, genuine, client_id="trainer", client_secret="wrong")
    assert (response.status_code, response.json()["error"]) == (401, "invalid_client")

    clock = FakeClock(start=1_800_000_000.0)
    with DevIssuer({"trainer": SECRET}, lifetime_seconds=10, clock=clock) as timed:
        token = timed.mint("trainer", "x")
        assert _exchange(timed, token).status_code == 200
        clock.advance(10)
        response = _exchange(timed, token)
        assert (response.status_code, response.json()["error"]) == (400, "invalid_grant")


def test_mint_and_verify(issuer: DevIssuer) -> None:
    token = issuer.mint("worker-1", ["a", "b"], 30, rank="1")
    claims = issuer.verify(token)
    assert (claims["sub"], claims["aud"], claims["rank"]) == ("worker-1", ["a", "b"], "1")
    assert claims["exp"] - claims["iat"] == 30 and claims["iss"] == issuer.issuer
    with DevIssuer({"a": "b"}) as stranger, pytest.raises(KeylessError) as info:
        stranger.verify(token)
    assert token not in str(info.value)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "example.com", "::", "192.168.0.1"])
def test_non_loopback_addresses_are_refused(host: str) -> None:
    with pytest.raises(ConfigError) as info:
        DevIssuer({"a": "b"}, host=host)
    assert "loopback" in str(info.value) and info.value.field == "host"
    assert cli_main(["dev-issuer", "--host", host, "--client", "a:b"]) == 2


@pytest.mark.parametrize("host", ["localhost", "::1"])
def test_loopback_names_are_accepted(host: str) -> None:
    try:
        started = DevIssuer({"a": "b"}, host=host).start()
    except ConfigError as exc:  # e.g. no IPv6 on this machine
        pytest.skip(str(exc))
    try:
        doc = httpx.get(started.issuer + "/.well-known/openid-configuration").json()
        assert doc["issuer"] == started.issuer
    finally:
        started.stop()


def test_keyless_sources_against_the_dev_issuer(issuer: DevIssuer) -> None:
    """keyless's client_credentials and token_exchange (with an actor) sources, end to end."""
    base = {"target": {"oauth2": {"token_url": issuer.token_endpoint}},
            "allow_insecure_http": True, "audit": {"sinks": []}}
    cc = {"type": "client_credentials", "issuer": issuer.issuer, "client_id": "rank-3",
          "client_secret": "other-secret"}
    token = Keyless({**base, "source": cc}).subject_token("sts.amazonaws.com")
    assert (token.subject, list(token.audience)) == ("job-7/rank-3", ["sts.amazonaws.com"])
    exchange = {"type": "token_exchange", "token_url": issuer.token_endpoint,
                "subject": cc, "audience": "https://hf.example",
                "actor": {**cc, "client_id": "launcher", "client_secret": "launcher-secret"}}
    exchanged = Keyless({**base, "source": exchange}).subject_token()
    assert exchanged.subject == "job-7/rank-3"
    assert exchanged.claims["act"] == {"sub": "launcher"}
    assert list(exchanged.audience) == ["https://hf.example"]


def test_cli_prints_a_ready_line_and_never_the_secret(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "keyless", "dev-issuer", "--lifetime", "30",
                             "--claim", "team=\"ml\""], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("keyless dev-issuer: ready at http://127.0.0.1:"), line
        assert "never for production" in line
        url = line.split("ready at ", 1)[1].split(" ", 1)[0]
        secret_file = Path(line.split("secret is in ", 1)[1].split(";", 1)[0])
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text()
        assert secret not in line
        basic = base64.b64encode(f"dev:{secret}".encode()).decode()
        body = httpx.post(url + "/token", data={"grant_type": "client_credentials"},
                          headers={"Authorization": f"Basic {basic}"}).json()
        claims = jwt.decode(body["access_token"], options={"verify_signature": False})
        assert (claims["sub"], claims["team"], claims["exp"] - claims["iat"]) == ("dev", "ml", 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert not secret_file.exists(), "the secret file is removed on exit"
    assert secret not in out + err
