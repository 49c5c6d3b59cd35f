"""Keyless blocks made by a person in Prefect 3.9's UI, in a real browser (issue 12, Prefect
half; issue 21: forms a person can fill): headless Debian Chromium driven by Playwright opens
the UI of the session's Prefect server, picks Keyless Credentials in the blocks catalog and
fills the form as a person would, typing into labelled boxes and choosing tabs, no JSON typed,
for the four common cases:

(b) a client_credentials source against the reference IdP (the client secret typed into a
password box) + an AWS role through the verifying STS front; (a) a file source (a token the
IdP issued, in a file) + the AWS role; (c) the ambient source + GCP workload identity; (d) a
file source + Azure (the Entra-like loopback endpoint). Then a Keyless AWS Credentials block:
its "Keyless Credentials" field picks (a) from the saved blocks; its "Block Type" is preset
(what a referencing S3Bucket builds it by) and is in what the form posts.

After saving (b), its page shows the secret masked, and the secret appears in no page the
browser rendered (block page, after a reload, the edit form) nor in any API response the
browser received; saving the edit form unchanged keeps the stored secret. Then a separate
process loads every block by name (``KeylessCredentials.load``) in a flow: (a) and (b) read an
S3 object (moto) through the verifying STS front, each on its own session name; (c) and (d)
hold the config that was typed, and (d) gets an Azure token from the Entra-like endpoint (a
federated client assertion it verifies against the IdP's keys); an ``S3Bucket`` built in
Python on the UI-made Keyless AWS Credentials block, loaded by name there, reads S3 as
``KeylessAwsCredentials`` on (a)'s identity.

Screenshots of every step go to ``artifacts/browser/prefect-keyless-block-*.png``. Leaks: the
IdP's client secrets, the tokens in the files, the Entra tokens and anything shaped like a JWT
must be in none of the pages, the browser's API responses, the UI process's output, the
server's output (captured by ``leak_guard``), the using process's output or the flow's logs as
the API returns them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect_aws.s3 import S3Bucket

from keyless import load_config
from keyless.secret import fingerprint
from prefect_keyless import KeylessAwsCredentials, KeylessCredentials
from tests.e2e.conftest import Federation, LeakGuard
from tests.prefect_blocks.conftest import PrefectServer
from tests.prefect_blocks.prefect_ui import (
    PrefectUI,
    choose,
    form_field,
    open_catalog,
    pick_block,
    prefect_ui,
    search_catalog,
    shown_value,
    type_into,
)
from tests.prefect_blocks.test_prefect_aws_gcp_blocks import form_data
from tests.support.browser import artifacts_dir, chromium_page, screenshot
from tests.support.idp import ReferenceIdP
from tests.support.token_servers import EntraLike

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Request, Response, Route

pytestmark = pytest.mark.e2e

NAME = "prefect-keyless-block"  # screenshots: artifacts/browser/prefect-keyless-block-*.png
API_MASK = "********"  # how Prefect's API and UI show a secret field
GCP_AUDIENCE = ("//iam.googleapis.com/projects/123456789/locations/global/"
                "workloadIdentityPools/training/providers/reference-idp")
GCP_SERVICE_ACCOUNT = "trainer@ml-project.iam.gserviceaccount.com"
AZURE_TENANT, AZURE_CLIENT = "72f988bf-86f1-41af-91ab-2d7cd011db47", "0c6a9e3c-trainer"
AZURE_AUDIENCE = "api://AzureADTokenExchange"
STORAGE_SCOPE = "https://storage.azure.com/.default"

#: The using process: one flow loads each block by name; S3 reads for the AWS ones, the config
#: of every one, an Azure token for the Azure one, and the S3Bucket on the UI-made
#: KeylessAwsCredentials. Writes one JSON document to ``job["out"]``.
USE_BLOCKS = """
import json, sys
from pathlib import Path
from botocore.config import Config
from prefect import flow
from prefect.runtime import flow_run
from prefect_aws.s3 import S3Bucket
from keyless.secret import fingerprint
from prefect_keyless import KeylessCredentials

job = json.loads(sys.argv[1])


@flow
def use_blocks() -> dict:
    out = {"flow_run": flow_run.name, "flow_run_id": str(flow_run.id)}
    for case, name in job["blocks"].items():
        block = KeylessCredentials.load(name)
        seen = {"config": block.keyless_config().model_dump(mode="json")}
        if case in job["read_s3"]:
            s3 = block.get_s3_client(endpoint_url=job["s3_url"], config=Config(
                s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}))
            body = s3.get_object(Bucket=job["bucket"], Key=job["key"])["Body"].read()
            seen["body"] = body.decode()
        if case == job["azure"]:
            credential = block.get_azure_credential(connection_verify=job["entra_ca"])
            seen["azure_token"] = fingerprint(credential.get_token(job["scope"]).token)
        out[case] = seen
    bucket = S3Bucket.load(job["s3_bucket"])
    out["s3_bucket"] = {"class": type(bucket.credentials).__name__,
                        "body": bucket.read_path(job["key"]).decode()}
    return out


Path(job["out"]).write_text(json.dumps(use_blocks()))
"""


@pytest.fixture(scope="module")
def ui(prefect_server: PrefectServer) -> Iterator[PrefectUI]:
    with prefect_ui(prefect_server.api_url) as running:
        yield running


@pytest.fixture
def entra(reference_idp: ReferenceIdP) -> Iterator[EntraLike]:
    """Entra-like endpoint (HTTPS, self-signed): the app trusts the IdP's ``trainer``."""
    server = EntraLike().start()
    assert isinstance(server, EntraLike)
    server.register(AZURE_TENANT, AZURE_CLIENT, issuer=reference_idp.issuer, subject="trainer",
                    audience=AZURE_AUDIENCE)
    yield server
    server.stop()


def _loopback_only(route: Route) -> None:
    """The browser talks to loopback only (block logos, fonts on CDNs: refused at once)."""
    if route.request.url.startswith(("http://127.0.0.1", "http://localhost")):
        route.continue_()
    else:
        route.abort()


# ---------------------------------------------------------------------- filling the forms
def _fill_block(page: Page, block_name: str, config: dict[str, Any], target_title: str,
                source_labels: dict[str, str], target_labels: dict[str, str]) -> Locator:
    """Fill the Keyless Credentials form as a person would: the block's name, the source's tab
    (its ``type``) and boxes, the target's "Use ..." tab and boxes (``*_labels``: form label
    → config key), and "Allow Insecure Http" when the config asks for it. Returns the source's
    group."""
    source = config["source"]
    target = next(iter(config["target"].values()))
    page.locator("input[name=blockName]").fill(block_name)
    source_group = form_field(page, "Source")
    choose(source_group, source["type"], shows=next(iter(source_labels), None))
    for label, key in source_labels.items():
        type_into(form_field(source_group, label), source[key])
    target_group = form_field(form_field(page, "Target"), target_title)
    choose(target_group, f"Use {target_title}", shows=next(iter(target_labels)))
    for label, key in target_labels.items():
        type_into(form_field(target_group, label), target[key])
    if config.get("allow_insecure_http"):
        insecure = form_field(page, "Allow Insecure Http").get_by_role("switch")
        insecure.click()  # the IdP, STS front and moto are http:// on loopback
        assert insecure.get_attribute("aria-checked") == "true"
    return source_group


def _save(page: Page, step: str) -> str:
    """Save the form; on the saved block's page, a screenshot; returns the page's HTML."""
    screenshot(page, NAME, f"{step}-filled-form")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**/blocks/block/**")
    page.wait_for_load_state("networkidle")
    screenshot(page, NAME, f"{step}-saved")
    return page.content()


def _open_form(page: Page, url: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Save").wait_for()
    page.wait_for_load_state("networkidle")


def _close_up(element: Locator, step: str) -> None:
    """A picture of one element at full size (``prefect-keyless-block-<step>.png``)."""
    element.screenshot(path=str(artifacts_dir() / f"{NAME}-{step}.png"))


def _block_page_ready(page: Page) -> None:
    shown_value(page, "Client Secret").wait_for(state="visible")


# ---------------------------------------------------------------------- the cases
def _configs(federation: Federation, token_dir: Path, entra: EntraLike) -> dict[str, Any]:
    """What the person types, case by case, as keyless configs."""
    cc_aws = federation.config(session_name="{job_id}-browser")
    aws = cc_aws["target"]["aws"]
    file_aws = {"source": {"type": "file", "path": str(token_dir / "aws-token")},
                "target": {"aws": {**aws, "session_name": "{job_id}-file"}},
                "allow_insecure_http": True}
    ambient_gcp = {"source": {"type": "ambient"}, "target": {"gcp": {
        "audience": GCP_AUDIENCE, "service_account": GCP_SERVICE_ACCOUNT,
        "project_id": "ml-project"}}}
    file_azure = {"source": {"type": "file", "path": str(token_dir / "azure-token")},
                  "target": {"azure": {"tenant_id": AZURE_TENANT, "client_id": AZURE_CLIENT,
                                       "authority_host": entra.url}}}
    return {"b": cc_aws, "a": file_aws, "c": ambient_gcp, "d": file_azure}


AWS_LABELS = {"Role Arn": "role_arn", "Region": "region", "Session Name": "session_name",
              "Sts Endpoint Url": "sts_endpoint_url"}
FILLED: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "b": ("AWS", {"Token Url": "token_url", "Client Id": "client_id",
                  "Client Secret": "client_secret", "Audience": "audience"}, AWS_LABELS),
    "a": ("AWS", {"Path": "path"}, AWS_LABELS),
    "c": ("GCP", {}, {"Audience": "audience", "Service Account": "service_account",
                      "Project Id": "project_id"}),
    "d": ("Azure", {"Path": "path"}, {"Tenant Id": "tenant_id", "Client Id": "client_id",
                                      "Authority Host": "authority_host"}),
}


def _use_blocks(prefect_server: PrefectServer, federation: Federation, entra: EntraLike,
                blocks: dict[str, str], s3_bucket: str, key: str,
                output: Path) -> dict[str, Any]:
    """Run :data:`USE_BLOCKS` in a new process against the session's server."""
    job = {"blocks": blocks, "read_s3": ["a", "b"], "azure": "d", "s3_bucket": s3_bucket,
           "s3_url": federation.aws.s3_url, "bucket": federation.aws.bucket, "key": key,
           "entra_ca": str(entra.ca_file), "scope": STORAGE_SCOPE, "out": str(output)}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PREFECT_API_URL=prefect_server.api_url, PYTHONUNBUFFERED="1")
    run = subprocess.run([sys.executable, "-c", USE_BLOCKS, json.dumps(job)], env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    (output.parent / "use.log").write_text(run.stdout + run.stderr)
    assert run.returncode == 0, run.stderr[-3000:]
    used: dict[str, Any] = json.loads(output.read_text())
    used["printed"] = run.stdout + run.stderr
    return used


# ---------------------------------------------------------------------- the test
def test_a_person_makes_the_blocks_in_the_ui_and_a_flow_uses_them(
        prefect_server: PrefectServer, ui: PrefectUI, federation: Federation,
        entra: EntraLike, leak_guard: LeakGuard, tmp_path: Path) -> None:
    configs = _configs(federation, tmp_path, entra)
    config = configs["b"]
    secret = config["source"]["client_secret"]
    tokens = {"aws-token": federation.idp.issue("trainer", "https://sts.amazonaws.com"),
              "azure-token": federation.idp.issue("trainer", AZURE_AUDIENCE)}
    for file, token in tokens.items():
        (tmp_path / file).write_text(token)
        os.chmod(tmp_path / file, 0o600)
    leak_guard.forbid(*tokens.values())
    suffix = uuid.uuid4().hex[:8]
    names = {case: f"from-the-ui-{case}-{suffix}" for case in configs}
    aws_block = f"keyless-aws-from-the-ui-{suffix}"
    pages: list[str] = []
    responses: list[str] = []
    posted: list[dict[str, Any]] = []
    timings: dict[str, float] = {}

    def record(response: Response) -> None:
        if response.url.startswith(prefect_server.api_url):
            try:
                responses.append(f"{response.url} {response.text()}")
            except Exception:  # a body the browser did not keep (redirect, aborted)
                pass

    def record_post(request: Request) -> None:
        if request.method == "POST" and request.url == f"{prefect_server.api_url}/block_documents/":
            posted.append(json.loads(request.post_data or "{}"))

    started = time.monotonic()
    with chromium_page(NAME) as page:
        page.route("**/*", _loopback_only)
        page.on("response", record)
        page.on("request", record_post)

        # 1. the block catalog (Blocks -> "+"), narrowed to our card
        open_catalog(page, ui.url)
        search_catalog(page, "keyless credentials", shows="1 Block")  # narrowed to ours
        card = page.locator("[data-slot=card]").filter(has_text="Keyless Credentials")
        screenshot(page, NAME, "1-catalog")

        # 2. the empty form
        create = card.get_by_role("link", name="Create")
        create_url = f"{ui.url}{create.get_attribute('href')}"
        create.click()
        page.get_by_role("button", name="Save").wait_for()
        page.wait_for_load_state("networkidle")
        screenshot(page, NAME, "2-empty-form")

        # 3. (b) client_credentials + AWS, the secret dotted
        source_group = _fill_block(page, names["b"], config, *FILLED["b"])
        secret_box = form_field(source_group, "Client Secret").locator("input").first
        assert secret_box.get_attribute("type") == "password", "the secret is not a password box"
        screenshot(page, NAME, "3-filled-form")
        _close_up(source_group, "3-filled-form-source")

        # 4. saved: the block's page shows the secret masked, also after a reload
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/blocks/block/**")
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        assert shown_value(page, "Client Id").inner_text() == "trainer"
        assert shown_value(page, "Role Arn").inner_text() == config["target"]["aws"]["role_arn"]
        screenshot(page, NAME, "4-saved-block")
        _close_up(page.locator("dd").filter(has_text="Client Secret").first, "4-saved-source")
        pages.append(page.content())
        page.reload()
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        pages.append(page.content())

        # 5. the edit form: the secret is not sent back to the browser; saving it unchanged
        page.get_by_role("button", name="Open menu").click()
        page.get_by_role("menuitem", name="Edit").click()
        page.get_by_role("button", name="Save").wait_for()
        page.wait_for_load_state("networkidle")
        edit_secret = form_field(form_field(page, "Source"), "Client Secret")
        edit_box = edit_secret.locator("input").first
        assert edit_box.get_attribute("type") == "password"
        assert edit_box.input_value() != secret
        screenshot(page, NAME, "5-edit-form")
        pages.append(page.content())
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(lambda url: "/edit" not in url)
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        screenshot(page, NAME, "6-saved-again")
        pages.append(page.content())
        timings["b: fill, save, reload, edit"] = time.monotonic() - started

        # 7-9. (a) file + AWS, (c) ambient + GCP, (d) file + Azure: the same form again
        for step, case in (("7-file-aws", "a"), ("8-ambient-gcp", "c"),
                           ("9-file-azure", "d")):
            began = time.monotonic()
            _open_form(page, create_url)
            _fill_block(page, names[case], configs[case], *FILLED[case])
            pages.append(_save(page, step))
            timings[case] = time.monotonic() - began

        # 10. a Keyless AWS Credentials block on (a), found in the catalog; its form picks
        #     the saved keyless block and shows its preset Block Type
        began = time.monotonic()
        page.goto(create_url.rsplit("/catalog", 1)[0] + "/catalog")
        search_catalog(page, "keyless aws", shows="1 Block")
        page.locator("[data-slot=card]").filter(has_text="Keyless AWS Credentials").get_by_role(
            "link", name="Create").click()
        page.get_by_role("button", name="Save").wait_for()
        page.wait_for_load_state("networkidle")
        page.locator("input[name=blockName]").fill(aws_block)
        type_into(form_field(page, "Region Name"), federation.aws.region)
        type_into(form_field(page, "Endpoint URL"), federation.aws.s3_url)
        pick_block(form_field(page, "Keyless Credentials"), names["a"])
        block_type = form_field(page, "Block Type")
        assert "keyless-aws-credentials" in block_type.inner_text()
        _close_up(block_type, "10-block-type")
        pages.append(_save(page, "10-keyless-aws"))
        timings["keyless aws"] = time.monotonic() - began
    timings["browser"] = time.monotonic() - started

    assert not any(secret in html for html in pages), "the client secret is in a page"
    assert not any(secret in body for body in responses), "the API sent the secret back"
    assert any(API_MASK in body for body in responses), "no block document was recorded"

    # what the form posted for the Keyless AWS Credentials block: its Block Type, and the
    # data the API-level test posts for such a block (test_prefect_aws_gcp_blocks.form_data)
    aws_post = next(p for p in posted if p.get("name") == aws_block)
    assert aws_post["data"]["block_type_slug"] == "keyless-aws-credentials"
    assert aws_post["data"] == form_data(
        KeylessAwsCredentials.model_json_schema(),
        aws_post["data"]["keyless"]["$ref"]["block_document_id"],
        {"region_name": federation.aws.region,
         "aws_client_parameters.endpoint_url": federation.aws.s3_url})

    # the stored blocks are what the person typed (the edit kept (b)'s secret)
    loaded = cast(KeylessCredentials, KeylessCredentials.load(names["b"]))
    assert loaded.source.client_secret.get_secret_value() == secret  # type: ignore[union-attr]
    stored = httpx.get(f"{prefect_server.api_url}/block_documents/{loaded._block_document_id}")
    assert secret not in stored.text and API_MASK in stored.text

    # an S3Bucket built in Python on the UI-made Keyless AWS Credentials block
    s3_bucket = f"s3-on-the-ui-block-{suffix}"
    S3Bucket(bucket_name=federation.aws.bucket,
             credentials=KeylessAwsCredentials.load(aws_block)).save(s3_bucket)

    # a separate process loads each block by name in a flow and uses it
    key = f"{federation.prefix}from-the-ui.bin"
    federation.aws.put_object(federation.aws.bucket, key, b"read with a block made in the UI")
    began = time.monotonic()
    used = _use_blocks(prefect_server, federation, entra, names, s3_bucket, key,
                       tmp_path / "used.json")
    timings["using process"] = time.monotonic() - began
    print("browser test timings (s):", {k: round(v, 1) for k, v in timings.items()})
    leak_guard.forbid(*entra.issued)
    for case, typed in configs.items():
        assert used[case]["config"] == load_config(typed).model_dump(mode="json"), case
    for case, session in (("a", "file"), ("b", "browser")):
        assert used[case]["body"] == "read with a block made in the UI", case
        reads = [f for f in federation.aws.front.forwarded
                 if f["session_name"] == f"{used['flow_run']}-{session}"]
        assert reads and all(f["status"] == 200 for f in reads), (case, reads)
    assert used["s3_bucket"] == {"class": "KeylessAwsCredentials",
                                 "body": "read with a block made in the UI"}
    accepted = [a["session_name"] for a in federation.aws.front.accepted]
    assert f"{used['flow_run']}-browser" in accepted, accepted  # the front verified our token
    assert f"{used['flow_run']}-file" in accepted, accepted
    assert used["d"]["azure_token"] in {fingerprint(t) for t in entra.issued}
    assert [g.subject for g in entra.grants.values()] == ["trainer"]
    assert entra.scopes == [STORAGE_SCOPE]

    # leaks: pages, API responses, the UI's output, the using process, the flow's logs
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(
            any_=[used["flow_run_id"]])))
    assert logs, "the flow run shipped no logs: the scan would prove nothing"
    leak_guard.add(*pages, *responses, ui.read_output(), stored.text, used["printed"],
                   *(f"{log.name} {log.level} {log.message}" for log in logs))
