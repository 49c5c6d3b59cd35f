"""Prefect's UI for the browser test, in front of the session's one Prefect server.

The session's server is ``prefect_test_harness``'s ``SubprocessASGIServer``: it starts uvicorn
with ``PREFECT__SERVER_EPHEMERAL=1``, and ``create_app`` mounts the UI only when the server
is not ephemeral, whatever ``PREFECT_UI_ENABLED`` says. So the API and its database stay the
harness's, and the UI (static files plus its ``/ui-settings``) is served here by Prefect's own
``create_ui_app`` in a second, API-less process, with ``PREFECT_UI_API_URL`` pointing the
browser at the harness's API: the setting Prefect documents for a UI hosted apart from its
API. That process has no database and no services; it is not a second Prefect server.

:func:`prefect_ui` starts it on a free loopback port, waits (bounded) for its settings
endpoint, yields its URL and output file, and stops it by PID.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from keyless.dev.process import terminate
from keyless.testing import free_ports

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

__all__ = ["PrefectUI", "app", "choose", "form_field", "pick_block", "prefect_ui", "search_catalog",
           "shown_value", "type_into"]

ROOT = Path(__file__).resolve().parents[2]


def app() -> object:
    """The uvicorn factory: Prefect's UI app (static bundles + ``/ui-settings``), no API."""
    from prefect.server.api.server import create_ui_app

    return create_ui_app(ephemeral=False)


@dataclass
class PrefectUI:
    """The running UI: its base URL and the file its process writes its output to."""

    url: str
    output: Path

    def read_output(self) -> str:
        return self.output.read_text(errors="replace") if self.output.exists() else ""


@contextmanager
def prefect_ui(api_url: str, *, timeout: float = 120.0) -> Iterator[PrefectUI]:
    """Serve Prefect's UI on loopback for the API at ``api_url`` until the ``with`` ends."""
    workdir = Path(tempfile.mkdtemp(prefix="keyless-prefect-ui-"))
    output = workdir / "ui.log"
    port = free_ports(1)[0]
    env = {**os.environ, "PREFECT_UI_ENABLED": "true", "PREFECT_UI_API_URL": api_url,
           "PREFECT_UI_STATIC_DIRECTORY": str(workdir / "static"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT__SERVER_EPHEMERAL", None)
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT), "--factory",
             "tests.prefect_blocks.prefect_ui:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, cwd=str(ROOT))
    ui = PrefectUI(url=f"http://127.0.0.1:{port}", output=output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prefect UI exited {process.returncode}: "
                                   f"{ui.read_output()[-2000:]}")
            try:
                response = httpx.get(f"{ui.url}/ui-settings", timeout=5)
                if response.status_code == 200 and response.json()["api_url"] == api_url:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prefect UI not up after {timeout}s: "
                                   f"{ui.read_output()[-2000:]}")
            time.sleep(0.5)
        yield ui
    finally:
        terminate(process, 20)
        shutil.rmtree(workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------- the form
# Prefect's v2 UI renders a block's JSON schema as nested ``div.group`` blocks, each with a
# <label> (the field's title, " (Optional)" appended when not required) whose ``for`` does not
# name the input; a union (anyOf/oneOf, Optional[...] included) is a row of tabs, one per member.

def _title_is(label: str) -> str:
    quoted = f"'{label}'" if "'" not in label else f'"{label}"'
    optional = f"'{label} (Optional)'" if "'" not in label else f'"{label} (Optional)"'
    return f"normalize-space()={quoted} or normalize-space()={optional}"


def form_field(scope: Locator | Page, label: str) -> Locator:
    """The innermost form group under ``scope`` whose own label is ``label`` (with or
    without " (Optional)"): the first such group in document order."""
    return scope.locator(
        f"xpath=.//label[{_title_is(label)}]"
        "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' group ')][1]"
    ).first


def choose(group: Locator, member: str, *, shows: str | None = None,
           attempts: int = 3) -> None:
    """Pick the union member ``member`` (a tab) in ``group``, as a person clicks it; when
    ``shows`` is given, wait until a field labelled ``shows`` appears in the group. The UI may
    re-render the form once while it settles, undoing an early click: click again, a bounded
    number of times (each wait is Playwright's, no sleep)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    tab = group.get_by_role("tab", name=member, exact=True).first
    for attempt in range(attempts):
        tab.click()
        try:
            expect(tab).to_have_attribute("aria-selected", "true", timeout=10_000)
            if shows is not None:
                form_field(group, shows).wait_for(state="visible", timeout=10_000)
            return
        except (AssertionError, PlaywrightError):
            if attempt == attempts - 1:
                raise


def open_catalog(page: Page, base_url: str) -> None:
    """The v2 UI's block catalog (Blocks -> "+"), opened by its address (Prefect 3.9 serves the
    v2 UI under ``/v2``, the v1 UI at the root): clicking the "+" on a Blocks page that lists
    blocks raced that page's own navigation in CI and stayed on the list, whose search box has
    the same placeholder."""
    page.goto(f"{base_url}/v2/blocks/catalog")
    page.get_by_text("Can't find a block for your service").wait_for()


def search_catalog(page: Page, text: str, *, shows: str, attempts: int = 3) -> None:
    """Type ``text`` into the block catalog's search box and wait until ``shows`` (e.g.
    "1 Block") is on the page. The catalog may re-render once while its block types load,
    emptying an early entry: type again, a bounded number of times."""
    from playwright.sync_api import Error as PlaywrightError

    box = page.get_by_placeholder("Search blocks")
    for attempt in range(attempts):
        box.fill(text)
        try:
            page.get_by_text(shows, exact=True).wait_for(timeout=15_000)
            return
        except PlaywrightError:
            if attempt == attempts - 1:
                raise


def type_into(group: Locator, value: str, *, member: str | None = None) -> Locator:
    """Type ``value`` into the group's text box (first choosing the union member ``member``,
    e.g. "str" rather than "None" for an optional string); returns the box."""
    if member is not None:
        choose(group, member)
    box = group.locator("input, textarea").first
    box.fill(value)
    return box


def shown_value(page: Page, label: str) -> Locator:
    """On a block's page: the value shown next to the key ``label``."""
    return page.locator(
        f"xpath=//span[normalize-space()='{label}']/following-sibling::span[1]").first


def pick_block(group: Locator, name: str) -> None:
    """In a field that references another block (a "Select a block..." button and "Add"),
    open the list, search for the saved block ``name`` (the list shows a page of blocks) and
    pick it, as a person would."""
    from playwright.sync_api import expect

    group.get_by_role("button", name="Select a block").click()
    group.page.get_by_placeholder("Search for a block...").fill(name)
    group.page.get_by_role("option", name=name, exact=True).click()
    expect(group.get_by_role("button", name="Select a block")).to_contain_text(name)
