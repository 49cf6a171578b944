"""Screenshots of the page for the README and the site: docs/page/desktop.png and
docs/page/phone.png.

    .venv/bin/python tests/page_screenshots.py

Serves the bundled models on 127.0.0.1 (a free port), then in Debian's chromium: two
MNIST test images dropped as the ends of a walk, a drawn 7 scored, and a grid sampled
with a fixed seed. Needs the `dev` extra, /usr/bin/chromium and ../shared/data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from app_support import ROOT, image_file, read_mnist, serve
from page_browser import DESKTOP, PHONE, SEVEN, chromium, stroke, visit
from playwright.sync_api import Page, ViewportSize

OUT = ROOT / "docs" / "page"


def stage(page: Page, files: list[Path]) -> None:
    page.wait_for_selector("body[data-ready=true]")
    for end, path in zip("ab", files, strict=True):
        page.set_input_files("#file", path)
        page.wait_for_selector("#score[aria-busy=false]")
        page.click(f"#end-{end} button[data-from=input]")
        page.wait_for_selector(f"#end-{end}.set")
    page.wait_for_selector("#walk-result:not([hidden])")
    page.fill("#walk-slider", "4")
    page.click("#clear")
    stroke(page, SEVEN)
    page.wait_for_selector("#score[aria-busy=false]")
    page.fill("#n", "16")
    page.fill("#temperature", "0.8")
    page.fill("#seed", "7")
    page.click("#sample-go")
    page.wait_for_selector("#sample-meta:not([hidden])")
    page.evaluate("() => document.activeElement.blur()")  # no focus ring in the picture
    page.mouse.move(0, 0)  # nor a hovered button
    page.evaluate("() => window.scrollTo(0, 0)")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, serve(ROOT / "model_store", Path(tmp)) as server:
        digits = read_mnist(5)
        files = []
        for i in (1, 4):  # a 2 and a 4
            path = Path(tmp) / f"mnist-test-{i}.png"
            path.write_bytes(image_file(digits[i]))
            files.append(path)
        shots: dict[str, ViewportSize] = {"desktop": DESKTOP, "phone": PHONE}
        with chromium() as browser:
            for name, viewport in shots.items():
                with visit(browser, server.url, viewport) as seen:
                    seen.page.goto(server.url + "/")
                    stage(seen.page, files)
                    seen.page.screenshot(path=OUT / f"{name}.png", full_page=True)
                    assert not seen.foreign_requests() and not seen.unexpected_errors()
                print(OUT / f"{name}.png")


if __name__ == "__main__":
    main()
