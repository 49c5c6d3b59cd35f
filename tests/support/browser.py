"""Playwright driving Debian's Chromium (``/usr/bin/chromium``, installed by ``dev.py test``);
the test tool never downloads a browser of its own.

``chromium_page(name)`` yields a fresh page in a new headless browser with the flags this
machine needs (no network but loopback: background networking, component updates and QUIC off)
and, on exit, leaves a last screenshot ``<name>-final.png`` even when the test failed.
``screenshot(page, name, step)`` saves a named step. Screenshots go to ``artifacts/browser/``
at the repository root (``KEYLESS_ARTIFACTS`` overrides the root), where a reviewer opens them.
The tests skip with the reason when Chromium or Playwright is missing.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Where screenshots go: ``$KEYLESS_ARTIFACTS/browser`` or ``<repo>/artifacts/browser``."""
    base = Path(os.environ.get("KEYLESS_ARTIFACTS", ROOT / "artifacts"))
    directory = base / "browser"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, name: str, step: str) -> Path:
    """Save a full-page screenshot ``<name>-<step>.png`` and return its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}-{step}")
    path = artifacts_dir() / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def chromium_page(name: str, *, timeout_ms: float = 30_000) -> Iterator[Page]:
    """A page in a new headless Debian Chromium (1280x900), closed on exit after a final
    screenshot. Skips the test when Chromium or Playwright is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: dev.py test installs Debian's chromium as root")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(timeout_ms)
            try:
                yield page
            finally:
                try:
                    screenshot(page, name, "final")
                except Exception:  # a last picture is best effort
                    pass
        finally:
            browser.close()
