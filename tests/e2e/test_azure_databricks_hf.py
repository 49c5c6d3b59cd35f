"""Reference IdP → client_credentials source → Azure (azure-identity), Databricks
(databricks-sdk), Hugging Face / RFC 8693 exchanges → verifying loopback token servers."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from typing import Any

import pytest

from keyless import Keyless, TokenRejected
from tests.e2e.conftest import LeakGuard
from tests.support.idp import ReferenceIdP
from tests.support.token_servers import DatabricksLike, EntraLike, Rfc8693Server

pytestmark = pytest.mark.e2e


def _source(idp: ReferenceIdP, client_id: str = "trainer") -> dict[str, Any]:
    return {"type": "client_credentials", "token_url": idp.token_url, "client_id": client_id,
            "client_secret": idp.client_secrets[client_id]}


# ----------------------------------------------------------------------------- Azure

def _azure(idp: ReferenceIdP, entra: EntraLike, client_id: str = "trainer",
           audience: str | None = None) -> Keyless:
    target: dict[str, Any] = {"tenant_id": "tenant-1", "client_id": "app-1",
                              "authority_host": entra.url}
    if audience:
        target["audience"] = audience
    return Keyless({"source": _source(idp, client_id), "target": {"azure": target},
                    "allow_insecure_http": True})


def test_azure_credential_one_exchange_for_many_calls_and_threads(
        reference_idp: ReferenceIdP, entra_server: EntraLike, leak_guard: LeakGuard) -> None:
    identity = _azure(reference_idp, entra_server)
    credential = identity.azure_credential(connection_verify=entra_server.ca_file,
                                           retry_total=0)
    barrier = threading.Barrier(16)
    tokens: list[str] = []

    def worker() -> None:
        barrier.wait()
        for _ in range(5):
            tokens.append(credential.get_token("https://storage.azure.com/.default").token)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert entra_server.exchanges == 1 and len(set(tokens)) == 1
    assert tokens[0] in entra_server.issued
    info = credential.get_token_info("https://storage.azure.com/.default")
    assert info.token == tokens[0] and entra_server.exchanges == 1
    assert entra_server.scopes == ["https://storage.azure.com/.default"]

    # a real Azure SDK pipeline: azure-core's bearer policy against the fixture's API
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy
    from azure.core.pipeline.transport import RequestsTransport

    client = PipelineClient(entra_server.url, policies=[BearerTokenCredentialPolicy(
        credential, "https://storage.azure.com/.default")],
        transport=RequestsTransport(connection_verify=entra_server.ca_file))
    response = client.send_request(client.get("/api/me"))
    assert response.status_code == 200 and json.loads(response.text()) == {"appId": "trainer"}
    assert entra_server.exchanges == 1
    leak_guard.forbid(*entra_server.issued, identity.token("api://AzureADTokenExchange"))
    leak_guard.add(repr(credential), repr(identity))


def test_azure_refreshes_once_per_lifetime(reference_idp: ReferenceIdP,
                                           entra_server: EntraLike,
                                           leak_guard: LeakGuard) -> None:
    entra_server.expires_in = 3600
    identity = _azure(reference_idp, entra_server)
    credential = identity.azure_credential(connection_verify=entra_server.ca_file)
    first = credential.get_token("api://x/.default")
    refresher = next(iter(credential._refreshers.values()))
    for _ in range(50):
        credential.get_token("api://x/.default")
    assert entra_server.exchanges == 1
    refresher.refresh_now()  # what the schedule does at its refresh point: one new exchange
    second = credential.get_token("api://x/.default")
    assert entra_server.exchanges == 2 and second.token != first.token
    leak_guard.forbid(*entra_server.issued)


@pytest.mark.parametrize(("client_id", "audience", "claim"), [
    ("trainer", "https://not-azure.example", "aud"),
    ("intruder", None, "sub"),
])
def test_azure_refusals_are_typed(reference_idp: ReferenceIdP, entra_server: EntraLike,
                                  leak_guard: LeakGuard, client_id: str,
                                  audience: str | None, claim: str) -> None:
    identity = _azure(reference_idp, entra_server, client_id, audience)
    credential = identity.azure_credential(connection_verify=entra_server.ca_file,
                                           retry_total=0)
    with pytest.raises(TokenRejected) as info:
        credential.get_token("api://x/.default")
    assert info.value.claim == claim and "fix:" in str(info.value)
    assert entra_server.refusals == [claim]
    leak_guard.add(str(info.value), repr(info.value))


# ----------------------------------------------------------------------------- Databricks

def _databricks(idp: ReferenceIdP, server: DatabricksLike, client_id: str = "trainer",
                audience: str | None = None) -> Keyless:
    target: dict[str, Any] = {"host": server.url, "client_id": server.client_id}
    if audience:
        target["audience"] = audience
    return Keyless({"source": _source(idp, client_id), "target": {"databricks": target},
                    "allow_insecure_http": True})


def test_databricks_workspace_client_me(reference_idp: ReferenceIdP,
                                        databricks_server: DatabricksLike,
                                        leak_guard: LeakGuard) -> None:
    from databricks.sdk import WorkspaceClient

    identity = _databricks(reference_idp, databricks_server)
    client = WorkspaceClient(config=identity.databricks_config(disable_async_token_refresh=True))
    for _ in range(10):
        me = client.current_user.me()
    assert me.user_name == "sp-keyless" and me.display_name == "federated:trainer"
    assert databricks_server.exchanges == 1 and databricks_server.api_calls == 10
    assert identity.databricks().exchanges == 1
    leak_guard.forbid(*databricks_server.issued)
    leak_guard.add(repr(identity.databricks()))


def test_databricks_refreshes_after_expiry(reference_idp: ReferenceIdP,
                                           databricks_server: DatabricksLike,
                                           leak_guard: LeakGuard) -> None:
    # databricks-sdk treats a token as expired 40 s before its expiry and, with blocking
    # refresh, exchanges only then: 44 s leaves 4 s of validity
    databricks_server.expires_in = 44
    identity = _databricks(reference_idp, databricks_server)
    config = identity.databricks_config(disable_async_token_refresh=True)
    first = config.oauth_token()
    for _ in range(20):
        assert config.oauth_token().access_token == first.access_token
    assert databricks_server.exchanges == 1
    while first.valid:  # wait for a condition, not a time
        time.sleep(0.1)
    second = config.oauth_token()
    third = config.oauth_token()
    assert databricks_server.exchanges == 2
    assert second.access_token == third.access_token != first.access_token
    leak_guard.forbid(*databricks_server.issued)


def test_databricks_wrong_audience_is_typed(reference_idp: ReferenceIdP,
                                            databricks_server: DatabricksLike,
                                            leak_guard: LeakGuard) -> None:
    identity = _databricks(reference_idp, databricks_server, audience="https://other.example")
    with pytest.raises(TokenRejected) as info:
        identity.databricks_config(disable_async_token_refresh=True).oauth_token()
    assert info.value.claim == "aud" and "fix:" in str(info.value)
    leak_guard.add(str(info.value))


# ----------------------------------------------------------------------------- HF / RFC 8693

def test_huggingface_token_for_hfapi_and_file_delivery(reference_idp: ReferenceIdP,
                                                       rfc8693_server: Rfc8693Server,
                                                       leak_guard: LeakGuard) -> None:
    from huggingface_hub import HfApi

    from keyless.delivery import worker_environment

    identity = Keyless({"source": _source(reference_idp), "allow_insecure_http": True,
                        "target": {"huggingface": {
                            "resource": "keyless/model",
                            "token_url": f"{rfc8693_server.url}/oauth/token"}}})
    token = identity.huggingface_token()
    assert token.startswith("hf_jwt_") and token in rfc8693_server.issued
    assert HfApi(endpoint=rfc8693_server.url, token=identity.huggingface_token()
                 ).whoami()["name"] == "trainer"
    assert rfc8693_server.exchanges == 1
    request = rfc8693_server.requests[0]
    assert request["resource"] == "keyless/model" and "audience" not in request
    with worker_environment(identity) as env:
        path = env["HF_TOKEN_PATH"]
        assert open(path).read() == token
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert all(token not in value for value in env.values())
        assert "HF_TOKEN" not in env
    assert rfc8693_server.exchanges == 1
    leak_guard.forbid(token)
    leak_guard.add(env, repr(identity.huggingface()), repr(identity.huggingface().exchanged()))


def test_oauth2_exchange_and_wrong_audience(reference_idp: ReferenceIdP,
                                            rfc8693_server: Rfc8693Server,
                                            leak_guard: LeakGuard) -> None:
    def config(audience: str) -> dict[str, Any]:
        return {"source": _source(reference_idp), "allow_insecure_http": True,
                "target": {"oauth2": {"token_url": f"{rfc8693_server.url}/token",
                                      "audience": audience, "scope": "read"}}}

    identity = Keyless(config("https://sts.example.test"))
    tokens = {identity.oauth2_token() for _ in range(20)}
    assert len(tokens) == 1 and rfc8693_server.exchanges == 1
    assert rfc8693_server.requests[0]["audience"] == "https://sts.example.test"
    assert rfc8693_server.requests[0]["scope"] == "read"

    wrong = Keyless(config("https://elsewhere.example.test"))
    with pytest.raises(TokenRejected) as info:
        wrong.oauth2_token()
    assert info.value.claim == "aud" and rfc8693_server.refusals == ["aud"]
    assert "fix:" in str(info.value)
    leak_guard.forbid(*tokens)
    leak_guard.add(str(info.value), repr(info.value))
