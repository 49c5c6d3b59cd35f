"""The Google and Azure providers' own hooks and operators on keyless connections, under real
Airflow 3.3 ``dag.test()`` (issue 21, part 1): tests/airflow_provider/dags/keyless_cloud_dags.py.

- Azure: ``WasbHook`` on ``wasb`` connections whose extra names a keyless connection, against
  Azurite behind the verifying HTTPS front (tests/support/azurite_front.py) and the Entra-like
  token endpoint; each task its own app registration, 6-second access tokens.
- Google: ``GCSCreateBucketOperator`` and ``GCSHook`` on ``google_cloud_platform`` connections
  naming keyless connections, against gcp-storage-emulator behind the verifying front
  (tests/support/gcs_emulator.py) and GcpSts (4-second tokens); the create task impersonates
  an admin service account, the others a trainer one, each confined by an access boundary
  templated on its task id.

The adapters are enabled as a user does, by one line in the plugins folder. Each DAG run is
its own process; everything it printed (and its audit file) is scanned for the tokens the
fixtures issued.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_provider.conftest import flat_extra
from tests.e2e.conftest import LeakGuard
from tests.support.azurite_front import AzuriteStorage
from tests.support.gcs_emulator import GcsStorage
from tests.support.idp import ReferenceIdP
from tests.support.token_servers import EntraLike

pytestmark = pytest.mark.e2e

DAG_FILE = Path(__file__).with_name("dags") / "keyless_cloud_dags.py"
PLUGIN_LINE = "from keyless_airflow.plugin import KeylessPlugin  # noqa: F401\n"
PROVIDER = ("//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/p/"
            "providers/idp")
ADMIN_SA = "bucket-admin@proj-test.iam.gserviceaccount.com"
TRAINER_SA = "trainer@proj-test.iam.gserviceaccount.com"
BUCKET = "keyless-airflow-gcs"
CONTAINER = "keyless-airflow"


def run_dag(dag_id: str, tmp_path: Path, leak_guard: LeakGuard,
            connections: dict[str, dict[str, Any]], **env: str) -> dict[str, dict[str, Any]]:
    """Run ``DAG_FILE DAG_ID`` (``dag.test()``) with ``connections`` as AIRFLOW_CONN_* and the
    keyless plugin in the plugins folder; each task's ``KEYLESS_ROUNDS`` report."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "keyless_plugin.py").write_text(PLUGIN_LINE)
    environ = {**os.environ, "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
               "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins), **env}
    environ.update({f"AIRFLOW_CONN_{name.upper()}": json.dumps(conn)
                    for name, conn in connections.items()})
    log = tmp_path / f"{dag_id}.log"
    with log.open("w") as out:
        result = subprocess.run([sys.executable, str(DAG_FILE), dag_id], stdout=out,
                                stderr=subprocess.STDOUT, env=environ, timeout=300, check=False)
    text = log.read_text()
    leak_guard.add(text)
    assert result.returncode == 0, text[-6000:]
    assert f"KEYLESS_DAGRUN {dag_id} " in text
    return {task: json.loads(report)
            for task, report in re.findall(r"KEYLESS_ROUNDS (\w+) (\{[^\n]*\})", text)}


def audit_events(path: Path, leak_guard: LeakGuard) -> list[dict[str, Any]]:
    text = path.read_text()
    leak_guard.add(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def source(idp: ReferenceIdP, client: str, audience: str) -> dict[str, Any]:
    return {"type": "client_credentials", "token_url": idp.token_url, "client_id": client,
            "client_secret": idp.client_secrets[client], "audience": audience}


def audit_to(path: Path) -> dict[str, Any]:
    return {"sinks": ["jsonl"], "jsonl_path": str(path)}


# ----------------------------------------------------------------------------- Azure

@pytest.fixture
def entra(reference_idp: ReferenceIdP) -> Iterator[EntraLike]:
    """Entra-like endpoint: app-writer trusts client `trainer`, app-reader `shortlived`."""
    server = EntraLike(expires_in=6).start()
    assert isinstance(server, EntraLike)
    server.register("tenant-1", "app-writer", issuer=reference_idp.issuer, subject="trainer")
    server.register("tenant-1", "app-reader", issuer=reference_idp.issuer, subject="shortlived")
    yield server
    server.stop()


def azure_keyless(idp: ReferenceIdP, entra: EntraLike, client: str, app: str,
                  audit: Path) -> dict[str, Any]:
    config = {"source": source(idp, client, "api://AzureADTokenExchange"),
              "target": {"azure": {"tenant_id": "tenant-1", "client_id": app,
                                   "authority_host": entra.url}},
              "audit": audit_to(audit), "allow_insecure_http": True}
    return {"conn_type": "keyless", "extra": flat_extra(config)}


def test_wasbhook_tasks_each_use_their_own_identity_across_rollovers(
        airflow_home: Path, reference_idp: ReferenceIdP, entra: EntraLike, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    audit = tmp_path / "audit.jsonl"
    with AzuriteStorage(entra) as blob:
        connections = {
            "keyless_writer": azure_keyless(reference_idp, entra, "trainer", "app-writer", audit),
            "keyless_reader": azure_keyless(reference_idp, entra, "shortlived", "app-reader",
                                            audit),
            # the rest of the extra goes to BlobServiceClient as usual: trust the front's cert
            "wasb_writer": {"conn_type": "wasb", "host": blob.account_url, "extra": {
                "keyless_conn_id": "keyless_writer", "connection_verify": blob.ca_file}},
            "wasb_reader": {"conn_type": "wasb", "host": blob.account_url, "extra": {
                "keyless_conn_id": "keyless_reader", "connection_verify": blob.ca_file}},
        }
        reports = run_dag("keyless_wasb", tmp_path, leak_guard, connections,
                          REQUESTS_CA_BUNDLE=str(entra.ca_file), KEYLESS_TEST_SECONDS="9",
                          KEYLESS_TEST_CONTAINER=CONTAINER)
        leak_guard.forbid(*entra.issued)
        stored = blob.direct_client().get_blob_client(CONTAINER, "from-write.txt")
        assert stored.download_blob().readall() == b"written through WasbHook"

        requests = blob.requests
        assert [r for r in requests if r["status"] >= 400] == [] and blob.expired_uses == 0
        by_task = {"write_blob": [r for r in requests if "write-loop" in r["path"]],
                   "read_blob": [r for r in requests if "read-loop" in r["path"]]}
        assert {r["subject"] for r in by_task["write_blob"]} == {"trainer"}
        assert {r["subject"] for r in by_task["read_blob"]} == {"shortlived"}
        first = [(r["method"], r["subject"]) for r in requests
                 if r["path"].endswith((f"/{CONTAINER}", "/from-write.txt"))]
        assert first == [("PUT", "trainer"), ("PUT", "trainer"), ("GET", "shortlived")], first
        for task, seen in by_task.items():
            rounds = reports[task]["rounds"]
            assert rounds >= 8, reports
            tokens = {r["token_sha256"] for r in seen}
            assert len(tokens) >= 2, f"{task}: the access token never rolled over"
            # a new WasbHook per round trip, one pipeline per task: few exchanges
            subject = seen[0]["subject"]
            exchanges = sum(1 for g in entra.grants.values() if g.subject == subject)
            assert len(tokens) <= exchanges < rounds, (task, exchanges, rounds)

    events = audit_events(audit, leak_guard)
    exchanged = {(e["context"]["task_id"], e["principal"]) for e in events
                 if e["kind"] == "exchange" and e["target"] == "azure"}
    assert exchanged == {("write_blob", "app-writer"), ("read_blob", "app-reader")}


def test_a_wasb_connection_with_a_key_and_keyless_is_refused(
        airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored key beside keyless_conn_id: a ConfigError naming the key, never a mix."""
    from airflow.providers.microsoft.azure.hooks.wasb import WasbHook

    import keyless
    from keyless_airflow.plugin import install_provider_adapters

    assert "keyless_airflow.azure" in install_provider_adapters()
    monkeypatch.setenv("AIRFLOW_CONN_WASB_MIXED", json.dumps({
        "conn_type": "wasb", "host": "https://acct.blob.core.windows.net",
        "extra": {"keyless_conn_id": "keyless_default", "sas_token": "sv=2020&sig=x"}}))
    with pytest.raises(keyless.ConfigError) as caught:
        WasbHook(wasb_conn_id="wasb_mixed").get_conn()
    assert caught.value.field == "sas_token" and "sig=x" not in str(caught.value)


# ----------------------------------------------------------------------------- Google

def gcp_keyless(idp: ReferenceIdP, sts: Any, service_account: str, audit: Path,
                boundary: dict[str, Any] | None = None) -> dict[str, Any]:
    gcp: dict[str, Any] = {"audience": PROVIDER, "token_url": sts.token_url,
                           "service_account": service_account,
                           "impersonation_url": sts.impersonation_url(service_account)}
    if boundary is not None:
        gcp["access_boundary"] = boundary
    config = {"source": source(idp, "trainer", "https:" + PROVIDER), "target": {"gcp": gcp},
              "audit": audit_to(audit), "allow_insecure_http": True}
    return {"conn_type": "keyless", "extra": flat_extra(config)}


def test_gcs_operator_and_hook_tasks_each_use_their_own_identity_across_rollovers(
        airflow_home: Path, reference_idp: ReferenceIdP, gcp_sts_factory: Any, tmp_path: Path,
        leak_guard: LeakGuard) -> None:
    sts = gcp_sts_factory(trusted_issuer=reference_idp.issuer, audience=PROVIDER,
                          service_accounts={ADMIN_SA: ["trainer"], TRAINER_SA: ["trainer"]},
                          max_lifetime_seconds=4)
    audit = tmp_path / "audit.jsonl"
    per_task = {"accessBoundaryRules": [{
        "availableResource": f"//storage.googleapis.com/projects/_/buckets/{BUCKET}",
        "availablePermissions": ["inRole:roles/storage.objectAdmin"],
        "availabilityCondition": {"expression": "resource.name.startsWith("
                                  f"'projects/_/buckets/{BUCKET}/objects/{{task_id}}/')"}}]}
    with GcsStorage(sts) as gcs:
        connections = {
            "keyless_gcp_admin": gcp_keyless(reference_idp, sts, ADMIN_SA, audit),
            "keyless_gcp": gcp_keyless(reference_idp, sts, TRAINER_SA, audit, per_task),
            "gcp_keyless_unbounded": {"conn_type": "google_cloud_platform", "extra": {
                "keyless_conn_id": "keyless_gcp_admin", "project": "proj-test"}},
            "gcp_keyless": {"conn_type": "google_cloud_platform",
                            "extra": {"keyless_conn_id": "keyless_gcp"}},
        }
        reports = run_dag("keyless_gcs", tmp_path, leak_guard, connections, **gcs.env(),
                          KEYLESS_TEST_SECONDS="8", KEYLESS_TEST_BUCKET=BUCKET)
        assert gcs.get_object(BUCKET, "write_objects/data.txt") == b"written through GCSHook"
        requests = list(gcs.requests)

    assert reports["read_objects"]["other_task"] == "Forbidden", reports
    created = [r for r in requests if r["bucket"] is None and r["method"] == "POST"]
    assert [(r["principal"], r["kind"], r["status"]) for r in created] == [
        (ADMIN_SA, "impersonated", 200)]
    for task in ("write_objects", "read_objects"):
        seen = [r for r in requests if (r["object"] or "").startswith(f"{task}/")
                and r["status"] < 400]
        assert len(seen) >= 2 * reports[task]["rounds"] >= 16, reports
        assert {(r["principal"], r["kind"]) for r in seen} == {(TRAINER_SA, "downscoped")}
    refused = [r for r in requests if r["status"] >= 400]
    # the boundary's one refusal (read_objects reading write_objects' data) ...
    assert [(r["method"], r["object"], r["principal"]) for r in refused if r["status"] == 403] \
        == [("GET", "write_objects/data.txt", None)], refused
    # ... and at most a "does the bucket exist yet" lookup as the admin (whether one is made
    # before the bucket is created depends on timing in the provider: not asserted)
    assert all((r["method"], r["object"], r["principal"], r["status"]) == (
        "GET", None, ADMIN_SA, 404) for r in refused if r["status"] != 403), refused

    events = audit_events(audit, leak_guard)
    exchanges = [e for e in events if e["kind"] == "exchange" and e["target"] == "gcp"]
    by_task: dict[str, int] = {}
    for event in exchanges:
        by_task[event["context"]["task_id"]] = by_task.get(event["context"]["task_id"], 0) + 1
    assert set(by_task) == {"create_bucket", "write_objects", "read_objects"}, by_task
    # 4-second tokens over 8 seconds: each task's identity rolled over (a new exchange) ...
    assert by_task["write_objects"] >= 2 and by_task["read_objects"] >= 2, by_task
    # ... yet a new GCSHook per round trip shares the task's one pipeline
    assert by_task["write_objects"] < reports["write_objects"]["rounds"], (by_task, reports)
    assert {e["principal"] for e in exchanges if e["context"]["task_id"] == "create_bucket"} \
        == {ADMIN_SA}
    assert sts.expired_uses == 0


def test_google_connections_route_to_keyless_or_to_the_provider(
        airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gcp_conn_id naming a keyless connection gets keyless credentials (no call made yet);
    a key beside keyless_conn_id is refused naming it; any other connection is the
    provider's own (here anonymous)."""
    from airflow.providers.google.cloud.hooks.gcs import GCSHook

    import keyless
    from keyless_airflow.plugin import install_provider_adapters

    assert "keyless_airflow.google" in install_provider_adapters()
    config = {"source": {"type": "env", "variable": "KEYLESS_NOT_READ"},
              "target": {"gcp": {"audience": PROVIDER, "project_id": "proj-direct"}}}
    monkeypatch.setenv("AIRFLOW_CONN_KEYLESS_DIRECT", json.dumps(
        {"conn_type": "keyless", "extra": flat_extra(config)}))
    monkeypatch.setenv("AIRFLOW_CONN_GCP_MIXED", json.dumps({
        "conn_type": "google_cloud_platform",
        "extra": {"keyless_conn_id": "keyless_direct", "key_path": "/keys/sa.json"}}))
    monkeypatch.setenv("AIRFLOW_CONN_GCP_ANONYMOUS", json.dumps({
        "conn_type": "google_cloud_platform", "extra": {"is_anonymous": True}}))

    credentials, project = GCSHook(gcp_conn_id="keyless_direct").get_credentials_and_project_id()
    assert type(credentials).__name__ == "KeylessGoogleCredentials" and project == "proj-direct"
    with pytest.raises(keyless.ConfigError) as caught:
        GCSHook(gcp_conn_id="gcp_mixed").get_credentials()
    assert caught.value.field == "key_path"
    anonymous = GCSHook(gcp_conn_id="gcp_anonymous").get_credentials()
    assert type(anonymous).__name__ == "AnonymousCredentials"
