"""The page at `/`, in a real browser (Debian's chromium through Playwright) against
vae-serve on 127.0.0.1 serving the bundled models (model_store/: mnist and
fashion-mnist, each at its newest version).

Each test opens the page in a fresh browser context and, at its end, checks that no
request left the service and that the console showed no error (but the HTTP error
answers the test provoked on purpose). What the page shows is compared with what the
API answers for the same input.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from app_support import (
    BUNDLED_STORE,
    Server,
    bundled_version,
    image_file,
    read_mnist,
    require,
    serve,
)
from page_browser import CHROMIUM, PHONE, SEVEN, Visit, chromium, stroke, visit
from PIL import Image
from playwright.sync_api import Browser, Page, expect

MNIST_SIDE = 28  # both bundled models take 28×28 grey images


# Module scope, not session: Playwright's sync API keeps an event loop running on this
# thread while it is open, and async tests that run after it would find that loop.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(CHROMIUM.exists(), f"{CHROMIUM} is missing (apt-get install chromium)")
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serve(BUNDLED_STORE, tmp_path_factory.mktemp("page"), VAE_RELOAD_INTERVAL_S="0") as server:
        yield server


@contextmanager
def checked_visit(browser: Browser, base: str, **options: Any) -> Iterator[Visit]:
    """A visit that, at its end, had no request leave the service and no console error."""
    with visit(browser, base, **options) as seen:
        yield seen
        assert seen.foreign_requests() == [], "requests that left the service"
        assert seen.unexpected_errors() == [], "console errors"


@pytest.fixture
def seen(browser: Browser, server: Server) -> Iterator[Visit]:
    with checked_visit(browser, server.url) as visiting:
        yield visiting


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two MNIST test images (a 7 and a 2) as PNG files, as a user would have them."""
    folder = tmp_path_factory.mktemp("digits")
    paths = []
    for i, pixels in enumerate(read_mnist(2)):
        path = folder / f"mnist-test-{i}.png"
        path.write_bytes(image_file(pixels))
        paths.append(path)
    return paths


def scored(page: Page) -> str:
    """The anomaly score shown, once the page has the answer for the current input."""
    page.wait_for_selector("#score[aria-busy=false]")
    return page.inner_text("#n-anomaly")


def map_images(page: Page) -> list[list[int]]:
    """[complete, naturalWidth, naturalHeight] of the three panels of the /elbo/map PNG."""
    return page.eval_on_selector_all(  # type: ignore[no-any-return]
        "#maps img", "imgs => imgs.map(i => [Number(i.complete), i.naturalWidth, i.naturalHeight])"
    )


def image_bytes(page: Page, selector: str) -> bytes:
    """The bytes of the image file an <img> shows (its blob: URL, read in the page)."""
    data = page.eval_on_selector(
        selector,
        "async img => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))",
    )
    return bytes(data)


def canvas_grey(page: Page, selector: str) -> np.ndarray:
    """The red channel of a canvas (grey for grey models) as uint8 (H, W)."""
    width, height, values = page.eval_on_selector(
        selector,
        """c => [c.width, c.height, Array.from(c.getContext('2d')
            .getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 4 === 0))]""",
    )
    return np.asarray(values, np.uint8).reshape(height, width)


def upload(path: Path) -> dict[str, Any]:
    return {"images": (path.name, path.read_bytes(), "image/png")}


def test_drawing_is_scored_while_the_stroke_goes_on(seen: Visit) -> None:
    page = seen.open()
    assert "28×28 grey" in page.inner_text("#model-info")
    assert page.eval_on_selector("#seen", "c => [c.width, c.height]") == [MNIST_SIDE] * 2
    assert page.inner_text("#n-anomaly") == "–"

    box = page.locator("#canvas").bounding_box()
    assert box is not None
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in SEVEN]
    page.mouse.move(*at[0])
    page.mouse.down()
    with page.expect_request(lambda request: "/elbo?" in request.url):
        page.mouse.move(*at[1], steps=10)
    # The mouse is still down: the score was asked for while drawing, not after.
    page.mouse.move(*at[2], steps=10)
    page.mouse.up()
    first = scored(page)
    assert first != "–"
    assert map_images(page) == [[1, 3 * MNIST_SIDE, MNIST_SIDE]] * 3
    model_view = canvas_grey(page, "#seen")
    assert model_view.max() == 255 and (model_view == 0).mean() > 0.5, "white strokes on black"

    # Scribbling across the digit makes it less like the training images.
    stroke(page, [(0.1, 0.5), (0.9, 0.55), (0.1, 0.65), (0.9, 0.7), (0.15, 0.2)])
    second = scored(page)
    assert float(second) > float(first), (first, second)
    assert page.inner_text("#flag") != "Draw something to score it"

    page.click("#undo")
    assert scored(page) == first  # the same pixels get the same score: the seed is fixed


def test_a_dropped_mnist_image_shows_its_reconstruction_and_heat_map(
    seen: Visit, server: Server, digits: list[Path]
) -> None:
    page = seen.open()
    page.set_input_files("#file", digits[0])
    page.wait_for_selector("#maps[data-state=shown]")
    score = scored(page)
    assert map_images(page) == [[1, 3 * MNIST_SIDE, MNIST_SIDE]] * 3
    # What the page shows is the API's answer for that file, byte for byte.
    expected_map = httpx.post(f"{server.url}/elbo/map?zoom=1", files=upload(digits[0]))
    assert image_bytes(page, "#heatmap") == expected_map.content
    answer = httpx.post(f"{server.url}/elbo", files=upload(digits[0])).json()
    assert score == f"{answer['results'][0]['anomaly_score']:.1f}"
    assert page.inner_text("#flag").startswith("Looks normal")  # a real test digit
    assert "resize" not in page.inner_text("#input-note")

    # Another size: sent with resize=true, and the page says so.
    big = digits[0].parent / "big.png"
    Image.open(digits[0]).resize((56, 56)).save(big)
    with page.expect_request(lambda r: "/elbo?" in r.url and "resize=true" in r.url):
        page.set_input_files("#file", big)
    assert "56×56" in page.inner_text("#input-note")
    assert "resize=true" in page.inner_text("#input-note")
    resized = httpx.post(f"{server.url}/elbo?resize=true", files=upload(big)).json()
    assert scored(page) == f"{resized['results'][0]['anomaly_score']:.1f}"
    assert map_images(page) == [[1, 3 * MNIST_SIDE, MNIST_SIDE]] * 3


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_an_image_can_be_dropped_or_pasted(seen: Visit, digits: list[Path], how: str) -> None:
    page = seen.open()
    # What a drag from the file manager, or a paste of a copied file, hands the page.
    transfer = page.evaluate_handle(
        """([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            return transfer;
        }""",
        [list(digits[0].read_bytes()), digits[0].name],
    )
    if how == "drop":
        page.dispatch_event("#canvas", "dragover", {"dataTransfer": transfer})
        page.dispatch_event("#canvas", "drop", {"dataTransfer": transfer})
    else:
        page.evaluate(
            "t => document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: t}))",
            transfer,
        )
    expect(page.locator("#input-note")).to_contain_text(digits[0].name)
    assert scored(page) != "–"
    assert map_images(page) == [[1, 3 * MNIST_SIDE, MNIST_SIDE]] * 3


def test_a_file_that_is_no_image_shows_the_apis_message(
    seen: Visit, server: Server, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"these are my notes, not a picture\n")
    refused = httpx.post(f"{server.url}/elbo", files=upload(bad))
    assert refused.status_code in {400, 415}
    seen.expect_status(refused.status_code)
    page = seen.open()
    page.set_input_files("#file", bad)
    page.wait_for_selector("#input-error:not([hidden])")
    assert page.inner_text("#input-error") == refused.json()["detail"]
    assert page.inner_text("#n-anomaly") == "–"


def test_a_sample_grid_comes_back_from_its_link(seen: Visit, server: Server) -> None:
    page = seen.open()
    page.fill("#n", "4")
    page.fill("#temperature", "0.8")
    page.click("#sample-go")
    page.wait_for_selector("#sample-meta:not([hidden])")
    grid = image_bytes(page, "#grid")
    seed = page.inner_text("#sample-seed")
    assert seed.isdigit()
    link = page.get_attribute("#sample-link", "href")
    assert link is not None and f"seed={seed}" in link and "n=4" in link
    assert "temperature=0.8" in link and f"version={bundled_version()}" in link

    again = seen.context.new_page()
    again.goto(link)
    again.wait_for_selector("#sample-meta:not([hidden])")
    assert image_bytes(again, "#grid") == grid
    assert again.input_value("#seed") == seed
    png = page.get_attribute("#sample-png", "href")
    assert png is not None
    assert seen.context.request.get(png).body() == grid  # the API's own PNG, the same bytes

    # Beyond the server's limit (VAE_MAX_SAMPLES), the API says so next to the button.
    too_many = httpx.get(f"{server.url}/sample?n=65")
    seen.expect_status(too_many.status_code)
    page.fill("#n", "65")
    page.click("#sample-go")
    expect(page.locator("#sample-error")).to_have_text(too_many.json()["detail"])


def test_a_walk_between_two_images_decodes_the_line_between_their_means(
    seen: Visit, server: Server, digits: list[Path]
) -> None:
    page = seen.open()
    for end, digit in zip("ab", digits, strict=True):
        page.set_input_files("#file", digit)
        page.wait_for_selector("#maps[data-state=shown]")
        page.click(f"#end-{end} button[data-from=input]")
    page.wait_for_selector("#walk-result:not([hidden])")
    assert page.locator("#strip canvas").count() == 10

    # The first frame is the decoded mean of the first image, as the API decodes it.
    mean = httpx.post(f"{server.url}/encode", files=upload(digits[0])).json()["results"][0]["mean"]
    decoded = httpx.post(f"{server.url}/decode?format=json", json={"z": [mean]}).json()
    expected = np.rint(255 * np.asarray(decoded["pixels"][0][0]))
    first, last = (
        canvas_grey(page, "#strip button:first-child canvas"),
        canvas_grey(page, "#strip button:last-child canvas"),
    )
    assert np.abs(first.astype(int) - expected).max() <= 1
    assert np.abs(first.astype(int) - last).mean() > 10, "the walk should go somewhere"

    page.focus("#walk-slider")
    page.keyboard.press("End")
    assert page.inner_text("#walk-t") == "t = 1.00"
    assert (canvas_grey(page, "#walk-view") == last).all()

    # A sampled end works too: the walk runs again by itself.
    with page.expect_request(lambda r: "/decode?" in r.url):
        page.click("#end-b button[data-from=sample]")
    page.wait_for_function("() => document.querySelectorAll('#strip canvas').length === 10")


def test_the_page_adapts_to_the_model_and_reads_the_scores_from_the_api(
    seen: Visit, server: Server
) -> None:
    page = seen.open()
    spec = httpx.get(f"{server.url}/openapi.json").json()
    (score,) = [p for p in spec["paths"]["/elbo"]["post"]["parameters"] if p["name"] == "score"]
    options = page.eval_on_selector_all("#score-name option", "os => os.map(o => o.value)")
    assert options == score["schema"]["enum"]
    assert page.input_value("#score-name") == score["schema"]["default"]

    page.select_option("#model", "fashion-mnist")
    expect(page.locator("#model-info")).to_contain_text("latent 32")
    page.select_option("#score-name", "complexity")
    wanted = ("/elbo?", "model=fashion-mnist", "score=complexity")
    with page.expect_request(lambda r: all(part in r.url for part in wanted)):
        page.click("#sample-input")  # one image from the prior as the input
    assert scored(page) != "–"
    assert "(complexity)" in page.inner_text("#percentile")


def test_the_pad_works_with_the_keyboard_and_on_a_phone(browser: Browser, server: Server) -> None:
    with checked_visit(browser, server.url, viewport=PHONE) as seen:
        page = seen.open()
        width = page.evaluate("() => document.scrollingElement.scrollWidth")
        assert width <= PHONE["width"], "the page is wider than the phone"
        page.focus("#canvas")
        page.keyboard.press("Space")
        for _ in range(8):
            page.keyboard.press("ArrowDown")
        page.keyboard.press("Space")
        assert scored(page) != "–"
        assert canvas_grey(page, "#seen").max() == 255


def test_with_an_api_key_the_page_asks_for_it_and_keeps_it(
    browser: Browser, tmp_path: Path
) -> None:
    with (
        serve(BUNDLED_STORE, tmp_path, VAE_RELOAD_INTERVAL_S="0", VAE_API_KEY="s3cret") as keyed,
        checked_visit(browser, keyed.url) as seen,
    ):
        seen.expect_status(401)
        page = seen.page
        page.goto(keyed.url + "/")  # the page itself loads without the key
        page.wait_for_selector("#key-dialog[open]")
        page.fill("#key", "wrong")
        page.click("#key-dialog button[value=ok]")
        expect(page.locator("#key-why")).to_contain_text("refused")
        expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#key", "s3cret")
        page.click("#key-dialog button[value=ok]")
        page.wait_for_selector("body[data-ready=true]")
        stroke(page, SEVEN)
        assert scored(page) != "–"
        assert page.evaluate("() => sessionStorage.getItem('vae-serve.api-key')") == "s3cret"

        page.reload()  # kept for the session: not asked again
        page.wait_for_selector("body[data-ready=true]")
        assert not page.is_visible("#key-dialog")
