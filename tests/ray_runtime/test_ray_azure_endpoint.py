"""keyless_ray.bootstrap serves a Ray worker process its Azure tokens on a loopback
managed-identity endpoint (issue 20), without a cluster: the worker manifest the agent writes,
then what ``sitecustomize`` runs (:func:`keyless_ray.bootstrap.start`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyless import Keyless
from keyless.delivery.azure_endpoint import AZURE_ENDPOINT_SHADOWED_VARIABLES
from keyless_ray import MANIFEST_VARIABLE, MARKER_VARIABLE, bootstrap
from keyless_ray.intake import worker_manifest
from tests.core.helpers import make_jwt

AZURE_AUD = "api://AzureADTokenExchange"
TOUCHED = ("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
           *AZURE_ENDPOINT_SHADOWED_VARIABLES)


@pytest.fixture
def worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A worker process's environment as the plugin prepares it, for a given delivery."""

    def prepare(**delivery: str) -> None:
        token = tmp_path / "azure.jwt"
        token.write_text(make_jwt(aud=AZURE_AUD))
        config: dict[str, Any] = {"source": {"type": "file", "path": str(token)},
                                  "target": {"azure": {"tenant_id": "t-1",
                                                       "client_id": "app-1"}}}
        if delivery:
            config["delivery"] = delivery
        ident = f"azure-test-{len(delivery)}"
        manifest = worker_manifest(Keyless(config), ident, {AZURE_AUD: token})
        path = tmp_path / f"{ident}.json"
        path.write_text(json.dumps(manifest))
        for name in TOUCHED:
            monkeypatch.delenv(name, raising=False)  # restored after the test
        monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token))  # the node's variable
        monkeypatch.setenv(MARKER_VARIABLE, ident)
        monkeypatch.setenv(MANIFEST_VARIABLE, str(path))

    yield prepare
    for server in bootstrap._azure_servers.values():
        server.stop()
    bootstrap._azure_servers.clear()


def test_start_serves_azure_and_removes_the_token_file_variable(worker: Any) -> None:
    import os

    worker()
    bootstrap.start()
    assert "AZURE_FEDERATED_TOKEN_FILE" not in os.environ
    url, header = os.environ["IDENTITY_ENDPOINT"], os.environ["IDENTITY_HEADER"]
    assert url.startswith("http://127.0.0.1:") and os.environ["AZURE_CLIENT_ID"] == "app-1"
    assert httpx.get(url, params={"resource": "https://storage.azure.com"}).status_code == 401
    answer = httpx.get(url, headers={"X-IDENTITY-HEADER": header})  # no resource: no exchange
    assert answer.status_code == 400 and "resource" in answer.json()["message"]
    assert bootstrap.azure_endpoint() == {name: os.environ[name] for name in (
        "IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")}
    assert len(bootstrap._azure_servers) == 1  # one endpoint per config per process


def test_token_file_delivery_leaves_the_node_variables(worker: Any) -> None:
    import os

    worker(azure="token_file")
    bootstrap.start()
    assert "IDENTITY_ENDPOINT" not in os.environ and "AZURE_FEDERATED_TOKEN_FILE" in os.environ
    assert bootstrap._azure_servers == {}
