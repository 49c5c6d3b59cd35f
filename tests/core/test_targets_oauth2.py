"""RFC 8693 / Hugging Face exchange (targets/oauth2.py) and the Azure/Databricks error mapping,
with a fake clock and httpx.MockTransport (no network)."""

from __future__ import annotations

import json
import random
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from keyless import Keyless
from keyless.audit import AuditLog, MemorySink
from keyless.clock import FakeClock
from keyless.config import AzureTarget
from keyless.context import WorkerContext
from keyless.errors import ExchangeFailed, TokenRejected
from keyless.refresher import RefreshPolicy
from keyless.targets.oauth2 import ID_TOKEN_TYPE, TokenExchange, claim_at_fault, origin
from keyless.tokens import SubjectToken
from tests.core.helpers import Recorder, make_jwt

NOW = 1_700_000_000.0


def _exchange(recorder: Recorder, clock: FakeClock, *, body: Any = "form",
              sink: MemorySink | None = None, **kwargs: Any) -> tuple[TokenExchange, list[str]]:
    asked: list[str] = []

    def tokens(audience: str) -> SubjectToken:
        asked.append(audience)
        return SubjectToken.from_jwt(make_jwt(3600, now=clock.time(), aud=audience), "test")

    exchange = TokenExchange(
        name="oauth2", token_url="https://sts.example.test/token",
        subject_audience="https://sts.example.test", tokens=tokens, http=recorder.http,
        clock=clock, policy=RefreshPolicy(jitter_fraction=0.0), rng=random.Random(1),
        audit=AuditLog([sink or MemorySink()], clock=clock), source_name="file",
        context=WorkerContext(rank="0"), body=body, **kwargs)
    return exchange, asked


def _ok(expires_in: Any = 600) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        n = len(recorder.requests)
        return httpx.Response(200, json={"access_token": f"exchanged-{n}",
                                         "token_type": "Bearer", "expires_in": expires_in})

    recorder = Recorder(respond)
    return recorder


def test_one_exchange_per_refresh_point_and_form_fields() -> None:
    clock = FakeClock(NOW)
    recorder = _ok(600)
    exchange, asked = _exchange(recorder, clock, audience="api://x", resource="urn:r",
                                scope="read")
    assert {exchange.token() for _ in range(100)} == {"exchanged-1"}
    assert len(recorder.requests) == 1 and asked == ["https://sts.example.test"]
    form = dict(parse_qsl(recorder.requests[0].content.decode()))
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"
    assert (form["audience"], form["resource"], form["scope"]) == ("api://x", "urn:r", "read")
    clock.advance(299)
    assert exchange.token() == "exchanged-1"
    clock.advance(2)  # past half of the 600 s lifetime
    assert exchange.token() == "exchanged-2" and len(recorder.requests) == 2
    assert exchange.exchanged().expires_at == NOW + 301 + 600


def test_huggingface_body_is_json_with_id_token_type() -> None:
    clock = FakeClock(NOW)
    recorder = _ok(3600)
    exchange, _ = _exchange(recorder, clock, body="json", resource="org/model",
                            subject_token_type=ID_TOKEN_TYPE)
    exchange.token()
    sent = json.loads(recorder.requests[0].content)
    assert sent["subject_token_type"] == ID_TOKEN_TYPE and sent["resource"] == "org/model"
    assert "audience" not in sent and sent["subject_token"].count(".") == 2
    assert origin("https://huggingface.co/oauth/token") == "https://huggingface.co"
    assert origin("http://127.0.0.1:8080/oauth/token") == "http://127.0.0.1:8080"


def test_missing_expires_in_falls_back_to_the_subject_token_expiry() -> None:
    clock = FakeClock(NOW)
    exchange, _ = _exchange(_ok(None), clock)
    assert exchange.exchanged().expires_at == NOW + 3600


def _refusing(status: int, body: dict[str, Any]) -> Recorder:
    return Recorder(lambda request: httpx.Response(status, json=body))


def test_wrong_audience_is_token_rejected_naming_aud_without_the_token() -> None:
    clock = FakeClock(NOW)
    sink = MemorySink()
    exchange, _ = _exchange(_refusing(400, {
        "error": "invalid_grant",
        "error_description": "audience 'https://x' is not accepted"}), clock, sink=sink)
    with pytest.raises(TokenRejected) as info:
        exchange.token()
    assert info.value.claim == "aud" and not info.value.retryable
    assert "fix:" in str(info.value) and "target.oauth2.audience" in str(info.value)
    assert [e.kind for e in sink.events] == ["failure"]


def test_server_errors_are_retryable_and_other_refusals_not() -> None:
    clock = FakeClock(NOW)
    exchange, _ = _exchange(_refusing(503, {}), clock)
    with pytest.raises(ExchangeFailed) as info:
        exchange.token()
    assert info.value.retryable
    exchange, _ = _exchange(_refusing(400, {"error": "invalid_target"}), clock)
    with pytest.raises(ExchangeFailed) as refused:
        exchange.token()
    assert not refused.value.retryable and not isinstance(refused.value, TokenRejected)
    assert "invalid_target" in str(refused.value)


def test_an_echoed_token_is_scrubbed_from_the_message() -> None:
    clock = FakeClock(NOW)

    def respond(request: httpx.Request) -> httpx.Response:
        subject = dict(parse_qsl(request.content.decode()))["subject_token"]
        return httpx.Response(400, json={"error": "invalid_grant",
                                         "error_description": f"bad token {subject}"})

    recorder = Recorder(respond)
    exchange, _ = _exchange(recorder, clock)
    with pytest.raises(TokenRejected) as info:
        exchange.token()
    sent = dict(parse_qsl(recorder.requests[0].content.decode()))["subject_token"]
    assert sent not in str(info.value) and "[redacted]" in str(info.value)


def test_transport_failure_is_retryable() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    exchange, _ = _exchange(Recorder(respond), FakeClock(NOW))
    with pytest.raises(ExchangeFailed) as info:
        exchange.token()
    assert info.value.retryable


@pytest.mark.parametrize(("text", "claim"), [
    ("audience 'x' is not accepted", "aud"), ("the token is expired", "exp"),
    ("no federation trusts issuer 'x'", "iss"), ("sub claim 'x' is not trusted", "sub"),
    ("signature does not verify", "signature"), ("something else", None),
])
def test_claim_at_fault(text: str, claim: str | None) -> None:
    assert claim_at_fault(text) == claim


@pytest.mark.parametrize(("code", "claim"), [("700211", "iss"), ("700212", "aud"),
                                             ("700213", "sub"), ("700024", "exp"),
                                             ("50013", "signature")])
def test_azure_aadsts_codes_map_to_claims(code: str, claim: str) -> None:
    from azure.core.exceptions import ClientAuthenticationError

    from keyless.targets.azure import translate_azure_error

    target = AzureTarget(tenant_id="t", client_id="c")
    # Entra's subject message also names Audience and Issuer: the code decides, not the words
    error = translate_azure_error(ClientAuthenticationError(
        message=f"Microsoft Entra ID error '(invalid_client) AADSTS{code}: check your "
                "federated identity credential Subject, Audience and Issuer'"),
        token=None, target=target)
    assert isinstance(error, TokenRejected) and error.claim == claim


def test_keyless_methods_and_delivery_variables(tmp_path: Any) -> None:
    from keyless.delivery import delivery_audiences, sdk_environment

    token_file = tmp_path / "t"
    token_file.write_text(make_jwt(3600))
    identity = Keyless({"source": {"type": "file", "path": str(token_file)}, "target": {
        "azure": {"tenant_id": "t1", "client_id": "c1",
                  "authority_host": "https://login.example"},
        "databricks": {"host": "https://dbc.example", "client_id": "sp"},
        "huggingface": {"resource": "org/model"}}})
    audiences = delivery_audiences(identity)
    assert audiences == ["api://AzureADTokenExchange", "https://dbc.example/oidc/v1/token",
                         "https://huggingface.co"]
    files = {a: tmp_path / f"{i}.jwt" for i, a in enumerate(audiences)}
    files["keyless:huggingface-token"] = tmp_path / "hf"
    env = sdk_environment(identity, files)
    assert env["AZURE_FEDERATED_TOKEN_FILE"] == str(files["api://AzureADTokenExchange"])
    assert (env["AZURE_CLIENT_ID"], env["AZURE_TENANT_ID"]) == ("c1", "t1")
    assert env["AZURE_AUTHORITY_HOST"] == "https://login.example"
    assert env["DATABRICKS_AUTH_TYPE"] == "file-oidc"
    assert env["DATABRICKS_HOST"] == "https://dbc.example"
    assert env["DATABRICKS_CLIENT_ID"] == "sp"
    assert env["HF_TOKEN_PATH"] == str(tmp_path / "hf") and "HF_TOKEN" not in env
