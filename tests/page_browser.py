"""Debian's chromium driven by Playwright, for the page's tests and its screenshots.

Playwright's own browser downloads are never used (they need the internet): the
browser is /usr/bin/chromium, which .ci/system installs in CI.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    sync_playwright,
)

CHROMIUM = Path("/usr/bin/chromium")
# Headless, and quiet: nothing but the page may make a request (no updates, no sync,
# no safe-browsing lists), so the tests can check that none leaves 127.0.0.1.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root, chromium refuses to start with its sandbox
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 390, "height": 844}  # an iPhone 12-15's CSS pixels
# Chrome logs an HTTP error answer to fetch() as a console error; a test that provokes
# one on purpose says which statuses it expects (`Visit.expect_status`).
_FAILED_LOAD = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")


@contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Visit:
    """A page on the service in a fresh browser context, with every request it made
    and every console error or uncaught exception it raised."""

    base: str
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    expected_statuses: set[int] = field(default_factory=set)

    def open(self, path: str = "/") -> Page:
        """Load `path` and wait until the page has read the models and the API's schema."""
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page

    def expect_status(self, *statuses: int) -> None:
        self.expected_statuses.update(statuses)

    def foreign_requests(self) -> list[str]:
        """Requests that went anywhere but this service (blob: URLs are the page's own)."""
        own = (f"{self.base}/", f"blob:{self.base}/")
        return [url for url in self.requests if not url.startswith(own)]

    def unexpected_errors(self) -> list[str]:
        def expected(text: str) -> bool:
            match = _FAILED_LOAD.search(text)
            return match is not None and int(match[1]) in self.expected_statuses

        return [text for text in self.errors if not expected(text)]


@contextmanager
def visit(browser: Browser, base: str, viewport: ViewportSize = DESKTOP) -> Iterator[Visit]:
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    seen = Visit(base, context, page)
    context.on("request", lambda request: seen.requests.append(request.url))

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append(message.text)

    context.on("console", console)
    page.on("pageerror", lambda error: seen.errors.append(f"uncaught: {error}"))
    try:
        yield seen
    finally:
        context.close()


def stroke(page: Page, points: list[tuple[float, float]], steps: int = 8) -> None:
    """Draw one stroke on the pad with the mouse; points are fractions of its size."""
    pad = page.locator("#canvas")
    pad.scroll_into_view_if_needed()  # the mouse reaches what is on screen only
    box = pad.bounding_box()
    assert box is not None, "the drawing pad is not on the page"

    def at(fx: float, fy: float) -> tuple[float, float]:
        return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

    page.mouse.move(*at(*points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*at(*point), steps=steps)
    page.mouse.up()


SEVEN = [(0.3, 0.27), (0.7, 0.27), (0.45, 0.8)]  # a digit drawn as MNIST's are: large, centred
