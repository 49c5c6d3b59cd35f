"""The loopback Azure managed-identity endpoint (core/src/keyless/delivery/azure_endpoint.py).

The credential behind the endpoint is an in-test fake that records the scopes it was asked
for (the exchange itself is tested end to end in tests/e2e/test_azure_endpoint.py); clients
are plain HTTP and azure-identity's own ``ManagedIdentityCredential``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless import ConfigError, Keyless
from keyless.audit import AuditLog, MemorySink
from keyless.delivery.azure_endpoint import TOKEN_PATH, AzureEndpoint, uses_azure_endpoint
from keyless.delivery.child import child_environment
from keyless.errors import TokenRejected
from keyless.verify.doctor import azure_file_problem
from tests.core.helpers import assert_clean, make_jwt

AZURE = {"tenant_id": "tenant-1", "client_id": "app-1"}
STORAGE = "https://storage.azure.com"


@dataclass
class Info:
    token: str
    expires_on: int


class FakeCredential:
    """Hands out numbered tokens; ``rotate()`` makes the next ask get a new one; ``fail``
    makes every ask raise it. Records every scope asked for."""

    def __init__(self) -> None:
        self.scopes: list[str] = []
        self.generation = 1
        self.fail: BaseException | None = None
        self._lock = threading.Lock()

    def rotate(self) -> None:
        self.generation += 1

    def get_token_info(self, *scopes: str, options: Any = None) -> Info:
        with self._lock:
            self.scopes.extend(scopes)
        if self.fail is not None:
            raise self.fail
        return Info(f"access-{scopes[0]}-{self.generation}", int(time.time()) + 3600)


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()


def _identity(tmp_path: Path, sink: MemorySink, **delivery: str) -> Keyless:
    token_file = tmp_path / "subject.jwt"
    token_file.write_text(make_jwt(aud="api://AzureADTokenExchange"))
    config: dict[str, Any] = {"source": {"type": "file", "path": str(token_file)},
                              "target": {"azure": dict(AZURE)}}
    if delivery:
        config["delivery"] = delivery
    return Keyless(config, environ={}, audit=AuditLog([sink]))


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def endpoint(tmp_path: Path, sink: MemorySink,
             credential: FakeCredential) -> Iterator[AzureEndpoint]:
    with AzureEndpoint(_identity(tmp_path, sink), credential=credential) as served:
        yield served


def _get(endpoint: AzureEndpoint, header: str | None = "default", **params: str,
         ) -> httpx.Response:
    headers = {"Metadata": "true"}
    if header is not None:
        headers["X-IDENTITY-HEADER"] = endpoint.env()["IDENTITY_HEADER"] \
            if header == "default" else header
    return httpx.get(endpoint.url, params={"api-version": "2019-08-01", **params},
                     headers=headers)


def test_serves_the_app_service_document_per_resource(endpoint: AzureEndpoint,
                                                      credential: FakeCredential,
                                                      sink: MemorySink) -> None:
    answer = _get(endpoint, resource=STORAGE)
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json()
    assert body == {"access_token": f"access-{STORAGE}/.default-1",
                    "expires_on": body["expires_on"], "resource": STORAGE,
                    "token_type": "Bearer", "client_id": "app-1"}
    assert isinstance(body["expires_on"], str) and int(body["expires_on"]) > time.time()
    assert _get(endpoint, resource="api://other", client_id="app-1").status_code == 200
    assert credential.scopes == [STORAGE + "/.default", "api://other/.default"]
    # one audit event per token served (by fingerprint), not per request
    for _ in range(3):
        _get(endpoint, resource=STORAGE)
    credential.rotate()
    _get(endpoint, resource=STORAGE)
    served = [e for e in sink.events if e.target == "azure-endpoint"]
    assert [e.aud for e in served] == [(STORAGE,), ("api://other",), (STORAGE,)]
    assert all(e.kind == "issue" and e.principal == "app-1" and e.token_sha256
               for e in served)
    assert endpoint.served_tokens == 3
    assert_clean(repr(sink.events), f"access-{STORAGE}/.default-1")


@pytest.mark.parametrize(("header", "params", "status"), [
    (None, {"resource": STORAGE}, 401),
    ("wrong", {"resource": STORAGE}, 403),
    ("default", {}, 400),
    ("default", {"resource": STORAGE, "client_id": "someone-else"}, 400),
    ("default", {"resource": STORAGE, "object_id": "0000"}, 400),
    ("default", {"resource": STORAGE, "mi_res_id": "/subscriptions/x"}, 400),
])
def test_refusals(endpoint: AzureEndpoint, credential: FakeCredential, header: str | None,
                  params: dict[str, str], status: int) -> None:
    answer = _get(endpoint, header, **params)
    assert answer.status_code == status
    body = answer.json()
    assert body["statusCode"] == status and body["message"].startswith("azure-endpoint: ")
    assert credential.scopes == []  # nothing was asked of Entra
    assert_clean(answer.text, endpoint.env()["IDENTITY_HEADER"])


def test_only_the_token_path(endpoint: AzureEndpoint) -> None:
    url = endpoint.url.removesuffix(TOKEN_PATH) + "/metadata/identity/oauth2/token"
    answer = httpx.get(url, headers={"X-IDENTITY-HEADER": endpoint.env()["IDENTITY_HEADER"]})
    assert answer.status_code == 404


def test_errors_carry_keyless_messages_or_a_type_name(
        endpoint: AzureEndpoint, credential: FakeCredential,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="keyless")
    credential.fail = TokenRejected("azure: Entra refused the assertion; fix: rotate",
                                    claim="exp")
    answer = _get(endpoint, resource=STORAGE)
    assert answer.status_code == 500 and "Entra refused" in answer.json()["message"]
    credential.fail = RuntimeError("secret-in-a-vendor-message")
    answer = _get(endpoint, resource=STORAGE)
    assert answer.status_code == 500 and "RuntimeError" in answer.json()["message"]
    assert_clean(answer.text + caplog.text, "secret-in-a-vendor-message",
                 endpoint.env()["IDENTITY_HEADER"])


def test_binds_loopback_only_and_needs_an_azure_target(tmp_path: Path,
                                                       sink: MemorySink) -> None:
    with pytest.raises(ConfigError) as bind:
        AzureEndpoint(_identity(tmp_path, sink), host="0.0.0.0")
    assert bind.value.field == "host"
    aws = Keyless({"source": {"type": "env"}, "target": {"aws": {
        "role_arn": "arn:aws:iam::123456789012:role/x"}}}, environ={})
    with pytest.raises(ConfigError) as missing:
        AzureEndpoint(aws)
    assert missing.value.field == "target.azure"


def test_repr_and_env_name_no_secret_but_the_documented_header(
        endpoint: AzureEndpoint) -> None:
    env = endpoint.env()
    assert set(env) == {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID",
                        "AZURE_TENANT_ID"}
    assert env["IDENTITY_ENDPOINT"].startswith("http://127.0.0.1:")
    assert len(env["IDENTITY_HEADER"]) >= 32
    assert_clean(repr(endpoint), env["IDENTITY_HEADER"])


def test_managed_identity_credential_reads_it(endpoint: AzureEndpoint,
                                              credential: FakeCredential,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """azure-identity's own client, as DefaultAzureCredential builds it from AZURE_CLIENT_ID."""
    from azure.identity import ManagedIdentityCredential

    for name, value in endpoint.env().items():
        monkeypatch.setenv(name, value)
    mi = ManagedIdentityCredential(client_id="app-1")
    first = mi.get_token(STORAGE + "/.default")
    assert first.token == f"access-{STORAGE}/.default-1"
    assert first.expires_on > time.time() + 3000
    assert mi.get_token("api://x/.default").token == "access-api://x/.default-1"
    assert credential.scopes == [STORAGE + "/.default", "api://x/.default"]


def test_child_environment_serves_azure_through_the_endpoint(tmp_path: Path,
                                                             sink: MemorySink) -> None:
    identity = _identity(tmp_path, sink)
    assert uses_azure_endpoint(identity)
    parent = {"PATH": "/usr/bin", "AZURE_FEDERATED_TOKEN_FILE": "/decoy.jwt",
              "AZURE_CLIENT_SECRET": "decoy", "IDENTITY_SERVER_THUMBPRINT": "decoy",
              "MSI_ENDPOINT": "http://decoy", "MSI_SECRET": "decoy"}
    with child_environment(identity, environ=parent) as child:
        env = child.env
        url = env["IDENTITY_ENDPOINT"]
        assert httpx.get(url, params={"resource": STORAGE}).status_code == 401
    assert env["PATH"] == "/usr/bin" and env["AZURE_CLIENT_ID"] == "app-1"
    for name in ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_SECRET",
                 "IDENTITY_SERVER_THUMBPRINT", "MSI_ENDPOINT", "MSI_SECRET"):
        assert name not in env
    assert "IDENTITY_HEADER" in env and "KEYLESS_LAUNCH_ID" in env
    with pytest.raises(httpx.ConnectError):  # stopped with the with-body
        httpx.get(url, params={"resource": STORAGE})


def test_token_file_delivery_keeps_the_old_variables(tmp_path: Path, sink: MemorySink) -> None:
    identity = _identity(tmp_path, sink, azure="token_file")
    assert not uses_azure_endpoint(identity)
    with child_environment(identity, environ={}) as child:
        env = dict(child.env)
        assert Path(env["AZURE_FEDERATED_TOKEN_FILE"]).read_text().count(".") == 2
    assert "IDENTITY_ENDPOINT" not in env and "IDENTITY_HEADER" not in env
    with pytest.raises(ConfigError) as bad:
        Keyless({"source": {"type": "env"}, "target": {"azure": AZURE},
                 "delivery": {"azure": "imds"}})
    assert bad.value.field == "delivery.azure"


def test_doctor_warns_about_the_file_with_short_subject_tokens(tmp_path: Path,
                                                               sink: MemorySink) -> None:
    filed = _identity(tmp_path, sink, azure="token_file")
    problem = azure_file_problem(filed, 300)
    assert problem is not None
    assert "600 s" in problem and "delivery.azure: endpoint" in problem
    assert azure_file_problem(filed, 3600) is None
    assert azure_file_problem(_identity(tmp_path, sink), 300) is None  # the endpoint
    assert azure_file_problem(None, 300) is None
