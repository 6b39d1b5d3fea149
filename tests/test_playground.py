"""The playground's engine (no browser, no Gradio): same pixels as prompt(), one model load,
settings that never run the model, and errors as sentences. The page itself is tested in a real
browser in test_playground_browser.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_prompt import prompt
from api_prompt.errors import ConfigError, ModelLoadError
from api_prompt.playground import engine as engine_module
from api_prompt.playground.engine import Playground, default_model_dir, part_picture
from api_prompt.prompter import Prompter

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "api_prompt" / "playground" / "examples"
SMALL_CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"


class CountingPrompter:
    """Builds real Prompters and counts how often a model was loaded."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *args, **kwargs) -> Prompter:
        self.calls += 1
        return Prompter(*args, **kwargs)


@pytest.fixture(scope="module")
def playground() -> Playground:
    return Playground(device="cpu", build_prompter=CountingPrompter())


@pytest.fixture(scope="module")
def scene() -> Image.Image:
    # Not square, so the centre crop (and geometry="fit") matters.
    return Image.open(EXAMPLES / "synthshapes-30.png").convert("RGB").resize((300, 200))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_default_model_is_the_shipped_small_clip(playground):
    assert playground.model == f"local-dir:{default_model_dir()}"
    assert (default_model_dir() / "open_clip_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {},  # the defaults (preset "package", the model's default layer)
        dict(
            layer=1, enhance=3.0, kernel_size=5, resample="bicubic", background=120, geometry="fit"
        ),
    ],
)
def test_stages_give_the_pixels_of_prompt(playground, scene, settings):
    layer = settings.get("layer")
    raw = playground.attribute(scene, "a yellow triangle", layer=layer)
    amap = playground.combine(
        raw, enhance=settings.get("enhance", 10.0), kernel_size=settings.get("kernel_size", 3)
    )
    view = playground.view(
        scene,
        amap,
        resample=settings.get("resample", "lanczos"),
        background=settings.get("background", 0),
        geometry=settings.get("geometry", "stretch"),
    )
    expected = prompt(scene, "a yellow triangle", model=SMALL_CLIP, device="cpu", **settings)
    assert np.array_equal(pixels(view.prompted), pixels(expected))
    assert view.heatmap.width > view.heatmap.height  # the colour bar is attached on the right
    assert [caption.split()[0] for _, caption in view.parts] == ["psi_cls", "psi_comp"]


STYLE_OPTIONS = {"crop_size": 64, "zoom": 96, "blur": 0.05, "color": "blue", "width": 3}


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        {},
        dict(
            layer=1, enhance=3.0, kernel_size=5, resample="bicubic", background=120, geometry="fit"
        ),
    ],
)
def test_every_style_panel_has_the_pixels_of_the_python_api_from_one_model_run(
    playground, scene, settings
):
    styled = Playground(
        device="cpu",
        style="crop",
        style_options=STYLE_OPTIONS,
        build_prompter=lambda *a, **k: playground.prompter(),
    )
    raw = styled.attribute(scene, "a yellow triangle", layer=settings.get("layer"))
    amap = styled.combine(
        raw, enhance=settings.get("enhance", 10.0), kernel_size=settings.get("kernel_size", 3)
    )
    view = styled.view(
        scene,
        amap,
        resample=settings.get("resample", "lanczos"),
        background=settings.get("background", 0),
        geometry=settings.get("geometry", "stretch"),
    )
    assert list(view.styles) == ["overlay", "crop", "blur", "box"]
    for name, picture in view.styles.items():
        expected = Prompter(
            model=SMALL_CLIP, device="cpu", style=name, style_options=STYLE_OPTIONS, **settings
        )(scene, "a yellow triangle").image
        assert picture.size == expected.size and np.array_equal(
            pixels(picture), pixels(expected)
        ), name
    assert (
        pixels(view.prompted).tobytes() == pixels(view.styles["crop"]).tobytes()
    )  # the page's style
    assert len({pixels(picture).tobytes() for picture in view.styles.values()}) == 4
    assert styled.model_runs == 1  # one map for every style


def test_bad_styles_are_refused_in_one_line_before_any_model_loads():
    counter = CountingPrompter()
    for options, words in [
        (dict(style="zoom"), "unknown style 'zoom'; choose one of: overlay, crop, blur, box"),
        (dict(style_options={"zoon": 1}), "no prompt style takes zoon"),
        (dict(style_options={"zoom": 0}), "zoom must be a positive number of pixels"),
        (dict(style="box", style_options={"color": "nocolour"}), "unknown color"),
        (dict(style_options=["zoom"]), "style_options must be a dict"),
    ]:
        with pytest.raises(ConfigError) as error:
            Playground(device="cpu", build_prompter=counter, **options)
        assert words in str(error.value) and "\n" not in str(error.value)
    assert counter.calls == 0


@pytest.mark.slow
def test_settings_and_layers_never_reload_and_only_layers_run_the_model(playground, scene):
    playground.prompter()
    loads, runs = playground.loads, playground.model_runs
    raw = playground.attribute(scene, "a blue circle")
    outputs = set()
    for kernel_size in (1, 3, 5, 7):
        amap = playground.combine(raw, enhance=10.0, kernel_size=kernel_size)
        for background in (0, 200):
            view = playground.view(
                scene, amap, resample="lanczos", background=background, geometry="stretch"
            )
            outputs.add(pixels(view.prompted).tobytes())
    assert len(outputs) == 8  # every setting changed the picture
    assert playground.model_runs == runs + 1  # ... without running the model again
    n_layers, default = playground.layers()
    other = playground.attribute(scene, "a blue circle", layer=(default + 1) % n_layers)
    assert not np.array_equal(other.parts["psi_cls"], raw.parts["psi_cls"])
    assert (
        playground.prompter().attributor.layer == default
    )  # the next call reads the default again
    assert playground.loads == loads == playground.build_prompter.calls == 1


def test_concurrent_first_requests_load_the_model_once(scene):
    counter = CountingPrompter()
    playground = Playground(device="cpu", build_prompter=counter)
    errors: list[BaseException] = []

    def visit():
        try:
            playground.attribute(scene, "a red circle")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=visit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert counter.calls == playground.loads == 1 and playground.model_runs == 4


def test_a_model_that_cannot_load_is_tried_again_by_the_next_request(scene):
    attempts = []

    def flaky(*args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise ModelLoadError("no weights at /nowhere")
        return Prompter(*args, **kwargs)

    playground = Playground(device="cpu", build_prompter=flaky)
    with pytest.raises(ModelLoadError, match="no weights"):
        playground.attribute(scene, "a red circle")
    assert not playground.loaded
    playground.attribute(scene, "a red circle")
    assert playground.loads == 1 and len(attempts) == 2


def test_bad_requests_are_one_sentence(playground, scene):
    with pytest.raises(ConfigError, match="the question is empty"):
        playground.attribute(scene, "   ")
    raw = playground.attribute(scene, "a red circle")
    with pytest.raises(ConfigError, match="kernel size must be an odd integer"):
        playground.combine(raw, enhance=10.0, kernel_size=4)
    n_layers, _ = playground.layers()
    with pytest.raises(ConfigError, match="out of range"):
        playground.attribute(scene, "a red circle", layer=n_layers)
    with pytest.raises(ConfigError, match="no target model"):
        playground.ask(scene, scene, "what is it?")


def test_bad_settings_are_refused_before_any_model_loads():
    counter = CountingPrompter()
    with pytest.raises(ConfigError, match="unknown preset"):
        Playground(device="cpu", preset="nope", build_prompter=counter)
    with pytest.raises(ConfigError, match="background"):
        Playground(device="cpu", background=300, build_prompter=counter)
    assert counter.calls == 0


def test_the_target_answers_about_the_original_and_the_prompted_image(playground, scene):
    def brightness(image, question):
        return f"{question}: {np.asarray(image).mean():.1f}"

    asking = Playground(
        device="cpu", target=brightness, build_prompter=lambda *a, **k: playground.prompter()
    )
    raw = asking.attribute(scene, "a red circle")
    prompted = asking.view(
        scene, raw, resample="lanczos", background=0, geometry="stretch"
    ).prompted
    original_answer, prompted_answer = asking.ask(scene, prompted, "how bright")
    assert original_answer == brightness(scene, "how bright")
    assert prompted_answer == brightness(prompted, "how bright")
    assert original_answer != prompted_answer


def test_missing_small_clip_is_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(engine_module, "_PACKAGED_MODEL", tmp_path / "a")
    monkeypatch.setattr(engine_module, "_REPOSITORY_MODEL", tmp_path / "b")
    with pytest.raises(
        ModelLoadError, match="small example CLIP is not installed.*pass a model with --model"
    ):
        Playground(device="cpu")
    Playground(
        device="cpu", model="ViT-B-16", build_prompter=CountingPrompter()
    )  # another model: fine


def test_examples_are_the_synthetic_scenes_they_claim_to_be():
    scenes = pytest.importorskip(
        "benchmarks.synthshapes.scenes", reason="run from the repository root"
    )
    entries = json.loads((EXAMPLES / "examples.json").read_text())
    assert len(entries) >= 3
    for entry in entries:
        scene = scenes.make_scene(np.random.default_rng(entry["seed"]), size=64, n_objects=3)
        expected = scene.image.resize((256, 256), Image.Resampling.NEAREST)
        assert np.array_equal(pixels(Image.open(EXAMPLES / entry["file"])), pixels(expected))
        phrase = entry["question"].split(" ", 1)[1]  # "a red square" -> "red square"
        assert scene.find(phrase), f"{entry['file']} has no {phrase}"


def test_part_picture_scales_each_part_to_its_own_range():
    picture = np.asarray(part_picture(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32), side=2))
    flat = np.asarray(part_picture(np.full((2, 2), 5.0, np.float32), side=2))
    assert picture.shape == (2, 2, 3) and not np.array_equal(picture[0, 0], picture[1, 1])
    assert (flat == flat[0, 0]).all()


def test_a_question_longer_than_the_text_encoder_reads_gets_a_note(playground):
    assert playground.truncation_note("a red circle") is None
    note = playground.truncation_note(" ".join(["a red circle"] * 20))
    assert note.startswith("the question is") and "reads 32" in note


# -- the command -------------------------------------------------------------------------------


def invoke(*args: str):
    from typer.testing import CliRunner

    from cli.app import app

    return CliRunner().invoke(app, ["playground", *args], catch_exceptions=False)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--kernel-size", "4"], "kernel size must be an odd integer"),
        (["--preset", "nope"], "unknown preset"),
        (["-B", "nope=1"], "takes no option 'nope'"),
        (["--base-url", "http://127.0.0.1:9/v1"], "--base-url needs --target openai:<model>"),
        (["--target", "hf:some/model", "--base-url", "http://x/v1"], "--base-url only applies"),
    ],
)
def test_command_refuses_bad_options_in_one_line_before_loading(monkeypatch, args, words):
    monkeypatch.setattr(Playground, "prompter", lambda self: pytest.fail("a model was loaded"))
    result = invoke(*args)
    assert result.exit_code == 2
    assert (
        result.stderr.count("\n") == 1
        and result.stderr.startswith("error: ")
        and words in result.stderr
    )


def test_command_without_gradio_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "gradio", None)
    result = invoke()
    assert result.exit_code == 2
    assert (
        result.stderr
        == "error: the playground needs Gradio: pip install 'api-prompt[playground]'\n"
    )


@pytest.mark.slow
def test_command_loads_the_model_once_then_serves_where_asked(monkeypatch):
    gradio = pytest.importorskip("gradio", reason="pip install -e '.[playground]'")
    served = {}

    def launch(app, **options):
        served.update(options, loaded=app_playground[0].loaded, loads=app_playground[0].loads)

    app_playground = []
    from api_prompt.playground import app as app_module

    real_build = app_module.build_app
    monkeypatch.setattr(
        app_module, "build_app", lambda pg, **kw: app_playground.append(pg) or real_build(pg, **kw)
    )
    monkeypatch.setattr(gradio.Blocks, "launch", launch)
    result = invoke(
        "--device",
        "cpu",
        "--host",
        "0.0.0.0",
        "--port",
        "7999",
        "--share",
        "-k",
        "5",
        "--max-pixels",
        "1000000",
    )
    assert result.exit_code == 0, result.stderr
    assert served == dict(
        server_name="0.0.0.0", server_port=7999, share=True, quiet=True, loaded=True, loads=1
    )
    assert app_playground[0].model == f"local-dir:{default_model_dir()}"
    assert app_playground[0].settings["kernel_size"] == 5
    assert app_playground[0].max_pixels == 1_000_000  # the largest upload the page accepts
    assert "Playground at http://0.0.0.0:7999" in result.stdout


# -- any backend -------------------------------------------------------------------------------


class ToyDecoder:
    """A model-free stand-in for a decoder backend (one raw part, ``attention``, per layer); it
    returns raw parts only, as :meth:`Attributor.attribute_parts` does."""

    name = "toy"
    default_recipe = "llava"

    def __init__(self) -> None:
        self.n_layers = 6
        self.layer = 4
        self.ran_at: list[int] = []

    def attribute_parts(self, images, queries, **options):
        from api_prompt import AttentionMap

        self.ran_at.append(self.layer)
        maps = []
        for image in images:
            attention = np.zeros((3, 5), np.float32)
            attention.flat[self.layer] = 1.0  # where it "looks" depends on the layer
            maps.append(
                AttentionMap(None, {"attention": attention}, image.size, (0, 0, *image.size))
            )
        return maps

    def describe(self):
        return {"backend": self.name}


def test_a_decoder_backend_gets_its_layers_parts_and_recipe(scene):
    toy = ToyDecoder()

    def build(
        backend, model, *, preset, enhance, kernel_size, resample, background, geometry, **ignored
    ):
        return Prompter(
            attributor=toy,
            preset=preset,
            enhance=enhance,
            kernel_size=kernel_size,
            resample=resample,
            background=background,
            geometry=geometry,
        )

    playground = Playground(backend="toy", kernel_size=1, build_prompter=build)
    assert playground.layers() == (6, 4)
    default = playground.attribute(scene, "where?")
    other = playground.attribute(scene, "where?", layer=-5)  # negative counts from the end
    assert toy.ran_at == [4, 1] and toy.layer == 4
    assert np.argmax(other.parts["attention"]) == 1 != np.argmax(default.parts["attention"])
    view = playground.view(
        scene,
        playground.combine(other, enhance=10.0, kernel_size=1),
        resample="nearest",
        background=0,
        geometry="stretch",
    )
    assert [caption.split()[0] for _, caption in view.parts] == ["attention"]
    assert view.map.recipe == "llava" and view.prompted.size == scene.size


def test_a_backend_that_does_not_count_its_layers_is_a_one_line_error(scene):
    toy = ToyDecoder()
    toy.n_layers = None

    def build(backend, model, **ignored):
        return Prompter(attributor=toy)

    playground = Playground(backend="toy", build_prompter=build)
    with pytest.raises(
        ConfigError, match=r"'toy' backend does not give its model's number of layers"
    ):
        playground.layers()
    assert not playground.loaded


def test_an_openai_target_gets_the_original_and_the_prompted_image(playground, scene, monkeypatch):
    from test_targets_openai import FakeOpenAI, request_images

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as server:
        asking = Playground(
            device="cpu",
            target="openai:test-model",
            target_options={"base_url": server.base_url},
            build_prompter=lambda *a, **k: playground.prompter(),
        )
        raw = asking.attribute(scene, "a red circle")
        prompted = asking.view(
            scene, raw, resample="lanczos", background=0, geometry="stretch"
        ).prompted
        assert asking.ask(scene, prompted, "what is red?") == (
            "echo: what is red?",
            "echo: what is red?",
        )
    sent = [image for request in server.requests for image in request_images(request)]
    # The two requests may run concurrently: their order is not fixed.
    assert sorted(np.asarray(image).tobytes() for image in sent) == sorted(
        [pixels(scene).tobytes(), pixels(prompted).tobytes()]
    )


# -- the page's handlers (plain Python; the browser tests drive the same handlers through Gradio) --


@pytest.fixture(scope="module")
def page_module():
    pytest.importorskip("gradio", reason="pip install -e '.[playground]'")
    from api_prompt.playground import app

    return app


@pytest.fixture(scope="module")
def page(page_module, playground):
    return page_module.Page(playground)


def upload_value(path: Path, name: str | None = None) -> dict:
    """What the upload box sends: the file's path on the server and the name the visitor knows."""
    return {"path": str(path), "orig_name": name or path.name}


def prompted_page(page, scene_path: Path):
    """A page session that shows results for ``scene_path``."""
    changes = page.prompt(
        upload_value(scene_path),
        "a yellow triangle",
        2,
        10.0,
        3,
        "lanczos",
        0,
        "stretch",
        None,
        True,
    )
    assert changes["error"] == "" and changes["prompted"]
    return changes["session"]


@pytest.mark.parametrize(
    "handler, args, sentence",
    [
        (
            "redraw",
            ("lanczos", 300, "stretch"),
            "Background gray takes a whole number from 0 to 255, not 300",
        ),
        (
            "redraw",
            ("lanczos", None, "stretch"),
            "Background gray takes a whole number from 0 to 255; its box is empty",
        ),
        (
            "redraw",
            ("lanczos", 12.5, "stretch"),
            "Background gray takes a whole number from 0 to 255, not 12.5",
        ),
        (
            "recombine",
            (-5, 3, "lanczos", 0, "stretch"),
            "Enhance takes a number from 0 to 20, not -5",
        ),
        (
            "recombine",
            (float("nan"), 3, "lanczos", 0, "stretch"),
            "Enhance takes a number from 0 to 20, not nan",
        ),
        (
            "recombine",
            (10, 4, "lanczos", 0, "stretch"),
            "Kernel size takes an odd whole number from 1 to 15, not 4",
        ),
        (
            "recombine",
            (10, 17, "lanczos", 0, "stretch"),
            "Kernel size takes an odd whole number from 1 to 15, not 17",
        ),
    ],
)
def test_a_number_beyond_a_control_is_one_sentence_and_the_pictures_stay(
    page, scene, tmp_path, handler, args, sentence
):
    scene_path = tmp_path / "scene.png"
    scene.save(scene_path)
    state = prompted_page(page, scene_path)
    changes = getattr(page, handler)(*args, state)
    assert changes == {
        "error": f"**Error:** {sentence}"
    }  # no picture panel named: they keep their content
    # The next valid value redraws from the kept map, and the sentence goes.
    valid = (
        page.redraw("lanczos", 120, "stretch", state)
        if handler == "redraw"
        else page.recombine(10, 5, "lanczos", 0, "stretch", state)
    )
    assert valid["error"] == "" and valid["prompted"]


@pytest.mark.slow
def test_the_page_shows_every_style_beside_the_prompted_image_shrunk_for_the_browser(
    page, page_module, scene, tmp_path
):
    big = scene.resize((1500, 1000))
    scene_path = tmp_path / "big.png"
    big.save(scene_path)
    changes = page.prompt(
        upload_value(scene_path),
        "a yellow triangle",
        2,
        10.0,
        3,
        "lanczos",
        0,
        "stretch",
        None,
        True,
    )
    assert not set(page_module.STYLE_PANELS) & set(
        changes
    )  # the prompted image does not wait for the row
    row = page.draw_styles(changes["session"])  # the row follows, from the same map
    assert page.draw_styles(changes["session"]) == {}  # drawn once per change
    view = page.playground.view(
        big, changes["session"].combined, resample="lanczos", background=0, geometry="stretch"
    )
    assert list(page_module.STYLE_PANELS) == [
        "style_overlay",
        "style_crop",
        "style_blur",
        "style_box",
    ]
    for panel, name in page_module.STYLE_PANELS.items():
        with Image.open(row[panel]) as shown:
            expected = view.styles[name].copy()
            expected.thumbnail((page_module.DISPLAY_SIDE,) * 2, Image.Resampling.LANCZOS)
            assert np.array_equal(pixels(shown), pixels(expected)), panel
    cleared = page.upload(upload_value(scene_path), changes["session"])
    assert all(cleared[panel] is None for panel in page_module.STYLE_PANELS)


def test_a_layer_beyond_the_model_is_one_sentence_and_runs_nothing(
    page, playground, scene, tmp_path
):
    scene_path = tmp_path / "scene.png"
    scene.save(scene_path)
    state = prompted_page(page, scene_path)
    runs = playground.model_runs
    changes = page.relayer(
        upload_value(scene_path),
        "a yellow triangle",
        9,
        10.0,
        3,
        "lanczos",
        0,
        "stretch",
        state,
        True,
    )
    assert changes == {"error": "**Error:** Layer takes a whole number from 0 to 3, not 9"}
    assert playground.model_runs == runs


def test_a_file_that_is_not_an_image_gets_a_sentence_and_empties_the_results(
    page, page_module, scene, tmp_path
):
    scene_path = tmp_path / "scene.png"
    scene.save(scene_path)
    state = prompted_page(page, scene_path)
    notes = tmp_path / "upload-7f3a.txt"  # Gradio keeps uploads under its own names
    notes.write_text("not an image\n")
    changes = page.upload(upload_value(notes, "notes.txt"), state)
    assert (
        changes["error"]
        == "**Error:** cannot load image 'notes.txt': not a recognised image format "
        "(is it really an image?)"
    )
    assert all(changes[name] is None for name in page_module.PICTURES)
    assert changes["answer_original"] == changes["answer_prompted"] == ""
    assert state.image is None and state.prompted is None
    again = page.prompt(
        upload_value(notes, "notes.txt"),
        "what is it?",
        2,
        10.0,
        3,
        "lanczos",
        0,
        "stretch",
        state,
        True,
    )
    assert again == {"error": changes["error"]}


def test_a_huge_image_is_refused_in_a_page_users_words(page_module, playground, tmp_path):
    small_limit = page_module.Page(
        Playground(
            device="cpu", max_pixels=10_000, build_prompter=lambda *a, **k: playground.prompter()
        )
    )
    photo = tmp_path / "upload-1.png"
    Image.new("RGB", (200, 100)).save(photo)
    changes = small_limit.upload(upload_value(photo, "photo.png"), None)
    assert changes["error"] == (
        "**Error:** 'photo.png' (200×100 pixels) is larger than this page accepts "
        "(10,000 pixels): upload a smaller copy of it"
    )
    # Past PIL's own limit the size is not known, only that it is too large; the default limit.
    bomb = tmp_path / "upload-2.png"
    Image.new("1", (20_000, 10_000)).save(bomb)  # 200 million pixels, 25 kB on disk
    changes = page_module.Page(playground).upload(upload_value(bomb, "scan.png"), None)
    assert changes["error"] == (
        "**Error:** 'scan.png' is larger than this page accepts (178,956,970 pixels): "
        "upload a smaller copy of it"
    )


def test_the_geometry_line_says_what_stretch_and_fit_do_and_which_the_paper_used(
    page_module, playground
):
    app = page_module.build_app(playground)
    geometry = next(
        block for block in app.blocks.values() if getattr(block, "elem_id", None) == "geometry"
    )
    assert geometry.info == page_module.GEOMETRY_INFO
    assert "stretch (the paper's) spreads the map over the whole image" in geometry.info
    assert "fit puts it on the part the model saw" in geometry.info
    assert (
        "on a tall or wide image the highlight stays on the object instead of shifting off it"
        in geometry.info
    )


def highlight_centre(
    playground: Playground, amap, size: tuple[int, int], geometry: str
) -> tuple[float, float]:
    """Where the prompted image is brightest (top 1% of the mask drawn over white), as (x, y)."""
    white = Image.new("RGB", size, "white")
    drawn = np.asarray(
        playground.view(white, amap, resample="lanczos", background=0, geometry=geometry).prompted
    )
    ys, xs = np.nonzero(drawn[..., 0] >= np.percentile(drawn[..., 0], 99))
    return float(xs.mean()), float(ys.mean())


def test_on_a_tall_image_stretch_puts_the_highlight_above_the_object_and_fit_on_it(playground):
    """The claim of the Geometry line, with the page's model on a tall image (a scene in the middle)."""
    scene = Image.open(EXAMPLES / "synthshapes-23.png").convert(
        "RGB"
    )  # the red square is in its upper half
    tall = Image.new("RGB", (256, 768), scene.getpixel((0, 0)))
    tall.paste(scene, (0, 256))  # CLIP's centre crop is exactly the scene
    red = np.all(np.abs(np.asarray(tall, int) - (220, 30, 30)) < 40, axis=-1)
    rows, cols = np.nonzero(red)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    amap = playground.combine(
        playground.attribute(tall, "a red square"), enhance=10.0, kernel_size=3
    )
    fit_x, fit_y = highlight_centre(playground, amap, tall.size, "fit")
    stretch_x, stretch_y = highlight_centre(playground, amap, tall.size, "stretch")
    assert top <= fit_y <= bottom and left - 16 <= fit_x <= right
    assert stretch_y < top  # above the object


def test_the_page_says_its_model_is_the_small_one_and_how_to_start_a_real_clip(
    page_module, playground, monkeypatch
):
    intro = page_module._introduction(playground, "api-prompt playground")
    assert "small CLIP trained only on synthetic shapes" in intro
    assert f"`{page_module.REAL_CLIP_COMMAND}`" in intro
    other = Playground(model="ViT-B-16", pretrained="openai", build_prompter=CountingPrompter())
    assert "synthetic shapes" not in page_module._introduction(other, "api-prompt playground")

    # The command the page gives starts the page with that CLIP (no download here: nothing loads).
    gradio = pytest.importorskip("gradio")
    started = []
    monkeypatch.setattr(Playground, "prompter", lambda self: started.append(self))
    monkeypatch.setattr(gradio.Blocks, "launch", lambda app, **options: None)
    command = page_module.REAL_CLIP_COMMAND.split()
    assert command[:2] == ["api-prompt", "playground"]
    result = invoke(*command[2:])
    assert result.exit_code == 0, result.stderr
    assert [(pg.backend, pg.model, pg.backend_options) for pg in started] == [
        ("clip", "ViT-B-16", {"pretrained": "openai"})
    ]
    assert not started[0].small_example_model
