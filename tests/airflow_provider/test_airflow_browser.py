"""The keyless connection form in a real browser (issue 12, Airflow half; issue 21: forms a
person can fill).

A real Airflow 3.3 (`airflow standalone` on a free loopback port, its own AIRFLOW_HOME, SQLite,
connection testing enabled; see :mod:`tests.airflow_provider.airflow_server`) and Debian's
Chromium driven by Playwright, as a person would: sign in with SimpleAuthManager's generated
admin password, Admin → Connections → Add Connection, choose "OIDC workload identity
(keyless)" and see the form: the "Extra Fields" section holds the source type, the common
source fields and the targets' identifiers in that order; the other fields are in the
"More source fields", "More target settings" and "Refresh, audit, delivery" sections, every
field of ``conn_fields()`` with its label, description and widget.

Then the four common cases, each typed into labelled fields and chosen from dropdowns, with
no JSON typed anywhere:

(b) client_credentials + AWS role (the reference IdP's ``trainer``), (a) file + AWS role (a
token the IdP issued, in a file), (c) ambient + GCP workload identity (direct resource access,
no service account: the STS token URL points at GcpSts), (d) file + Azure (the authority host
points at the Entra-like HTTPS endpoint). Each is saved and tested with the list's Test button
(the hook's success message: token, claims, signature, dry-run exchange against the verifying
fake, which must have accepted the token the source gave). Then the saved connections are used
as a task would: a process with the server's Airflow settings and environment builds
``KeylessHook`` for each from Airflow's database; (a) and (b) read an S3 object (moto) through
the verifying STS front, (c) reads a GCS object with google-cloud-storage through the verifying
GCS front, (d) gets an Azure access token that the Entra-like endpoint checks it issued for
that scope. After that (b) is
reopened (the secret is ``***`` in its field and in the extra's JSON; also after a reload), its
audience changed to a wrong one, saved and tested: the hook's message names the ``aud`` claim
and its fix.

The server has what a GKE/AKS host has: ``KEYLESS_OIDC_TOKEN_FILE`` names a projected token
file (a JWT the IdP issued for the GCP provider; the ambient chain reads that variable first)
and ``REQUESTS_CA_BUNDLE`` trusts the Entra-like endpoint's per-run certificate (as a
corporate CA bundle would); the using process inherits both.

The Test button runs ``KeylessHook.test_connection()`` inside the API server process (the UI
posts to the synchronous ``/api/v2/connections/test``, which merges the stored secret back
into the masked extra), so the server reaches the IdP and the STS front on loopback itself.

The client secret and every token the fakes issued or the files held (and anything shaped
like a JWT) must appear in none of: the page's HTML (lists, reopened forms, after a reload), the
connection API's responses to the browser, the server's captured output and every file under
its AIRFLOW_HOME (logs, config), the using process's output; nor the secret in the SQLite
database (Airflow stores the extra Fernet-encrypted).

Screenshots of every step go to ``artifacts/browser/airflow-keyless-*.png``; the server's
output is copied next to them.

Airflow 3.3.2's list "Test" button sends ``port: 0`` for a connection without a port, which its
API rejects with 400 "The host or port to test differs from the stored connection"
(apache/airflow#73298, fixed in the API after 3.3.2). :func:`drop_portless_zero` removes that
one field from the request in flight, as the fixed API ignores it; nothing else is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from keyless import load_config
from keyless.secret import fingerprint
from keyless.testing.gcp_sts import GcpSts
from tests.airflow_provider.airflow_form import (
    NAME,
    Seen,
    choose,
    drop_portless_zero,
    field_group,
    labels_in_order,
    leaks,
    open_connections,
    open_extra_fields,
    open_section,
    press_test,
    record_responses,
    row,
    shot,
    sign_in,
    widget_check,
)
from tests.airflow_provider.airflow_server import AirflowStandalone
from tests.e2e.conftest import Federation, LeakGuard
from tests.support.browser import artifacts_dir, chromium_page
from tests.support.gcs_emulator import GcsStorage
from tests.support.idp import ReferenceIdP
from tests.support.token_servers import EntraLike

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

pytestmark = pytest.mark.e2e

CC_AWS, FILE_AWS, AMBIENT_GCP, FILE_AZURE = ("keyless_browser", "keyless_file_aws",
                                             "keyless_ambient_gcp", "keyless_file_azure")
WRONG_AUDIENCE = "https://other.example"
ACTION_TIMEOUT_MS = 45_000   # one UI step on a busy 2-core machine
GCP_AUDIENCE = ("//iam.googleapis.com/projects/123456789/locations/global/"
                "workloadIdentityPools/training/providers/reference-idp")
GCP_PROJECT, GCS_BUCKET = "ml-project", "keyless-browser"
AZURE_TENANT, AZURE_CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0c6a9e3c-trainer"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
AZURE_SCOPE = "https://storage.azure.com/.default"  # not the Test's management scope
GCP_TOKEN_PREFIX = "ya29.fixture-"  # every access token GcpSts issues starts so
#: The using process: builds KeylessHook from Airflow's database for each connection, reads
#: an S3 object with the AWS ones and a GCS object with the GCP one, gets an Azure token
#: with the Azure one; prints one JSON document (targets, bodies, the token's fingerprint).
USE_CONNECTIONS = """
import json, sys
from botocore.config import Config
from google.cloud import storage
from keyless.secret import fingerprint
from keyless_airflow import KeylessHook
job = json.loads(sys.argv[1])
out = {}
for conn_id in job["connections"]:
    hook = KeylessHook(conn_id)
    target = hook.config.target
    seen = {"source": hook.config.source.type,
            "target": target.model_dump(mode="json", exclude_none=True)}
    if target.aws is not None:
        s3 = hook.get_client_type("s3", endpoint_url=job["s3_url"],
                                  config=Config(s3={"addressing_style": "path"},
                                                retries={"total_max_attempts": 1}))
        seen["body"] = s3.get_object(Bucket=job["bucket"], Key=job["key"])["Body"].read().decode()
    if target.gcp is not None:
        gcs = storage.Client(project=target.gcp.project_id,
                             credentials=hook.get_google_credentials())
        seen["body"] = gcs.bucket(job["gcs_bucket"]).blob(job["key"]).download_as_bytes().decode()
    if target.azure is not None:
        token = hook.get_azure_credential().get_token(job["azure_scope"])
        seen["token_sha256"] = fingerprint(token.token)
    out[conn_id] = seen
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def entra(reference_idp: ReferenceIdP) -> Iterator[EntraLike]:
    """The Entra-like HTTPS token endpoint (module-wide: the server must trust its
    certificate from the start); app AZURE_CLIENT trusts the IdP's ``trainer``."""
    server = EntraLike().start()
    assert isinstance(server, EntraLike)
    server.register(AZURE_TENANT, AZURE_CLIENT, issuer=reference_idp.issuer, subject="trainer",
                    audience=AZURE_AUDIENCE)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ambient_token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the host's projected token lives (``$KEYLESS_OIDC_TOKEN_FILE``); the test writes
    it."""
    return tmp_path_factory.mktemp("projected") / "token"


@pytest.fixture(scope="module")
def airflow_server(tmp_path_factory: pytest.TempPathFactory, entra: EntraLike,
                   ambient_token_file: Path) -> Iterator[AirflowStandalone]:
    """`airflow standalone` for this module, with a host's projected token file and the
    Entra-like endpoint's CA in its environment; stopped (process group) at the end, its
    output copied to the artifacts."""
    assert entra.ca_file is not None
    server = AirflowStandalone(tmp_path_factory.mktemp("airflow-standalone"), env={
        "KEYLESS_OIDC_TOKEN_FILE": str(ambient_token_file),
        "REQUESTS_CA_BUNDLE": entra.ca_file})
    server.start(timeout=300)
    try:
        yield server
    finally:
        server.stop()
        shutil.copyfile(server.output, artifacts_dir() / f"{NAME}-standalone.out")


@pytest.fixture
def gcp_sts(reference_idp: ReferenceIdP, gcp_sts_factory: Any) -> GcpSts:
    """GcpSts trusting the IdP for the provider GCP_AUDIENCE (direct resource access)."""
    sts: GcpSts = gcp_sts_factory(trusted_issuer=reference_idp.issuer, audience=GCP_AUDIENCE)
    return sts


@pytest.fixture
def gcs(gcp_sts: GcpSts) -> Iterator[GcsStorage]:
    """Cloud Storage (the emulator) behind the front that checks GcpSts's tokens."""
    with GcsStorage(gcp_sts) as storage:
        storage.create_bucket(GCS_BUCKET)
        yield storage


@pytest.fixture(autouse=True)
def _patient_expect() -> Iterator[None]:
    """Playwright's assertions wait up to ACTION_TIMEOUT_MS here (a busy machine), and the
    default again afterwards."""
    from playwright.sync_api import expect

    expect.set_options(timeout=ACTION_TIMEOUT_MS)
    yield
    expect.set_options(timeout=5_000)


# ---------------------------------------------------------------------------- the form
def _field_sections(fields: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Field names by section title, in form order ("Extra Fields" first)."""
    sections: dict[str, list[str]] = {}
    for name, spec in fields.items():
        sections.setdefault(spec["schema"].get("section", "Extra Fields"), []).append(name)
    return sections


def _new_connection(page: Page, conn_id: str) -> tuple[Locator, Locator]:
    """Add Connection → the keyless type (typed to filter, as a person would); returns the
    dialog and its opened "Extra Fields" section."""
    from playwright.sync_api import expect

    from keyless_airflow.provider_info import HOOK_NAME

    page.get_by_role("button", name="Add Connection").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()
    dialog.get_by_role("textbox", name="Connection ID").fill(conn_id)
    connection_type = dialog.get_by_role("combobox", name="Connection Type")
    connection_type.fill("keyless")
    page.get_by_role("option", name=HOOK_NAME, exact=True).click()
    return dialog, open_extra_fields(dialog)


def _check_the_whole_form(page: Page, dialog: Locator, extra: Locator,
                          fields: dict[str, dict[str, Any]]) -> None:
    """Every conn-field in its section, with label, description and widget; the first section
    in the order the form declares (source type, common source fields, target ids)."""
    from playwright.sync_api import expect

    sections = _field_sections(fields)
    first = [fields[name]["label"] for name in sections["Extra Fields"]]
    assert labels_in_order(extra, first) == first
    for title, names in sections.items():
        region = extra if title == "Extra Fields" else open_section(
            dialog, title, fields[names[0]]["label"])
        for name in names:
            spec = fields[name]
            group = field_group(region, spec["label"])
            expect(group, f"field {name}").to_have_count(1)
            if spec.get("description"):
                expect(group.get_by_text(spec["description"], exact=True),
                       f"description of {name}").to_be_visible()
            widget_check(group, spec)
        shot(page, f"2-section-{title.lower()}", tall=True)


def _type(region: Locator, label: str, value: str) -> None:
    field_group(region, label).get_by_role("textbox").fill(value)


def _choose_source(page: Page, extra: Locator, fields: dict[str, Any], source_type: str) -> None:
    shown = fields["source_type"]["schema"]["values_display"]
    offered = choose(page, field_group(extra, "Source type").get_by_role("combobox"),
                     shown[source_type])
    assert offered == [shown[t] for t in fields["source_type"]["schema"]["enum"]]


def _allow_loopback_http(dialog: Locator) -> None:
    """The IdP, STS front, GcpSts and moto are http:// on loopback."""
    from playwright.sync_api import expect

    other = open_section(dialog, "Refresh, audit, delivery", "Allow Insecure Http")
    field_group(other, "Allow Insecure Http").locator("[data-part=control]").click()
    expect(other.get_by_role("checkbox", name="Allow Insecure Http")).to_be_checked()


def _save(page: Page, dialog: Locator, conn_id: str, step: str) -> None:
    from playwright.sync_api import expect

    shot(page, f"{step}-filled", tall=True)
    save = dialog.get_by_role("button", name="Save")
    expect(save).to_be_enabled()
    save.click()
    expect(dialog).to_be_hidden()
    expect(row(page, conn_id).get_by_role("cell", name="keyless", exact=True)).to_be_visible()


def _write_token(path: Path, token: str, leak_guard: LeakGuard) -> None:
    """A projected token file as the kubelet writes it (owner-only); the token is forbidden
    in every output."""
    path.write_text(token)
    os.chmod(path, 0o600)
    leak_guard.forbid(token)


def _test_ok(page: Page, conn_id: str, step: str) -> str:
    message = press_test(page, conn_id, "Successful", step)
    assert "keyless: ok" in message and "exchange" in message, message
    return message


def _use(server: AirflowStandalone, federation: Federation, gcs: GcsStorage, key: str,
         output: Path) -> dict[str, Any]:
    """Run :data:`USE_CONNECTIONS` with the server's Airflow settings (its database, Fernet
    key) and environment (the projected token file, the CA bundle) as a server-side process
    reads connections; its output goes to ``output``."""
    job = {"connections": [CC_AWS, FILE_AWS, AMBIENT_GCP, FILE_AZURE],
           "s3_url": federation.aws.s3_url, "bucket": federation.aws.bucket, "key": key,
           "gcs_bucket": GCS_BUCKET, "azure_scope": AZURE_SCOPE}
    env = {**server.environment(), **gcs.env(), "_AIRFLOW_PROCESS_CONTEXT": "server"}
    result = subprocess.run([sys.executable, "-c", USE_CONNECTIONS, json.dumps(job)],
                            env=env, cwd=server.home, capture_output=True, text=True,
                            timeout=240, check=False)
    output.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, f"using the saved connections failed; see {output}"
    used: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return used


# ---------------------------------------------------------------------------- the test
def test_keyless_connection_form_in_a_real_browser(
        airflow_server: AirflowStandalone, federation: Federation, leak_guard: LeakGuard,
        entra: EntraLike, gcp_sts: GcpSts, gcs: GcsStorage, ambient_token_file: Path,
        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from keyless_airflow.fields import conn_fields

    config = federation.config()
    source, aws = config["source"], config["target"]["aws"]
    secret: str = source["client_secret"]
    idp = federation.idp
    token_file, azure_token_file = tmp_path / "oidc-token", tmp_path / "azure-identity-token"
    leak_guard.forbid(GCP_TOKEN_PREFIX)  # every GCP access token (Entra's: at the end)
    _write_token(token_file, idp.issue("trainer", source["audience"]), leak_guard)
    _write_token(ambient_token_file, idp.issue("trainer", "https:" + GCP_AUDIENCE), leak_guard)
    _write_token(azure_token_file, idp.issue("trainer", AZURE_AUDIENCE), leak_guard)
    fields = conn_fields()
    seen = Seen()

    with chromium_page(NAME, timeout_ms=ACTION_TIMEOUT_MS) as page:
        page.route("**/api/v2/connections/test", drop_portless_zero(seen))
        record_responses(page, seen)
        sign_in(page, airflow_server)
        open_connections(page)

        # -- (b) client_credentials + AWS role; first the whole form, as the type shows it
        dialog, extra = _new_connection(page, CC_AWS)
        shot(page, "1-type-chosen")
        _check_the_whole_form(page, dialog, extra, fields)
        extra = open_extra_fields(dialog)  # one section is open at a time
        _choose_source(page, extra, fields, "client_credentials")
        _type(extra, "Token Url", source["token_url"])
        _type(extra, "Client Id", source["client_id"])
        secret_input = field_group(extra, "Client Secret").locator("input")
        expect(secret_input).to_have_attribute("type", "password")
        secret_input.fill(secret)
        _type(extra, "Audience", source["audience"])
        _type(extra, "AWS Role ARN", aws["role_arn"])
        _type(extra, "AWS Region", aws["region"])
        shot(page, "3-client-credentials-aws-typed", tall=True)
        more_target = open_section(dialog, "More target settings", "AWS STS Endpoint URL")
        _type(more_target, "AWS STS Endpoint URL", aws["sts_endpoint_url"])
        _allow_loopback_http(dialog)
        _save(page, dialog, CC_AWS, "3-client-credentials-aws")
        seen.snapshot(page, "saved list")
        _test_ok(page, CC_AWS, "3-client-credentials-aws-test-ok")
        seen.snapshot(page, "test ok")
        assert federation.aws.front.accepted, "Test did not dry-run the exchange"

        # -- (a) file + AWS role
        dialog, extra = _new_connection(page, FILE_AWS)
        _choose_source(page, extra, fields, "file")
        _type(extra, "Path", str(token_file))
        _type(extra, "AWS Role ARN", aws["role_arn"])
        _type(extra, "AWS Region", aws["region"])
        shot(page, "4-file-aws-typed", tall=True)
        more_target = open_section(dialog, "More target settings", "AWS STS Endpoint URL")
        _type(more_target, "AWS STS Endpoint URL", aws["sts_endpoint_url"])
        _allow_loopback_http(dialog)
        _save(page, dialog, FILE_AWS, "4-file-aws")
        accepted = len(federation.aws.front.accepted)
        _test_ok(page, FILE_AWS, "4-file-aws-test-ok")
        assert len(federation.aws.front.accepted) > accepted, "Test did not exchange"

        # -- (c) ambient + GCP workload identity: the server's projected token, GcpSts
        dialog, extra = _new_connection(page, AMBIENT_GCP)
        _choose_source(page, extra, fields, "ambient")
        _type(extra, "GCP Workload Identity Provider", GCP_AUDIENCE)
        _type(extra, "GCP Project Id", GCP_PROJECT)
        more_target = open_section(dialog, "More target settings", "GCP STS Token URL")
        _type(more_target, "GCP STS Token URL", gcp_sts.token_url)
        _allow_loopback_http(dialog)
        _save(page, dialog, AMBIENT_GCP, "5-ambient-gcp")
        _test_ok(page, AMBIENT_GCP, "5-ambient-gcp-test-ok")
        assert [(a["kind"], a["sub"], a["subject_sha256"]) for a in gcp_sts.accepted] == [
            ("federated", "trainer", fingerprint(ambient_token_file.read_text()))], \
            "Test did not exchange the projected token at GcpSts"

        # -- (d) file + Azure: the Entra-like endpoint (HTTPS, trusted by the CA bundle)
        dialog, extra = _new_connection(page, FILE_AZURE)
        _choose_source(page, extra, fields, "file")
        _type(extra, "Path", str(azure_token_file))
        _type(extra, "Azure Tenant Id", AZURE_TENANT)
        _type(extra, "Azure Client Id", AZURE_CLIENT)
        more_target = open_section(dialog, "More target settings", "Azure Authority Host")
        _type(more_target, "Azure Authority Host", entra.url)
        _allow_loopback_http(dialog)
        _save(page, dialog, FILE_AZURE, "6-file-azure")
        _test_ok(page, FILE_AZURE, "6-file-azure-test-ok")
        assert [g.subject for g in entra.grants.values()] == ["trainer"], "Test: no exchange"
        assert entra.scopes == ["https://management.azure.com/.default"] and not entra.refusals
        seen.snapshot(page, "list of four")
        shot(page, "7-list-of-four")

        # -- used as a task would: KeylessHook from Airflow's database, fresh token files
        key = f"{federation.prefix}from-the-form.txt"
        body = "read with a form-made connection"
        federation.aws.put_object(federation.aws.bucket, key, body.encode())
        gcs.put_object(GCS_BUCKET, key, body.encode())
        use_output = tmp_path / "use.out"
        _write_token(token_file, idp.issue("trainer", source["audience"]), leak_guard)
        _write_token(ambient_token_file, idp.issue("trainer", "https:" + GCP_AUDIENCE),
                     leak_guard)
        _write_token(azure_token_file, idp.issue("trainer", AZURE_AUDIENCE), leak_guard)
        used = _use(airflow_server, federation, gcs, key, use_output)
        for conn_id in (CC_AWS, FILE_AWS, AMBIENT_GCP):
            assert used[conn_id]["body"] == body, conn_id
        for conn_id in (CC_AWS, FILE_AWS):
            assert used[conn_id]["target"] == load_config(config).target.model_dump(
                mode="json", exclude_none=True), conn_id
        assert used[FILE_AWS]["source"] == "file" and used[CC_AWS]["source"] == "client_credentials"
        assert used[AMBIENT_GCP]["source"] == "ambient"
        assert used[AMBIENT_GCP]["target"] == {"gcp": {
            **used[AMBIENT_GCP]["target"]["gcp"], "audience": GCP_AUDIENCE,
            "token_url": gcp_sts.token_url, "project_id": GCP_PROJECT}}
        assert "service_account" not in used[AMBIENT_GCP]["target"]["gcp"]
        assert gcp_sts.accepted[-1]["subject_sha256"] == fingerprint(
            ambient_token_file.read_text()), "the user did not exchange the projected token"
        reads = [(r["method"], r["object"], r["kind"], r["status"]) for r in gcs.requests]
        assert ("GET", key, "federated", 200) in reads, reads  # (and the bucket's metadata)
        assert all(r["status"] == 200 and r["principal"].endswith("/subject/trainer")
                   for r in gcs.requests), gcs.requests
        assert used[FILE_AZURE]["source"] == "file"
        assert used[FILE_AZURE]["target"] == {"azure": {
            "tenant_id": AZURE_TENANT, "client_id": AZURE_CLIENT, "authority_host": entra.url,
            "audience": AZURE_AUDIENCE}}
        issued = [t for t in entra.grants if fingerprint(t) == used[FILE_AZURE]["token_sha256"]]
        assert len(issued) == 1, "the user's Azure token is not one Entra issued"
        grant = entra.grant_for({"authorization": f"Bearer {issued[0]}"}, AZURE_SCOPE)
        assert grant is not None and grant.subject == "trainer"

        # -- reopen (b): the secret is masked, in its field and in the extra's JSON
        row(page, CC_AWS).get_by_role("button", name="Edit Connection").click()
        expect(dialog.get_by_role("heading", name="Edit Connection")).to_be_visible()
        extra = open_extra_fields(dialog)
        secret_input = field_group(extra, "Client Secret").locator("input")
        expect(secret_input).to_have_value("***")
        expect(secret_input).to_have_attribute("type", "password")
        expect(field_group(extra, "Client Id").get_by_role("textbox")).to_have_value("trainer")
        expect(field_group(extra, "AWS Role ARN").get_by_role("textbox")).to_have_value(
            aws["role_arn"])
        expect(field_group(extra, "Source type")).to_contain_text("client_credentials")
        field_group(extra, "Client Secret").get_by_role("button", name="Show value").click()
        expect(secret_input).to_have_attribute("type", "text")  # shown: "***", nothing more
        expect(secret_input).to_have_value("***")
        seen.snapshot(page, "reopened form")
        shot(page, "8-reopened-secret-shown-masked", tall=True)
        dialog.get_by_role("button", name="Extra Fields JSON").click()
        extra_json = dialog.get_by_role("region", name="Extra Fields JSON")
        expect(extra_json.locator(".monaco-editor")).to_be_visible()
        expect(extra_json.locator(".view-lines")).to_contain_text('"client_secret": "***"')
        seen.snapshot(page, "reopened extra JSON")
        shot(page, "9-reopened-extra-json-masked")

        # -- after a reload, the list and the form again
        page.reload()
        expect(row(page, CC_AWS)).to_be_visible()
        seen.snapshot(page, "list after reload")
        row(page, CC_AWS).get_by_role("button", name="Edit Connection").click()
        extra = open_extra_fields(dialog)
        expect(field_group(extra, "Client Secret").locator("input")).to_have_value("***")
        seen.snapshot(page, "form after reload")

        # -- a deliberately wrong audience: save, Test, read the hook's message
        _type(extra, "Audience", WRONG_AUDIENCE)
        dialog.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()
        accepted = len(federation.aws.front.accepted)
        message = press_test(page, CC_AWS, "Failed", "10-test-wrong-audience")
        seen.snapshot(page, "test wrong audience")
        assert "keyless: aud: " in message, message
        assert WRONG_AUDIENCE in message and "sts.amazonaws.com" in message, message
        assert "fix" in message, message
        assert len(federation.aws.front.accepted) == accepted, "a wrong aud was exchanged"

    # the masked "***" in the form never replaced the stored secret: the token was issued
    # (the failure is the aud claim, not client authentication)
    assert "invalid_client" not in message
    assert seen.rewritten_tests in (0, 5)  # 5 Tests; apache/airflow#73298 (0 once fixed)

    # -- the leak scan: HTML, API responses, the server's output and files, the user's output
    server_texts = {**airflow_server.texts(), "use": use_output.read_text()}
    database = (airflow_server.home / "airflow.db").read_bytes()
    responses = {f"connection API response {i}": text for i, text in enumerate(seen.responses)}
    issued = [secret, GCP_TOKEN_PREFIX, *entra.issued]
    leak_guard.forbid(*entra.issued)
    assert not leaks(seen.pages, *issued), "secret, token or JWT in the page HTML"
    assert not leaks(responses, *issued), "secret, token or JWT in a connection API response"
    assert not leaks(server_texts, *issued), "secret, token or JWT in the server's output"
    assert secret.encode() not in database, "the secret is stored unencrypted"
    assert any("POST /api/v2/connections/test" in text or
               "path=/api/v2/connections/test" in text for text in server_texts.values())
    leak_guard.add(*seen.pages.values(), *seen.responses, *server_texts.values())


