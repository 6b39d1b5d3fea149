"""The playground page in a real browser: headless Chromium (Debian's package) driven by Playwright.

The test serves the page, uploads an image, asks, and compares the picture the page shows with
``prompt()``'s pixels; moves the kernel-size slider and checks the picture changes without a new
model load or model run; downloads the image and the map; uploads a corrupt file and a blank
question and reads the error sentences; and prints how long a press of the button takes until the
prompted image is shown (a benchmark figure, not an assertion).

Set ``API_PROMPT_PLAYGROUND_SCREENSHOT=docs/images/playground.png`` to save the README's picture.
"""

from __future__ import annotations

import importlib
import io
import os
import shutil
import socket
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HOW_TO_ENABLE = (
    "the browser test needs the playground extra, Playwright and Chromium: "
    "pip install -e '.[playground]' playwright && apt-get install chromium "
    "(or set API_PROMPT_CHROMIUM to a Chromium executable)"
)
# CI sets this: there a missing browser or package is a failure, not a skip.
REQUIRED = os.environ.get("API_PROMPT_REQUIRE_BROWSER") == "1"


def _needed(module: str):
    return (
        importlib.import_module(module)
        if REQUIRED
        else pytest.importorskip(module, reason=HOW_TO_ENABLE)
    )


_needed("gradio")
sync_api = _needed("playwright.sync_api")
CHROMIUM = (
    os.environ.get("API_PROMPT_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("chromium-browser")
)
pytestmark = pytest.mark.skipif(CHROMIUM is None and not REQUIRED, reason=HOW_TO_ENABLE)

from api_prompt import prompt  # noqa: E402
from api_prompt.errors import ModelLoadError  # noqa: E402
from api_prompt.playground import Playground, build_app  # noqa: E402
from api_prompt.prompter import Prompter  # noqa: E402
from test_playground import EXAMPLES, SMALL_CLIP, CountingPrompter  # noqa: E402

TIMEOUT_MS = 60_000  # generous: the CI machine may be shared
sync_api.expect.set_options(timeout=TIMEOUT_MS)


def brightness(image: Image.Image, question: str) -> str:
    """A stand-in target model: it answers with the image's mean brightness."""
    return f"mean brightness {np.asarray(image).mean():.2f}"


@contextmanager
def served(playground: Playground):
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = build_app(playground)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM is not None, f"API_PROMPT_REQUIRE_BROWSER=1 but no Chromium: {HOW_TO_ENABLE}"
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


def upload(page, path: Path) -> None:
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():
        clear.click()
    page.set_input_files("#upload input[type=file]", str(path))


def shown_src(page) -> str | None:
    return page.evaluate(
        "() => { const i = document.querySelector('#prompted img'); return i ? i.getAttribute('src') : null }"
    )


def wait_for_new_image(page, old_src: str | None) -> str:
    """Wait until the page shows a prompted image other than ``old_src``, decoded; its URL."""
    page.wait_for_function(
        """(old) => { const i = document.querySelector('#prompted img');
                      return i && i.getAttribute('src') !== old && i.complete && i.naturalWidth > 0 }""",
        arg=old_src,
    )
    return shown_src(page)


def wait_for_pixels(page, old_src: str | None, expected: np.ndarray, seconds: float = 30) -> str:
    """Wait until the prompted image shown has exactly ``expected``'s pixels (a burst of control
    changes may show an intermediate picture first); its URL."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            src = wait_for_new_image(page, old_src)
        except sync_api.TimeoutError:
            raise AssertionError(
                f"no new picture; the page says {page.inner_text('#error')!r}, the question is "
                f"{page.input_value('#question textarea')!r}, the upload {page.inner_text('#upload')!r}"
            ) from None
        shown = fetch_png(page, src)
        if np.array_equal(shown, expected):
            return src
        assert time.monotonic() < deadline, "the page never showed the expected picture"
        old_src = src


def fetch_png(page, url: str) -> np.ndarray:
    response = page.request.get(url)
    assert response.ok, url
    image = Image.open(io.BytesIO(response.body()))
    assert image.format == "PNG"  # lossless, so an exact comparison is meaningful
    return np.asarray(image.convert("RGB"))


@pytest.mark.slow
def test_upload_ask_adjust_download_and_errors_in_a_real_browser(page, tmp_path):
    counter = CountingPrompter()
    playground = Playground(device="cpu", build_prompter=counter, target=brightness)
    playground.prompter()  # as `api-prompt playground` does before serving
    scene = tmp_path / "scene.png"  # not square: CLIP's centre crop matters
    Image.open(EXAMPLES / "synthshapes-30.png").convert("RGB").resize((300, 200)).save(scene)
    question = "a yellow triangle"

    with served(playground) as url:
        page.goto(url)
        sync_api.expect(page.locator("#layer")).to_contain_text("0..3")

        # 1. Upload, type, press the button: the page shows prompt()'s pixels.
        upload(page, scene)
        sync_api.expect(page.locator("#original img")).to_be_visible()
        page.fill("#question textarea", question)
        page.click("#run")
        first = wait_for_new_image(page, None)
        expected = np.asarray(prompt(scene, question, model=SMALL_CLIP, device="cpu"))
        assert np.array_equal(fetch_png(page, first), expected)
        runs = playground.model_runs

        # 2. Move the kernel-size slider (3 -> 5): a new picture, no new load, no model run.
        page.focus("#kernel input[type=range]")
        page.keyboard.press("ArrowRight")
        smoothed = wait_for_new_image(page, first)
        expected_k5 = np.asarray(
            prompt(scene, question, model=SMALL_CLIP, device="cpu", kernel_size=5)
        )
        assert not np.array_equal(expected_k5, expected)
        assert np.array_equal(fetch_png(page, smoothed), expected_k5)
        assert playground.model_runs == runs and playground.loads == counter.calls == 1

        # 2b. A preset fills enhance, kernel size, resample and background: still no model run.
        page.click("#preset input")
        page.get_by_role("option", name="llava-wild").click()
        wild = np.asarray(
            prompt(scene, question, model=SMALL_CLIP, device="cpu", preset="llava-wild")
        )
        current = wait_for_pixels(page, smoothed, wild)
        assert playground.model_runs == runs
        page.click("#preset input")
        page.get_by_role("option", name="package").click()
        current = wait_for_pixels(page, current, expected)

        # 2c. Another layer needs the model, but no new load.
        page.focus("#layer input[type=range]")
        page.keyboard.press("ArrowLeft")  # the default 2 -> 1
        layer_1 = np.asarray(prompt(scene, question, model=SMALL_CLIP, device="cpu", layer=1))
        current = wait_for_pixels(page, current, layer_1)
        assert playground.model_runs == runs + 1 and playground.loads == 1
        page.keyboard.press("ArrowRight")
        current = wait_for_pixels(page, current, expected)
        page.focus("#kernel input[type=range]")
        page.keyboard.press("ArrowRight")
        smoothed = wait_for_pixels(page, current, expected_k5)

        # 3. The downloads: the prompted PNG and the map, as `--save-map` writes it.
        with page.expect_download() as download:
            page.click("#download-image")
        assert np.array_equal(
            np.asarray(Image.open(download.value.path()).convert("RGB")), expected_k5
        )
        with page.expect_download() as download:
            page.click("#download-map")
        reference = tmp_path / "reference.npz"
        Prompter(model=SMALL_CLIP, device="cpu", kernel_size=5)(scene, question).map.save(reference)
        with np.load(download.value.path()) as got, np.load(reference) as want:
            assert sorted(got.files) == sorted(want.files)
            for name in want.files:
                assert np.array_equal(got[name], want[name]), name

        # 4. The target answers about the original and the prompted image.
        page.click("#ask")
        prompted_image = Image.fromarray(expected_k5)
        sync_api.expect(page.locator("#answer-original textarea")).to_have_value(
            brightness(Image.open(scene).convert("RGB"), question)
        )
        sync_api.expect(page.locator("#answer-prompted textarea")).to_have_value(
            brightness(prompted_image, question)
        )

        # 5. Time from pressing the button to the image shown, at the default settings.
        page.focus("#kernel input[type=range]")
        page.keyboard.press("ArrowLeft")  # back to 3
        current = wait_for_new_image(page, smoothed)
        timings = []
        for repeat in range(10):
            page.fill("#question textarea", ("a blue circle", question)[repeat % 2])
            start = time.perf_counter()
            page.click("#run")
            current = wait_for_new_image(page, current)
            timings.append(time.perf_counter() - start)
        print(
            f"\nplayground: button press -> prompted image shown, small CLIP on CPU, default settings: "
            f"median {statistics.median(timings) * 1000:.0f} ms over {len(timings)} presses "
            f"(min {min(timings) * 1000:.0f}, max {max(timings) * 1000:.0f}); benchmark figure, not an assertion"
        )
        screenshot = os.environ.get("API_PROMPT_PLAYGROUND_SCREENSHOT")
        if screenshot:
            page.wait_for_timeout(1500)  # let the "pending" fade of the outputs finish
            page.screenshot(path=screenshot, full_page=True)

        # 6. A corrupt upload and a blank question: one sentence each, and the page keeps working.
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"this is not a PNG file")
        upload(page, broken)
        error = page.locator("#error")
        sync_api.expect(error).to_contain_text(
            "cannot load image 'broken.png': not a recognised image format"
        )
        page.click("#run")
        sync_api.expect(error).to_contain_text("cannot load image 'broken.png'")
        upload(page, scene)
        sync_api.expect(error).to_have_text("")
        page.fill("#question textarea", "   ")
        page.click("#run")
        sync_api.expect(error).to_contain_text("the question is empty")
        page.fill("#question textarea", "a red circle")
        page.click("#run")
        current = wait_for_new_image(page, current)
        sync_api.expect(error).to_have_text("")
        assert "Traceback" not in page.content()

        # 7. An example: it fills the image and the question.
        page.get_by_text("an orange square").click()
        sync_api.expect(page.locator("#question textarea")).to_have_value("an orange square")
        sync_api.expect(page.locator("#upload")).to_contain_text(
            "synthshapes-8"
        )  # the file is set too
        page.press("#question textarea", "Enter")
        example = np.asarray(
            prompt(
                EXAMPLES / "synthshapes-8.png", "an orange square", model=SMALL_CLIP, device="cpu"
            )
        )
        wait_for_pixels(page, current, example)
        assert playground.loads == counter.calls == 1


@pytest.mark.slow
def test_a_model_that_cannot_load_is_one_sentence_in_the_page(page):
    def cannot_load(*args, **kwargs):
        raise ModelLoadError("no weights in /models/missing")

    playground = Playground(device="cpu", build_prompter=cannot_load)
    with served(playground) as url:
        page.goto(url)
        error = page.locator("#error")
        sync_api.expect(error).to_contain_text(
            "the model could not be loaded: no weights in /models/missing"
        )
        upload(page, EXAMPLES / "synthshapes-23.png")
        page.fill("#question textarea", "a red square")
        page.press("#question textarea", "Enter")
        sync_api.expect(error).to_have_text("Error: no weights in /models/missing")
        assert "Traceback" not in page.content()


# -- what one visitor cannot break: values beyond a slider, stale results, a large image -------


@pytest.fixture(scope="module")
def small_clip_page():
    """One page with the shipped small CLIP, loaded before serving; each test is a new visitor."""
    playground = Playground(device="cpu")
    playground.prompter()
    with served(playground) as url:
        yield url, playground


STYLE_PANELS = ("style-overlay", "style-crop", "style-blur", "style-box")
PANELS = ("original", "prompted", "heatmap", "parts", *STYLE_PANELS)


def panel_sources(page) -> dict[str, list[str]]:
    """The URL of every picture each panel shows."""
    return page.evaluate(
        """(panels) => Object.fromEntries(panels.map(id => [id,
               [...document.querySelectorAll('#' + id + ' img')].map(i => i.getAttribute('src'))]))""",
        list(PANELS),
    )


def settled(page) -> None:
    """Wait until the style row shows the drawing the pictures above it show (it follows them:
    each drawing's files carry its number)."""
    page.wait_for_function(
        """(panels) => { const number = id => { const i = document.querySelector('#' + id + ' img');
                                                 const m = i && (i.getAttribute('src') || '').match(/-(\\d+)\\.png$/);
                                                 return m ? m[1] : null };
                         const drawn = number('heatmap');
                         return drawn !== null && panels.every(panel => number(panel) === drawn) }""",
        arg=list(STYLE_PANELS),
    )


def type_number(page, control: str, value: str) -> None:
    """Type ``value`` into the number box of a slider, as a visitor does, and confirm it."""
    box = page.locator(f"#{control} input[type=number]")
    box.fill(value)
    box.press("Enter")


def natural_size(page, panel: str) -> tuple[int, int]:
    page.wait_for_function(
        "(id) => { const i = document.querySelector('#' + id + ' img'); return i && i.complete && i.naturalWidth > 0 }",
        arg=panel,
    )
    return tuple(
        page.evaluate(
            "(id) => { const i = document.querySelector('#' + id + ' img'); return [i.naturalWidth, i.naturalHeight] }",
            panel,
        )
    )


def prompt_scene(page, path: Path, question: str, old_src: str | None = None) -> str:
    upload(page, path)
    sync_api.expect(page.locator("#original img")).to_be_visible()
    page.fill("#question textarea", question)
    page.click("#run")
    return wait_for_new_image(page, old_src)


@pytest.mark.slow
def test_a_number_typed_beyond_a_slider_is_one_sentence_and_the_pictures_stay(
    small_clip_page, page, tmp_path
):
    url, playground = small_clip_page
    scene = tmp_path / "scene.png"
    Image.open(EXAMPLES / "synthshapes-30.png").convert("RGB").resize((300, 200)).save(scene)
    page.goto(url)
    sync_api.expect(page.locator("#layer")).to_contain_text("0..3")
    prompt_scene(page, scene, "a yellow triangle")
    error = page.locator("#error")
    for control, typed, sentence, valid in [
        ("background", "300", "Background gray takes a whole number from 0 to 255, not 300", "0"),
        ("enhance", "-5", "Enhance takes a number from 0 to 20, not -5", "10"),
        ("layer", "9", "Layer takes a whole number from 0 to 3, not 9", "2"),
    ]:
        settled(page)
        before = panel_sources(page)
        assert all(before[panel] for panel in PANELS), before
        type_number(page, control, typed)
        sync_api.expect(error).to_have_text(f"Error: {sentence}")
        assert panel_sources(page) == before  # every picture panel keeps its content ...
        for panel in PANELS:  # ... without an error badge
            sync_api.expect(page.locator(f"#{panel}")).not_to_contain_text("Error")
        assert page.locator(".toast-body").count() == 0  # and no raw Gradio message
        type_number(page, control, valid)
        sync_api.expect(error).to_have_text("")
    # Back at the defaults: the page shows prompt()'s pixels again.
    page.fill("#question textarea", "a blue circle")
    before = shown_src(page)
    page.click("#run")
    expected = np.asarray(prompt(scene, "a blue circle", model=SMALL_CLIP, device="cpu"))
    wait_for_pixels(page, before, expected)


@pytest.mark.slow
def test_a_new_upload_empties_the_results_of_the_previous_image(small_clip_page, page, tmp_path):
    url, _ = small_clip_page
    page.goto(url)
    sync_api.expect(page.locator("#layer")).to_contain_text("0..3")
    first = prompt_scene(page, EXAMPLES / "synthshapes-30.png", "a yellow triangle")
    settled(page)
    assert all(panel_sources(page)[panel] for panel in PANELS)

    # Another image: only the image itself is shown until it is prompted.
    upload(page, EXAMPLES / "synthshapes-23.png")
    sync_api.expect(page.locator("#upload")).to_contain_text("synthshapes-23")
    for panel in ("prompted", "heatmap", "parts"):
        sync_api.expect(page.locator(f"#{panel} img")).to_have_count(0)
    sync_api.expect(page.locator("#original img")).to_have_count(1)
    assert np.array_equal(
        fetch_png(page, page.locator("#original img").get_attribute("src")),
        np.asarray(Image.open(EXAMPLES / "synthshapes-23.png").convert("RGB")),
    )
    page.fill("#question textarea", "a red square")
    page.click("#run")
    expected = np.asarray(
        prompt(EXAMPLES / "synthshapes-23.png", "a red square", model=SMALL_CLIP, device="cpu")
    )
    wait_for_pixels(page, first, expected)

    # A failed upload empties everything, the image too, and says why.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a PNG file")
    upload(page, broken)
    sync_api.expect(page.locator("#error")).to_contain_text("cannot load image 'broken.png'")
    for panel in PANELS:
        sync_api.expect(page.locator(f"#{panel} img")).to_have_count(0)

    # A file that is not an image at all gets a sentence too (not a silent drop or a raw toast).
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    upload(page, notes)
    sync_api.expect(page.locator("#error")).to_have_text(
        "Error: cannot load image 'notes.txt': not a recognised image format (is it really an image?)"
    )
    assert page.locator(".toast-body").count() == 0


@pytest.mark.slow
def test_a_large_image_is_shown_smaller_and_downloaded_full_size(small_clip_page, page, tmp_path):
    shown_size = (1024, 768)  # the page's display size (longest side 1024) for a 4:3 image
    url, _ = small_clip_page
    big = tmp_path / "big.png"
    Image.open(EXAMPLES / "synthshapes-30.png").convert("RGB").resize(
        (4000, 3000), Image.Resampling.NEAREST
    ).save(big)
    question = "a yellow triangle"
    page.goto(url)
    sync_api.expect(page.locator("#layer")).to_contain_text("0..3")
    start = time.perf_counter()
    upload(page, big)
    assert natural_size(page, "original") == shown_size
    shown_upload = time.perf_counter() - start
    page.fill("#question textarea", question)
    start = time.perf_counter()
    page.click("#run")
    src = wait_for_new_image(page, None)
    shown_press = time.perf_counter() - start
    assert natural_size(page, "prompted") == shown_size
    full = prompt(big, question, model=SMALL_CLIP, device="cpu")
    from api_prompt.playground.engine import shrink_to

    assert np.array_equal(fetch_png(page, src), np.asarray(shrink_to(full, max(shown_size))))
    with page.expect_download() as download:
        page.click("#download-image")
    downloaded = Image.open(download.value.path())
    assert downloaded.size == (4000, 3000)
    assert np.array_equal(np.asarray(downloaded.convert("RGB")), np.asarray(full))
    sent = {
        panel: len(page.request.get(page.locator(f"#{panel} img").get_attribute("src")).body())
        for panel in ("original", "prompted")
    }
    print(
        f"\nplayground, 4000x3000 upload: shown after {shown_upload:.1f} s, a press shown after {shown_press:.1f} s; "
        f"sent to the browser: {sent} bytes (benchmark figures, not assertions)"
    )


def panel_pixels(page, panel: str, expected: np.ndarray, seconds: float = 60) -> str:
    """Wait until ``panel`` shows exactly ``expected``'s pixels; its picture's URL."""
    deadline = time.monotonic() + seconds
    while True:
        src = page.evaluate(
            "(id) => { const i = document.querySelector('#' + id + ' img');"
            "          return i && i.complete && i.naturalWidth > 0 ? i.getAttribute('src') : null }",
            panel,
        )
        if src and np.array_equal(fetch_png(page, src), expected):
            return src
        assert time.monotonic() < deadline, (
            f"{panel} never showed the expected picture ({page.inner_text('#error')!r})"
        )
        time.sleep(0.2)


@pytest.mark.slow
def test_every_style_is_shown_side_by_side_and_follows_the_controls(
    small_clip_page, page, tmp_path
):
    _, loaded = small_clip_page
    options = {"crop_size": 64, "zoom": 96, "color": "blue", "width": 3}
    crop_page = Playground(
        device="cpu",
        style="crop",
        style_options=options,
        build_prompter=lambda *a, **k: loaded.prompter(),
    )
    scene = tmp_path / "scene.png"
    Image.open(EXAMPLES / "synthshapes-30.png").convert("RGB").resize((300, 200)).save(scene)
    question = "a yellow triangle"

    def expected(name: str, **settings) -> np.ndarray:
        result = Prompter(
            model=SMALL_CLIP, device="cpu", style=name, style_options=options, **settings
        )(scene, question)
        return np.asarray(result.image.convert("RGB"))

    with served(crop_page) as url:
        page.goto(url)
        sync_api.expect(page.locator("#layer")).to_contain_text("0..3")
        for panel in STYLE_PANELS:  # the panels are there before any image
            sync_api.expect(page.locator(f"#{panel}")).to_be_visible()
        sync_api.expect(page.locator("#prompted")).to_contain_text("Prompted image (crop)")
        prompt_scene(page, scene, question)
        shown = {
            panel: panel_pixels(page, panel, expected(panel.split("-")[1]))
            for panel in STYLE_PANELS
        }
        panel_pixels(
            page, "prompted", expected("crop")
        )  # the page's own style is the prompted image
        # a new background redraws the overlay from the same map; the box does not take it
        type_number(page, "background", "120")
        panel_pixels(page, "style-overlay", expected("overlay", background=120))
        panel_pixels(page, "style-box", expected("box"))
        # a new kernel size changes every style's picture, without the model
        runs = crop_page.model_runs
        type_number(page, "kernel", "7")
        for panel in STYLE_PANELS:
            name = panel.split("-")[1]
            src = panel_pixels(
                page,
                panel,
                expected(name, kernel_size=7, **({"background": 120} if name == "overlay" else {})),
            )
            assert src != shown[panel]
        assert crop_page.model_runs == runs
