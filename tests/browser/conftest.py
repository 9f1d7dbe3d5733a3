"""Headless Chromium for browser tests: the system browser (never downloaded), one page per test, and a record of
every JavaScript error or failed request so a test can fail on them."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CXR_CHROMIUM", "/usr/bin/chromium")


@dataclass
class BrowserProblems:
    """JavaScript exceptions, console errors and HTTP errors seen by the page."""

    items: list[str] = field(default_factory=list)

    def assert_none(self) -> None:
        assert not self.items, "the browser reported problems:\n" + "\n".join(self.items)


@pytest.fixture
def chromium(monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (set CXR_CHROMIUM)")
    # Playwright's sync API runs an event loop on this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium):
    """A 1440×900 page; `page.problems` collects what went wrong in the browser."""
    context = chromium.new_context(viewport={"width": 1440, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(10_000)
    page = context.new_page()
    problems = BrowserProblems()
    page.on("pageerror", lambda exc: problems.items.append(f"page error: {exc}"))
    page.on(
        "console", lambda msg: msg.type == "error" and problems.items.append(f"console error: {msg.text}")
    )
    page.on("response", lambda r: r.status >= 400 and problems.items.append(f"HTTP {r.status}: {r.url}"))
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def artifacts_dir(request) -> Path:
    """test-artifacts/<test name>/ (gitignored): screenshots worth looking at when a test fails or the UI changes."""
    path = ARTIFACTS / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
