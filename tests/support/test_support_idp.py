"""Tests of the test fixtures themselves: the reference IdP and the fault proxy."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.support.faults import FaultProxy
from tests.support.idp import IdpClient, IdpError, ReferenceIdP

# The `reference_idp` fixture comes from tests/conftest.py (pytest_plugins = tests.support.idp).

STS = "https://sts.amazonaws.com"
API = "https://api.example.test/v1"


def _claims(idp: ReferenceIdP, token: str, audience: str) -> dict[str, Any]:
    """Verify ``token`` against the IdP's JWKS (signature, iss, aud, exp) and return its claims."""
    key = jwt.PyJWKClient(idp.jwks_url).get_signing_key_from_jwt(token)
    claims: dict[str, Any] = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=audience,
        issuer=idp.issuer,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]},
    )
    return claims


def _post_token(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, timeout=10, **kwargs)


# -- the reference IdP -----------------------------------------------------------------------


def test_discovery_issuer_and_endpoints(reference_idp: ReferenceIdP) -> None:
    doc = httpx.get(reference_idp.discovery_url, timeout=10).json()
    assert doc["issuer"] == reference_idp.issuer
    assert reference_idp.issuer.startswith("http://127.0.0.1:")
    assert doc["token_endpoint"] == reference_idp.token_url
    assert doc["jwks_uri"] == reference_idp.jwks_url
    assert "client_credentials" in doc["grant_types_supported"]
    keys = httpx.get(reference_idp.jwks_url, timeout=10).json()["keys"]
    assert [k["kty"] for k in keys] == ["RSA"]
    assert all("d" not in k for k in keys)  # public keys only


def test_trainer_token_verifies_with_claims(reference_idp: ReferenceIdP) -> None:
    secret = reference_idp.client_secrets["trainer"]
    response = _post_token(
        reference_idp.token_url,
        data={"grant_type": "client_credentials", "resource": API},
        auth=("trainer", secret),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    claims = _claims(reference_idp, token, API)
    assert claims["sub"] == "trainer"
    assert claims["aud"] == API
    assert claims["iss"] == reference_idp.issuer
    assert claims["job"] == "train"
    assert claims["exp"] - claims["iat"] == 300
    assert body["expires_in"] == 300


def test_audience_alias_gives_bare_sts_audience(reference_idp: ReferenceIdP) -> None:
    token = reference_idp.issue("trainer", STS)
    claims = _claims(reference_idp, token, "sts.amazonaws.com")
    assert claims["aud"] == "sts.amazonaws.com"
    with pytest.raises(jwt.InvalidAudienceError):
        _claims(reference_idp, token, STS)


def test_non_absolute_resource_is_rejected(reference_idp: ReferenceIdP) -> None:
    with pytest.raises(IdpError, match="invalid_target"):
        reference_idp.issue("trainer", "sts.amazonaws.com")


def test_without_resource_the_token_is_opaque(reference_idp: ReferenceIdP) -> None:
    token = reference_idp.issue("trainer")
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)


def test_shortlived_ttl_and_other_subjects(reference_idp: ReferenceIdP) -> None:
    claims = _claims(reference_idp, reference_idp.issue("shortlived", API), API)
    assert claims["exp"] - claims["iat"] == 8
    assert claims["sub"] == "shortlived"
    intruder = _claims(reference_idp, reference_idp.issue("intruder", API), API)
    assert intruder["sub"] == "intruder"
    assert "job" not in intruder


def test_token_request_counter_counts_each_call(reference_idp: ReferenceIdP) -> None:
    before = reference_idp.token_requests()
    reference_idp.issue("trainer", API)
    assert reference_idp.token_requests() == before + 1
    bad = _post_token(
        reference_idp.token_url,
        data={"grant_type": "client_credentials", "resource": API},
        auth=("trainer", "wrong-secret"),
    )
    assert bad.status_code == 401
    assert bad.json()["error"] == "invalid_client"
    assert reference_idp.token_requests() == before + 2  # failed calls count too


def test_secrets_are_random_and_not_in_tokens(reference_idp: ReferenceIdP) -> None:
    secrets = reference_idp.client_secrets
    assert set(secrets) == {"trainer", "intruder", "shortlived", "post-client"}
    assert len(set(secrets.values())) == len(secrets)
    token = reference_idp.issue("trainer", API)
    payload = base64.urlsafe_b64decode(token.split(".")[1] + "==").decode()
    assert all(secret not in payload for secret in secrets.values())


def test_post_client_authenticates_in_body(reference_idp: ReferenceIdP) -> None:
    secret = reference_idp.client_secrets["post-client"]
    data = {"grant_type": "client_credentials", "resource": API}
    before = reference_idp.auth_methods("post-client")
    response = _post_token(
        reference_idp.token_url,
        data={**data, "client_id": "post-client", "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    assert _claims(reference_idp, response.json()["access_token"], API)["sub"] == "post-client"
    wrong = _post_token(
        reference_idp.token_url,
        data={**data, "client_id": "post-client", "client_secret": secret + "x"},
    )
    assert wrong.status_code == 401
    # oidc-provider 9 also takes Basic for a post client; the stats tell which one was used
    basic = _post_token(reference_idp.token_url, data=data, auth=("post-client", secret))
    assert basic.status_code == 200
    after = reference_idp.auth_methods("post-client")
    assert after.get("client_secret_post", 0) == before.get("client_secret_post", 0) + 1
    assert after.get("client_secret_basic", 0) == before.get("client_secret_basic", 0) + 1


def test_jwt_client_cannot_use_a_secret(reference_idp: ReferenceIdP) -> None:
    response = _post_token(
        reference_idp.token_url,
        data={"grant_type": "client_credentials", "resource": API},
        auth=("jwt-client", reference_idp.client_secrets["trainer"]),
    )
    assert response.status_code == 401


def test_jwt_client_authenticates_with_rfc7523_assertion(reference_idp: ReferenceIdP) -> None:
    pem = reference_idp.client_private_keys["jwt-client"]
    now = int(time.time())
    assertion = jwt.encode(
        {
            "iss": "jwt-client",
            "sub": "jwt-client",
            "aud": reference_idp.token_url,
            "jti": uuid.uuid4().hex,
            "iat": now,
            "exp": now + 60,
        },
        pem,
        algorithm="RS256",
        headers={"kid": "jwt-client-key"},
    )
    data = {
        "grant_type": "client_credentials",
        "resource": API,
        "client_id": "jwt-client",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    }
    response = _post_token(reference_idp.token_url, data={**data, "client_assertion": assertion})
    assert response.status_code == 200, response.text
    assert _claims(reference_idp, response.json()["access_token"], API)["sub"] == "jwt-client"
    assert reference_idp.auth_methods("jwt-client").get("private_key_jwt", 0) >= 1
    # the IdP really checks: a replayed assertion (same jti) and a forged one are refused
    replay = _post_token(reference_idp.token_url, data={**data, "client_assertion": assertion})
    assert replay.status_code == 401
    forged = jwt.encode({"iss": "jwt-client"}, "x" * 32, algorithm="HS256")
    refused = _post_token(reference_idp.token_url, data={**data, "client_assertion": forged})
    assert refused.status_code == 401
    # and the fixture's own helper path works
    assert _claims(reference_idp, reference_idp.issue("jwt-client", API), API)["sub"] == (
        "jwt-client"
    )


def test_missing_node_modules_message(tmp_path: Path) -> None:
    with pytest.raises(IdpError, match=r"npm ci --prefix tests/support/idp"):
        ReferenceIdP([IdpClient("a")], idp_dir=tmp_path).start()


def test_private_key_jwt_client_needs_public_jwk() -> None:
    with pytest.raises(IdpError, match="public_jwk"):
        ReferenceIdP([IdpClient("k", auth_method="private_key_jwt")])


# -- the fault proxy -------------------------------------------------------------------------


@pytest.fixture
def proxy(reference_idp: ReferenceIdP) -> Iterator[FaultProxy]:
    with FaultProxy(reference_idp.issuer) as p:
        yield p


def test_proxy_passes_through_faithfully(reference_idp: ReferenceIdP, proxy: FaultProxy) -> None:
    before = reference_idp.token_requests()
    token_url = proxy.rewrite(reference_idp.token_url)
    assert token_url == f"{proxy.url}/token"
    token = reference_idp.issue("trainer", API, token_url=token_url)
    claims = _claims(reference_idp, token, API)
    assert claims["sub"] == "trainer"
    assert claims["iss"] == reference_idp.issuer  # the issuer is still the IdP's own URL
    assert reference_idp.token_requests() == before + 1
    assert proxy.requests == 1
    # status, headers and body come back as the IdP sent them; query strings are kept
    direct = httpx.get(reference_idp.discovery_url, timeout=10)
    proxied = httpx.get(proxy.rewrite(reference_idp.discovery_url) + "?x=1", timeout=10)
    assert proxied.status_code == 200
    assert proxied.json() == direct.json()
    assert proxied.headers["content-type"] == direct.headers["content-type"]
    assert "date" in proxied.headers
    bad = httpx.post(token_url, data={"grant_type": "client_credentials"}, timeout=10)
    assert bad.status_code == 400 or bad.status_code == 401
    assert bad.json()["error"] in ("invalid_request", "invalid_client")
    assert proxy.requests == 3 and proxy.forwarded == 3


def test_proxy_fails_n_times_then_recovers(reference_idp: ReferenceIdP, proxy: FaultProxy) -> None:
    token_url = proxy.rewrite(reference_idp.token_url)
    before = reference_idp.token_requests()
    proxy.fail_with(503, count=2)
    for _ in range(2):
        with pytest.raises(IdpError, match="HTTP 503"):
            reference_idp.issue("trainer", API, token_url=token_url)
    assert reference_idp.token_requests() == before  # failures never reached the IdP
    assert reference_idp.issue("trainer", API, token_url=token_url)
    assert reference_idp.token_requests() == before + 1
    assert proxy.requests == 3 and proxy.forwarded == 1
    proxy.fail_with(500)  # until changed
    for _ in range(3):
        assert httpx.get(proxy.url + "/jwks", timeout=10).status_code == 500
    proxy.passthrough()
    assert httpx.get(proxy.url + "/jwks", timeout=10).status_code == 200


def test_proxy_hang_triggers_client_timeout_and_releases(
    reference_idp: ReferenceIdP, proxy: FaultProxy
) -> None:
    proxy.hang(120)
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(proxy.url + "/jwks", timeout=httpx.Timeout(10, read=0.5))
    assert proxy.requests == 1
    proxy.passthrough()  # releases the held request; new ones flow again
    assert httpx.get(proxy.url + "/jwks", timeout=10).status_code == 200


def test_proxy_stop_releases_hanging_requests(reference_idp: ReferenceIdP) -> None:
    with FaultProxy(reference_idp.issuer) as proxy:
        proxy.hang(600)
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(proxy.url + "/jwks", timeout=httpx.Timeout(10, read=0.2))
    # leaving the context returned although a handler was held for 600 s
    assert proxy.requests == 1


def test_token_request_body_is_json_error_on_fault(proxy: FaultProxy) -> None:
    proxy.fail_with(429, count=1)
    response = httpx.post(proxy.url + "/token", data={"a": "b"}, timeout=10)
    assert response.status_code == 429
    assert json.loads(response.content)["error"] == "temporarily_unavailable"
