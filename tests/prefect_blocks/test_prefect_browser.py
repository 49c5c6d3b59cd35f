"""The KeylessCredentials block made by a person in Prefect 3.9's UI, in a real browser
(issue 12, Prefect half): headless Debian Chromium driven by Playwright opens the UI of the
session's Prefect server, picks Keyless Credentials in the blocks catalog, fills the form as a
person would (a client_credentials source against the reference IdP, the client secret typed
into a password box, an AWS target through the verifying STS front) and saves. After saving,
the block's page shows the secret masked, and the secret appears in no page the browser
rendered (block page, after a reload, the edit form) nor in any API response the browser
received. Saving the edit form unchanged keeps the stored secret. Then a flow loads the block
by name and reads an object from S3 (moto) through the verifying STS front.

Screenshots of every step go to ``artifacts/browser/prefect-keyless-block-*.png``. Leaks: the
IdP's client secrets and anything shaped like a JWT must be in none of the pages, the
browser's API responses, the UI process's output, the server's output (captured by
``leak_guard``) or the flow's logs as the API returns them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler

from prefect_keyless import KeylessCredentials
from tests.e2e.conftest import Federation, LeakGuard
from tests.prefect_blocks.conftest import PrefectServer
from tests.prefect_blocks.prefect_flows import s3_client
from tests.prefect_blocks.prefect_ui import (
    PrefectUI,
    choose,
    form_field,
    prefect_ui,
    search_catalog,
    shown_value,
    type_into,
)
from tests.support.browser import artifacts_dir, chromium_page, screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Response, Route

pytestmark = pytest.mark.e2e

NAME = "prefect-keyless-block"  # screenshots: artifacts/browser/prefect-keyless-block-*.png
API_MASK = "********"  # how Prefect's API and UI show a secret field


@pytest.fixture(scope="module")
def ui(prefect_server: PrefectServer) -> Iterator[PrefectUI]:
    with prefect_ui(prefect_server.api_url) as running:
        yield running


@flow
def read_with_block(block: str, bucket: str, key: str, endpoint_url: str) -> bytes:
    """Load the block by name and read ``key`` with its S3 client."""
    credentials = cast(KeylessCredentials, KeylessCredentials.load(block))  # sync in a flow
    body: bytes = s3_client(credentials, endpoint_url).get_object(
        Bucket=bucket, Key=key)["Body"].read()
    return body


def _loopback_only(route: Route) -> None:
    """The browser talks to loopback only (block logos, fonts on CDNs: refused at once)."""
    if route.request.url.startswith(("http://127.0.0.1", "http://localhost")):
        route.continue_()
    else:
        route.abort()


def _fill_form(page: Page, block_name: str, config: dict[str, Any]) -> None:
    """Fill the Keyless Credentials form as a person would, field by field."""
    source, aws = config["source"], config["target"]["aws"]
    page.locator("input[name=blockName]").fill(block_name)

    source_group = form_field(page, "Source")
    choose(source_group, "client_credentials", shows="Client Id")  # the source's `type`
    # optional fields are plain boxes (no "str"/"None" tabs to click first)
    type_into(form_field(source_group, "Token Url"), source["token_url"])
    type_into(form_field(source_group, "Client Id"), source["client_id"])
    secret_box = type_into(form_field(source_group, "Client Secret"), source["client_secret"])
    assert secret_box.get_attribute("type") == "password", "the secret is not a password box"
    type_into(form_field(source_group, "Audience"), source["audience"])

    aws_group = form_field(form_field(page, "Target"), "AWS")
    choose(aws_group, "Use AWS", shows="Role Arn")
    type_into(form_field(aws_group, "Role Arn"), aws["role_arn"])
    type_into(form_field(aws_group, "Region"), aws["region"])
    type_into(form_field(aws_group, "Session Name"), aws["session_name"])
    type_into(form_field(aws_group, "Sts Endpoint Url"), aws["sts_endpoint_url"])

    insecure = form_field(page, "Allow Insecure Http").get_by_role("switch")
    insecure.click()  # the IdP, STS front and moto are http:// on loopback
    assert insecure.get_attribute("aria-checked") == "true"


def _close_up(element: Locator, step: str) -> None:
    """A picture of one element at full size (``prefect-keyless-block-<step>.png``)."""
    element.screenshot(path=str(artifacts_dir() / f"{NAME}-{step}.png"))


def _block_page_ready(page: Page) -> None:
    shown_value(page, "Client Secret").wait_for(state="visible")


def test_a_person_makes_the_block_in_the_ui_and_a_flow_reads_s3_with_it(
        prefect_server: PrefectServer, ui: PrefectUI, federation: Federation,
        leak_guard: LeakGuard) -> None:
    config = federation.config(session_name="{job_id}-browser")
    secret = config["source"]["client_secret"]
    block_name = f"from-the-ui-{uuid.uuid4().hex[:8]}"
    pages: list[str] = []
    responses: list[str] = []

    def record(response: Response) -> None:
        if response.url.startswith(prefect_server.api_url):
            try:
                responses.append(f"{response.url} {response.text()}")
            except Exception:  # a body the browser did not keep (redirect, aborted)
                pass

    with chromium_page(NAME) as page:
        page.route("**/*", _loopback_only)
        page.on("response", record)

        # 1. Blocks -> "+" (add a block) -> the catalog, narrowed to our card
        page.goto(f"{ui.url}/")
        page.get_by_role("link", name="Blocks", exact=True).first.click()
        page.locator("a[href$='/blocks/catalog']").first.click()  # the "+" by "Blocks"
        search_catalog(page, "keyless credentials", shows="1 Block")  # narrowed to ours
        card = page.locator("[data-slot=card]").filter(has_text="Keyless Credentials")
        screenshot(page, NAME, "1-catalog")

        # 2. the empty form
        card.get_by_role("link", name="Create").click()
        page.get_by_role("button", name="Save").wait_for()
        page.wait_for_load_state("networkidle")
        screenshot(page, NAME, "2-empty-form")

        # 3. the form filled in, the secret dotted
        _fill_form(page, block_name, config)
        screenshot(page, NAME, "3-filled-form")
        _close_up(form_field(page, "Source"), "3-filled-form-source")

        # 4. saved: the block's page shows the secret masked, also after a reload
        page.get_by_role("button", name="Save").click()
        page.wait_for_url("**/blocks/block/**")
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        assert shown_value(page, "Client Id").inner_text() == "trainer"
        assert shown_value(page, "Role Arn").inner_text() == config["target"]["aws"]["role_arn"]
        screenshot(page, NAME, "4-saved-block")
        _close_up(page.locator("dd").filter(has_text="Client Secret").first, "4-saved-source")
        block_html = page.content()
        page.reload()
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        reloaded_html = page.content()

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
        edit_html = page.content()
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(lambda url: "/edit" not in url)
        _block_page_ready(page)
        assert shown_value(page, "Client Secret").inner_text() == API_MASK
        screenshot(page, NAME, "6-saved-again")
        pages.append(page.content())

    for html in (block_html, reloaded_html, edit_html):
        assert secret not in html, "the client secret is in a page after saving"
    pages += [block_html, reloaded_html, edit_html]
    assert not any(secret in body for body in responses), "the API sent the secret back"
    assert any(API_MASK in body for body in responses), "no block document was recorded"

    # 6. the stored block is what the person typed (the edit kept the secret)
    loaded = cast(KeylessCredentials, KeylessCredentials.load(block_name))
    assert loaded.source.client_secret.get_secret_value() == secret  # type: ignore[union-attr]
    assert loaded.target.aws.role_arn == config["target"]["aws"]["role_arn"]  # type: ignore[union-attr]
    stored = httpx.get(f"{prefect_server.api_url}/block_documents/{loaded._block_document_id}")
    assert secret not in stored.text and API_MASK in stored.text

    # 7. a flow loads the block by name and reads S3 through the verifying STS front
    key = f"{federation.prefix}from-the-ui.bin"
    federation.aws.put_object(federation.aws.bucket, key, b"read with a block made in the UI")
    state = read_with_block(block=block_name, bucket=federation.aws.bucket, key=key,
                            endpoint_url=federation.aws.s3_url, return_state=True)
    assert state.result() == b"read with a block made in the UI"
    flow_run_id = state.state_details.flow_run_id
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        flow_run_name = client.read_flow_run(flow_run_id).name
    accepted = [a["session_name"] for a in federation.aws.front.accepted]
    assert f"{flow_run_name}-browser" in accepted, accepted  # the front verified our token
    reads = [f for f in federation.aws.front.forwarded
             if f["method"] == "GET" and f["session_name"] == f"{flow_run_name}-browser"]
    assert reads and all(f["status"] == 200 for f in reads)

    # 8. leaks: pages, API responses, the UI's output, the flow's logs from the API
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    assert logs, "the flow run shipped no logs: the scan would prove nothing"
    leak_guard.add(*pages, *responses, ui.read_output(), stored.text,
                   *(f"{log.name} {log.level} {log.message}" for log in logs))
