"""Page helpers for the keyless connection form in Airflow 3.3's UI (Playwright), used by
:mod:`tests.airflow_provider.test_airflow_browser`.

Airflow's labels are not tied to their inputs: a field is found as the form row (``group``)
holding its label. Each ``conn-fields`` section (``schema.section``) is an accordion item of
the connection dialog, next to "Standard Fields", "Extra Fields" and "Extra Fields JSON".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keyless.audit import redact
from tests.airflow_provider.airflow_server import AirflowStandalone
from tests.support.browser import screenshot

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, Request, Response, Route, ViewportSize

NAME = "airflow-keyless"
TEST_TIMEOUT_MS = 90_000     # the Test button: token, discovery, JWKS, STS dry run
NORMAL: ViewportSize = {"width": 1280, "height": 900}
TALL: ViewportSize = {"width": 1280, "height": 5600}  # the whole dialog in one screenshot


@dataclass
class Seen:
    """What the browser was shown: page HTML snapshots and connection API responses."""

    pages: dict[str, str] = field(default_factory=dict)
    responses: list[str] = field(default_factory=list)
    rewritten_tests: int = 0

    def snapshot(self, page: Page, step: str) -> None:
        self.pages[step] = page.content()


def drop_portless_zero(seen: Seen) -> Callable[[Route, Request], None]:
    """A route handler for POST /api/v2/connections/test: drop ``"port": 0`` (Airflow 3.3.2's
    UI sends ``Number(null)`` for a connection without a port; apache/airflow#73298)."""
    def handle(route: Route, request: Request) -> None:
        body = request.post_data_json
        if isinstance(body, dict) and body.get("port") == 0:
            del body["port"]
            seen.rewritten_tests += 1
            route.continue_(post_data=json.dumps(body))
        else:
            route.continue_()
    return handle


def record_responses(page: Page, seen: Seen) -> None:
    def on_response(response: Response) -> None:
        if "/api/v2/connections" in response.url and response.request.method != "OPTIONS":
            try:
                seen.responses.append(response.text())
            except Exception:  # a redirect or an aborted body has no text
                pass
    page.on("response", on_response)


def field_group(dialog: Locator, label: str) -> Locator:
    """The form row whose label is ``label`` (Airflow's labels are not tied to their inputs)."""
    return dialog.get_by_role("group").filter(has=dialog.page.get_by_text(label, exact=True))


def choose(page: Page, combobox: Locator, option: str) -> list[str]:
    """Open a dropdown, choose ``option``; return every option it offered."""
    from playwright.sync_api import expect

    combobox.click()
    options = page.get_by_role("option")
    expect(options.first).to_be_visible()
    offered = [text.strip() for text in options.all_inner_texts()]
    page.get_by_role("option", name=option, exact=True).click()
    return offered


def type_json(page: Page, group: Locator, document: Any) -> None:
    """Replace a JSON editor's text (Monaco) with ``document``, as a paste would."""
    group.locator(".view-lines").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(json.dumps(document))


def shot(page: Page, step: str, *, tall: bool = False) -> None:
    """A screenshot ``airflow-keyless-<step>.png`` (``tall``: the whole dialog)."""
    if tall:
        page.set_viewport_size(TALL)
    screenshot(page, NAME, step)
    if tall:
        page.set_viewport_size(NORMAL)


def sign_in(page: Page, server: AirflowStandalone) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server.url}/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(server.admin_password())
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Admin")).to_be_visible()


def open_connections(page: Page) -> None:
    from playwright.sync_api import expect

    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    expect(page.get_by_role("button", name="Add Connection")).to_be_visible()


def row(page: Page, conn_id: str) -> Locator:
    return page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))


def open_section(dialog: Locator, title: str, first_label: str) -> Locator:
    """Expand the dialog's section ``title`` (an accordion item) and return its region, known
    by the label ``first_label`` of a field in it."""
    from playwright.sync_api import expect

    dialog.get_by_role("button", name=title, exact=True).click()
    region = dialog.get_by_role("region").filter(
        has=dialog.page.get_by_text(first_label, exact=True))
    expect(region).to_be_visible()
    return region


def open_extra_fields(dialog: Locator) -> Locator:
    """Expand the dialog's "Extra Fields" section (source type first) and return it."""
    return open_section(dialog, "Extra Fields", "Source type")


def labels_in_order(region: Locator, wanted: list[str]) -> list[str]:
    """The labels of ``region``'s form rows that are in ``wanted``, in page order."""
    texts = [" ".join(t.split()) for t in region.locator("label").all_inner_texts()]
    return [t for t in texts if t in wanted]


def press_test(page: Page, conn_id: str, outcome: str, step: str | None = None) -> str:
    """Press the connection's Test button; return the toast's message once ``outcome``
    ("Successful" or "Failed") shows (screenshot ``step`` of it, if given)."""
    from playwright.sync_api import expect

    row(page, conn_id).get_by_role("button", name="Test Connection").click()
    toast = page.get_by_role("status").filter(has_text=f"Test Connection {outcome}")
    expect(toast).to_be_visible(timeout=TEST_TIMEOUT_MS)
    toast.hover()  # keeps the toast up (it pauses under the pointer) for the screenshot
    message = toast.locator("[data-part=description]").inner_text()
    if step is not None:
        shot(page, step)
    page.mouse.move(0, 0)  # let it go: the next Test's toast is then the only one
    expect(toast).to_have_count(0, timeout=TEST_TIMEOUT_MS)
    return message


# ---------------------------------------------------------------------------- expectations
def widget_check(group: Locator, spec: dict[str, Any]) -> None:
    """The form row shows the widget the conn-field's schema asks for."""
    from playwright.sync_api import expect

    schema = spec["schema"]
    types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if schema.get("format") == "password":
        expect(group.locator("input[type=password]")).to_have_count(1)
    elif "enum" in schema:
        expect(group.get_by_role("combobox")).to_have_count(1)
    elif "boolean" in types:
        expect(group.get_by_role("checkbox")).to_have_count(1)
    elif "integer" in types or "number" in types:
        expect(group.get_by_role("spinbutton")).to_have_count(1)
    elif "object" in types:
        expect(group.locator(".monaco-editor")).to_have_count(1)
    elif "array" in types:
        expect(group.locator("textarea")).to_have_count(1)
    else:
        expect(group.locator("input[type=text], input:not([type])")).to_have_count(1)


def leaks(texts: dict[str, str], *secrets: str) -> list[str]:
    """Names of the texts holding one of ``secrets`` or something shaped like a JWT (never
    the values: a failure must not print a secret)."""
    return [name for name, text in texts.items()
            if any(secret in text for secret in secrets) or redact(text) != text]


