"""Unmodified azure-identity under ``keyless exec`` with subject tokens far shorter than
azure-identity's 600 s federated-token-file re-read (issue 20).

Reference IdP (``shortlived``: 8 s subject tokens) -> ``keyless exec`` (the loopback
managed-identity endpoint, the default) -> a child using ``DefaultAzureCredential()`` and the
Azure Storage SDK as they are -> EntraLike (HTTPS, verifies every client assertion and refuses
an expired one with AADSTS700024, as Entra does) and a blob endpoint that checks each bearer
was issued by EntraLike for ``https://storage.azure.com`` and has not expired. The same child
under ``delivery.azure: token_file`` fails: that is the regression the endpoint fixes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyless import ConfigError, Keyless
from keyless.delivery.azure_endpoint import AzureEndpoint
from tests.e2e.conftest import LeakGuard
from tests.support.idp import ReferenceIdP
from tests.support.token_servers import EntraLike, Reply, TokenServer, _json

pytestmark = pytest.mark.e2e

STORAGE = "https://storage.azure.com"
SCOPES = (STORAGE + "/.default", "api://keyless-test-api/.default")
BLOB = b"model-weights-shard-0"

CHILD = r"""
import hashlib, json, os, sys, time
from azure.identity import DefaultAzureCredential

scopes, seconds = sys.argv[1].split(","), float(sys.argv[2])
credential = DefaultAzureCredential()
calls = {scope: 0 for scope in scopes}
seen = {scope: [] for scope in scopes}
failures = []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    for scope in scopes:
        try:
            token = credential.get_token(scope)
            assert token.expires_on > time.time()
            calls[scope] += 1
            digest = hashlib.sha256(token.token.encode()).hexdigest()
            if digest not in seen[scope]:
                seen[scope].append(digest)
        except Exception as exc:
            failures.append(type(exc).__name__ + ": " + str(exc)[:400])
    time.sleep(0.25)
print(json.dumps({"calls": calls, "seen": seen, "failures": failures,
                  "env": sorted(k for k in os.environ
                                if k.startswith(("AZURE_", "IDENTITY_", "MSI_")))}))
"""

BLOB_CHILD = r"""
import json, sys, time
from azure.identity import DefaultAzureCredential
from azure.storage.blob import BlobServiceClient

account_url, seconds, ca_file = sys.argv[1], float(sys.argv[2]), sys.argv[3]
BLOB = bytes.fromhex(sys.argv[4])
# the credential as it is; the fake blob endpoint's test CA for the one HTTPS connection
service = BlobServiceClient(account_url, credential=DefaultAzureCredential(),
                            connection_verify=ca_file)
blob = service.get_blob_client("checkpoints", "shard-0.bin")
reads, failures = 0, []
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    try:
        assert blob.download_blob().readall() == BLOB
        reads += 1
    except Exception as exc:
        failures.append(type(exc).__name__ + ": " + str(exc)[:400])
    time.sleep(0.25)
print(json.dumps({"reads": reads, "failures": failures}))
"""


class BlobLike(TokenServer):
    """A blob endpoint (HTTPS, path style ``/{account}/{container}/{blob}``) serving one blob
    to a bearer that ``entra`` issued for ``https://storage.azure.com`` and that has not
    expired; anything else gets Storage's 401 ``InvalidAuthenticationInfo``."""

    def __init__(self, entra: EntraLike) -> None:
        super().__init__(tls=True)
        self.entra = entra
        self.tokens: list[str] = []  # sha256 of each accepted bearer, in order of first use
        self.reads = 0
        self.rejected = 0

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        grant = self.entra.grant_for(headers, STORAGE + "/.default")
        if grant is None or grant.subject != "shortlived":
            with self._lock:
                self.rejected += 1
            return 401, {"x-ms-error-code": "InvalidAuthenticationInfo",
                         "Content-Type": "application/xml"}, (
                b"<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>"
                b"InvalidAuthenticationInfo</Code><Message>bad bearer</Message></Error>")
        if method != "GET" or path != "/devstoreaccount1/checkpoints/shard-0.bin":
            return _json(404, {"error": "BlobNotFound"})
        digest = hashlib.sha256(headers["authorization"].split(" ", 1)[1].encode()).hexdigest()
        with self._lock:
            self.reads += 1
            if digest not in self.tokens:
                self.tokens.append(digest)
        return 206, {"Content-Type": "application/octet-stream",
                     "Content-Range": f"bytes 0-{len(BLOB) - 1}/{len(BLOB)}",
                     "x-ms-blob-type": "BlockBlob", "ETag": "\"0x8DC0000000000001\"",
                     "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
                     "x-ms-version": "2025-01-05", "x-ms-request-id": "keyless-test"}, BLOB


@pytest.fixture
def entra(reference_idp: ReferenceIdP) -> Iterator[EntraLike]:
    """EntraLike trusting the IdP's ``shortlived`` client, access tokens living 6 s (so the
    child needs new ones all the time, each one a new exchange with a fresh assertion)."""
    server = EntraLike(expires_in=6).start()
    assert isinstance(server, EntraLike)
    server.register("tenant-1", "app-1", issuer=reference_idp.issuer, subject="shortlived")
    yield server
    server.stop()


def _spec(idp: ReferenceIdP, entra: EntraLike, tmp_path: Path, **delivery: str) -> Path:
    config: dict[str, Any] = {
        "source": {"type": "client_credentials", "token_url": idp.token_url,
                   "client_id": "shortlived", "client_secret": idp.client_secrets["shortlived"]},
        "target": {"azure": {"tenant_id": "tenant-1", "client_id": "app-1",
                             "authority_host": entra.url}},
        "allow_insecure_http": True}
    if delivery:
        config["delivery"] = delivery
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(config))
    return spec


def _env(tmp_path: Path, entra: EntraLike) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path),
            "REQUESTS_CA_BUNDLE": str(entra.ca_file),  # keyless exec's exchange with Entra
            # decoys: the file would win over managed identity in DefaultAzureCredential, a
            # secret over both; keyless exec must drop them
            "AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "missing.jwt"),
            "AZURE_CLIENT_SECRET": "decoy-secret", "MSI_ENDPOINT": "http://127.0.0.1:9/x"}


def _exec(spec: Path, env: dict[str, str], script: str, *args: str,
          tmp_path: Path) -> subprocess.CompletedProcess[str]:
    child = tmp_path / "child.py"
    child.write_text(script)
    return subprocess.run([sys.executable, "-m", "keyless", "exec", "--audit-stderr",
                           "--config", str(spec), "--", sys.executable, str(child), *args],
                          capture_output=True, text=True, env=env, timeout=240)


def test_default_azure_credential_succeeds_on_every_call_across_rollovers(
        reference_idp: ReferenceIdP, entra: EntraLike, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    idp_before = reference_idp.token_requests()
    result = _exec(_spec(reference_idp, entra, tmp_path), _env(tmp_path, entra), CHILD,
                   ",".join(SCOPES), "36", tmp_path=tmp_path)
    leak_guard.add(result.stdout, result.stderr)
    leak_guard.forbid(*entra.issued)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == []
    assert "AZURE_FEDERATED_TOKEN_FILE" not in report["env"]
    assert "AZURE_CLIENT_SECRET" not in report["env"] and "MSI_ENDPOINT" not in report["env"]
    assert {"IDENTITY_ENDPOINT", "IDENTITY_HEADER", "AZURE_CLIENT_ID"} <= set(report["env"])
    # every token the child got was issued by Entra for the scope it asked, to `shortlived`
    issued = {hashlib.sha256(t.encode()).hexdigest(): g for t, g in entra.grants.items()}
    for scope in SCOPES:
        assert report["calls"][scope] >= 80, report["calls"]
        assert all(issued[d].scope == scope and issued[d].subject == "shortlived"
                   for d in report["seen"][scope])
        assert len(report["seen"][scope]) >= 6, "expected >= 5 access-token rollovers"
    assert entra.refusals == [] and entra.exchanges >= 12
    audit = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    served = [e for e in audit if e["target"] == "azure-endpoint"]
    assert len(served) >= 12 and all(e["kind"] == "issue" for e in served)
    assert reference_idp.token_requests() - idp_before >= 4  # >= 4 subject-token lifetimes


def test_the_token_file_fails_with_short_subject_tokens(
        reference_idp: ReferenceIdP, entra: EntraLike, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    """The regression: azure-identity re-reads AZURE_FEDERATED_TOKEN_FILE only every 600 s,
    so once the 8 s subject token it read has expired, Entra refuses every new exchange."""
    spec = _spec(reference_idp, entra, tmp_path, azure="token_file")
    result = _exec(spec, _env(tmp_path, entra), CHILD, SCOPES[0], "20", tmp_path=tmp_path)
    leak_guard.add(result.stdout, result.stderr)
    leak_guard.forbid(*entra.issued)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "AZURE_FEDERATED_TOKEN_FILE" in report["env"] and "IDENTITY_ENDPOINT" not in \
        report["env"]
    assert report["calls"][SCOPES[0]] >= 1  # it worked while the first subject token lived
    assert report["failures"], "the token file unexpectedly kept working"
    assert any("AADSTS700024" in failure for failure in report["failures"])
    assert "exp" in entra.refusals


def test_azure_storage_reads_a_blob_across_rollovers(
        reference_idp: ReferenceIdP, entra: EntraLike, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    blob = BlobLike(entra).start()
    assert isinstance(blob, BlobLike)
    try:
        result = _exec(_spec(reference_idp, entra, tmp_path), _env(tmp_path, entra),
                       BLOB_CHILD, f"{blob.url}/devstoreaccount1", "30", str(blob.ca_file),
                       BLOB.hex(), tmp_path=tmp_path)
    finally:
        blob.stop()
    leak_guard.add(result.stdout, result.stderr)
    leak_guard.forbid(*entra.issued)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["failures"] == [] and blob.rejected == 0
    assert report["reads"] >= 60 and blob.reads == report["reads"]
    assert len(blob.tokens) >= 5, f"{len(blob.tokens)} access tokens: expected >= 4 rollovers"
    assert entra.refusals == []


def test_refusals_and_loopback_only(reference_idp: ReferenceIdP, entra: EntraLike,
                                    leak_guard: LeakGuard) -> None:
    import httpx

    identity = Keyless({
        "source": {"type": "client_credentials", "token_url": reference_idp.token_url,
                   "client_id": "shortlived",
                   "client_secret": reference_idp.client_secrets["shortlived"]},
        "target": {"azure": {"tenant_id": "tenant-1", "client_id": "app-1",
                             "authority_host": entra.url}},
        "allow_insecure_http": True})
    identity.azure_credential(connection_verify=entra.ca_file)
    with pytest.raises(ConfigError) as bind:
        AzureEndpoint(identity, host="0.0.0.0")
    assert bind.value.field == "host"
    with AzureEndpoint(identity) as endpoint:
        env = endpoint.env()
        params = {"api-version": "2019-08-01", "resource": STORAGE}
        missing = httpx.get(endpoint.url, params=params, headers={"Metadata": "true"})
        wrong = httpx.get(endpoint.url, params=params,
                          headers={"X-IDENTITY-HEADER": "not-the-header"})
        other = httpx.get(endpoint.url, params={**params, "client_id": "someone-else"},
                          headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]})
        good = httpx.get(endpoint.url, params={**params, "client_id": "app-1"},
                         headers={"X-IDENTITY-HEADER": env["IDENTITY_HEADER"]})
        threads = [threading.Thread(target=httpx.get, args=(endpoint.url,),
                                    kwargs={"params": params, "headers": {
                                        "X-IDENTITY-HEADER": env["IDENTITY_HEADER"]}})
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert (missing.status_code, wrong.status_code, other.status_code) == (401, 403, 400)
    body = good.json()
    assert good.status_code == 200 and body["resource"] == STORAGE
    assert body["token_type"] == "Bearer" and int(body["expires_on"]) > time.time()
    assert entra.grants[body["access_token"]].scope == STORAGE + "/.default"
    assert entra.exchanges == 1  # the concurrent asks were served from the one refresher
    leak_guard.forbid(body["access_token"], env["IDENTITY_HEADER"])
    leak_guard.add(missing.text, wrong.text, other.text, repr(endpoint))
