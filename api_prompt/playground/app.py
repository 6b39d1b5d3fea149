"""The playground page: a Gradio app over :class:`~api_prompt.playground.engine.Playground`.

>>> from api_prompt.playground import build_app, Playground        # doctest: +SKIP
>>> build_app(Playground(device="cpu")).launch()                   # doctest: +SKIP

Each control is wired to the cheapest stage that depends on it:

- image, question, layer: the model (:meth:`Playground.attribute`), then the rest;
- preset, enhance, kernel size: a new mask from the kept raw parts (no model), then drawing;
- resample, background, geometry: drawing only.

Every handler turns a failure into one sentence in the page (``#error``) and leaves the last
good pictures in place; the full traceback of an unexpected failure goes to the server log.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from PIL import Image

from ..errors import APIPromptError, ImageLoadError
from ..images import load_image
from ..overlay import GEOMETRIES, RESAMPLE
from ..presets import PRESETS
from .engine import Playground

try:
    import gradio as gr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "the playground needs Gradio: pip install 'api-prompt[playground]'"
    ) from exc

__all__ = ["build_app", "examples", "EXAMPLES_DIR"]

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# Bounds of the map controls (the presets use enhance 1..10, kernel 3..7, background 0..200).
ENHANCE_RANGE = (0.0, 20.0, 0.5)
KERNEL_RANGE = (1, 15, 2)  # odd sizes only


def examples() -> list[list[str]]:
    """``[image path, question]`` for each shipped synthetic scene (see examples/examples.json)."""
    entries = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    return [[str(EXAMPLES_DIR / entry["file"]), entry["question"]] for entry in entries]


@dataclass
class Session:
    """One visitor's work: the loaded image, the last raw map and the files offered for download."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="api-prompt-playground-")))
    image_path: str | None = None
    image: Image.Image | None = None
    question: str = ""
    raw: Any = None        # AttentionMap from the model: parts kept for re-combining
    combined: Any = None   # the same with the mask the current enhance/kernel size give
    prompted: Image.Image | None = None

    def use_image(self, path: str | None, image: Image.Image | None) -> None:
        """A new image: the maps of the previous one no longer apply."""
        self.image_path, self.image = path, image
        self.raw = self.combined = self.prompted = None

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _delete_session(session: Session | None) -> None:
    if session is not None:
        session.close()


class _Failure(Exception):
    """A failure already worded for the page."""


def _sentence(exc: BaseException) -> str:
    """One line for the page: the error's own words for expected failures, never a traceback."""
    if isinstance(exc, _Failure):
        return str(exc)
    if isinstance(exc, (APIPromptError, OSError, ValueError)):
        return " ".join(str(exc).split()) or type(exc).__name__
    log.exception("unexpected playground failure")
    return f"unexpected error ({type(exc).__name__}: {' '.join(str(exc).split())}); details are in the server log"


def build_app(playground: Playground, *, title: str = "api-prompt playground") -> "gr.Blocks":
    """The page for ``playground``; call ``.launch()`` on the result (its queue is set up)."""
    presets = list(PRESETS)
    settings = playground.settings
    has_target = playground.target is not None

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        session = gr.State(None, time_to_live=6 * 3600, delete_callback=_delete_session)
        # False until the page knows the model's layers: until then the model's default is used.
        layer_known = gr.State(playground.loaded)
        gr.Markdown(
            f"## {title}\n"
            f"Attention Prompting on Image: where does `{playground.backend}` "
            f"(`{_short(playground.model)}`) look for your question? Upload an image or pick an "
            "example, type a question, press **Prompt** (or Enter)."
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                upload = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="upload")
                question = gr.Textbox(label="Question", placeholder="What color is the car?", elem_id="question")
                run = gr.Button("Prompt", variant="primary", elem_id="run")
                error = gr.Markdown("", elem_id="error")
                preset = gr.Dropdown(presets, value=playground.preset or "package", label="Preset", elem_id="preset")
                layer = gr.Slider(step=1, label="Layer (needs the model)", elem_id="layer",
                                  **{"minimum": 0, "maximum": 1, "value": 0, "info": "loading the model ...",
                                     **_layer_bounds(playground)})
                # The ranges stretch to take a start value from the command line beyond them.
                enhance = gr.Slider(min(ENHANCE_RANGE[0], settings["enhance"]),
                                    max(ENHANCE_RANGE[1], settings["enhance"]), step=ENHANCE_RANGE[2],
                                    value=settings["enhance"], label="Enhance (contrast)", elem_id="enhance")
                kernel = gr.Slider(KERNEL_RANGE[0], max(KERNEL_RANGE[1], settings["kernel_size"]),
                                   step=KERNEL_RANGE[2], value=settings["kernel_size"],
                                   label="Kernel size (smoothing)", elem_id="kernel")
                resample = gr.Radio(list(RESAMPLE), value=settings["resample"], label="Resample", elem_id="resample")
                background = gr.Slider(0, 255, step=1, value=settings["background"], label="Background gray",
                                       elem_id="background")
                geometry = gr.Radio(list(GEOMETRIES), value=playground.overlay.geometry, label="Geometry",
                                    elem_id="geometry")
                gr.Examples(examples(), inputs=[upload, question], label="Examples (synthetic shapes)")
            with gr.Column(scale=2):
                with gr.Row():
                    original = gr.Image(label="Input", format="png", interactive=False, elem_id="original")
                    prompted = gr.Image(label="Prompted image", format="png", interactive=False, elem_id="prompted")
                    heatmap = gr.Image(label="Heat map", format="png", interactive=False, elem_id="heatmap")
                parts = gr.Gallery(label="Raw parts (each min-max scaled; raw range in the caption)", columns=4,
                                   fit_columns=False, height=240, object_fit="contain", format="png",
                                   interactive=False, elem_id="parts")
                with gr.Row():
                    download_image = gr.DownloadButton("Download prompted image (.png)", elem_id="download-image")
                    download_map = gr.DownloadButton("Download map (.npz)", elem_id="download-map")
                with gr.Row(visible=has_target):
                    ask = gr.Button(f"Ask {playground.target_name}", elem_id="ask")
                with gr.Row(visible=has_target):
                    answer_original = gr.Textbox(label="Answer on the original", interactive=False,
                                                 elem_id="answer-original")
                    answer_prompted = gr.Textbox(label="Answer on the prompted image", interactive=False,
                                                 elem_id="answer-prompted")

        pictures = [original, prompted, heatmap, parts, download_image, download_map]
        outputs = [*pictures, error, session]
        skip_pictures = [gr.skip()] * len(pictures)

        def guarded(step: Callable[..., tuple]) -> Callable[..., tuple]:
            """Run ``step``; on failure keep the pictures and show one sentence."""

            def handler(*args):
                try:
                    return step(*args)
                except Exception as exc:  # every failure becomes a sentence, the app keeps serving
                    return (*skip_pictures, _error_markdown(_sentence(exc)), gr.skip())

            return handler

        def shown(state: Session, amap, resample_, background_, geometry_) -> tuple:
            view = playground.view(state.image, amap, resample=resample_, background=int(background_),
                                   geometry=geometry_)
            state.prompted = view.prompted
            # Written here, fast (PNG level 1; lossless at every level): Gradio then only copies them.
            files = {name: state.folder / f"{name}.png" for name in ("prompted", "heatmap")}
            view.prompted.save(files["prompted"], compress_level=1)
            view.heatmap.save(files["heatmap"], compress_level=1)
            parts = []
            for index, (picture, caption) in enumerate(view.parts):
                path = state.folder / f"part{index}.png"
                picture.save(path, compress_level=1)
                parts.append((str(path), caption))
            map_file = state.folder / "map.npz"
            amap.save(map_file)
            return (gr.skip(), str(files["prompted"]), str(files["heatmap"]), parts, str(files["prompted"]),
                    str(map_file), "", state)

        def prompt_step(file, question_, layer_, enhance_, kernel_, resample_, background_, geometry_,
                        state: Session | None, known: bool):
            state = state or Session()
            if not file:
                raise _Failure("no image: upload one or pick an example")
            if not (question_ or "").strip():
                raise _Failure("the question is empty: type what the image should answer")
            new_image = file != state.image_path or state.image is None
            if new_image:
                state.use_image(file, _load_upload(file))
            state.question = question_.strip()
            state.raw = playground.attribute(state.image, state.question, layer=int(layer_) if known else None)
            state.combined = playground.combine(state.raw, enhance=float(enhance_), kernel_size=int(kernel_))
            original_, *result = shown(state, state.combined, resample_, background_, geometry_)
            note = playground.truncation_note(state.question)
            if note:
                result[-2] = f"**Note:** {note}"
            return (state.image if new_image else gr.skip(), *result)

        def layer_step(file, question_, layer_, *rest):
            if not file or not (question_ or "").strip():
                return (*skip_pictures, gr.skip(), gr.skip())  # nothing to recompute yet
            return prompt_step(file, question_, layer_, *rest)

        def combine_step(enhance_, kernel_, resample_, background_, geometry_, state: Session | None):
            if state is None or state.raw is None:
                return (*skip_pictures, gr.skip(), gr.skip())
            state.combined = playground.combine(state.raw, enhance=float(enhance_), kernel_size=int(kernel_))
            return shown(state, state.combined, resample_, background_, geometry_)

        def render_step(resample_, background_, geometry_, state: Session | None):
            if state is None or state.combined is None:
                return (*skip_pictures, gr.skip(), gr.skip())
            return shown(state, state.combined, resample_, background_, geometry_)

        def preset_step(name):
            """Fill the four controls; their change events then recompute what they need."""
            values = PRESETS[name]
            return values["enhance"], values["kernel_size"], values["resample"], values["background"]

        def load_upload(file, state: Session | None):
            """Show an upload at once, so a broken file is reported before anything else."""
            state = state or Session()
            if not file:  # cleared
                state.use_image(None, None)
                return None, "", state
            try:
                state.use_image(file, _load_upload(file))
            except Exception as exc:
                state.use_image(None, None)
                return None, _error_markdown(_sentence(exc)), state
            return state.image, "", state

        def ask_step(question_, state: Session | None):
            if state is None or state.prompted is None:
                raise _Failure("prompt an image first, then ask the target")
            return (*playground.ask(state.image, state.prompted, question_ or state.question), "")

        def ask_handler(question_, state):
            try:
                return ask_step(question_, state)
            except Exception as exc:
                return gr.skip(), gr.skip(), _error_markdown(_sentence(exc))

        def page_opened():
            """Bound the layer slider by the model's block count (the model loads here, once)."""
            try:
                playground.layers()
            except Exception as exc:
                return gr.update(info="the model could not be loaded"), _error_markdown(
                    f"the model could not be loaded: {_sentence(exc)}"), False
            return gr.update(**_layer_bounds(playground)), "", True

        settings_inputs = [enhance, kernel, resample, background, geometry]
        prompt_inputs = [upload, question, layer, *settings_inputs, session, layer_known]
        # One queue for the whole page: visitors take turns, and one visitor's events run in order.
        one_queue = dict(concurrency_id="playground", concurrency_limit=1)
        gr.on([run.click, question.submit], guarded(prompt_step), prompt_inputs, outputs, **one_queue)
        # `change` fires for drags, clicks, arrow keys, typed numbers and presets alike;
        # always_last: while one recompute runs, a burst of changes leaves only the newest queued.
        latest = dict(one_queue, trigger_mode="always_last")
        layer.change(guarded(layer_step), prompt_inputs, outputs, **latest)
        gr.on([enhance.change, kernel.change], guarded(combine_step), [*settings_inputs, session], outputs,
              **latest)
        gr.on([resample.change, background.change, geometry.change], guarded(render_step),
              [resample, background, geometry, session], outputs, **latest)
        preset.input(preset_step, preset, [enhance, kernel, resample, background], **one_queue)
        upload.change(load_upload, [upload, session], [original, error, session], **one_queue)
        ask.click(ask_handler, [question, session], [answer_original, answer_prompted, error], **one_queue)
        app.load(page_opened, None, [layer, error, layer_known], show_progress="hidden", **one_queue)
    app.queue(default_concurrency_limit=1)
    return app


def _layer_bounds(playground: Playground) -> dict:
    """The layer slider's bounds and value, once the model is loaded."""
    if not playground.loaded:
        return {}
    n_layers, default = playground.layers()
    return dict(minimum=0, maximum=n_layers - 1, value=default,
                info=f"0..{n_layers - 1}; the model's default is {default}")


def _load_upload(path: str) -> Image.Image:
    """The uploaded image, or an error that names the file as the visitor knows it."""
    try:
        return load_image(path)
    except ImageLoadError as exc:
        raise _Failure(str(exc).replace(repr(path), repr(Path(path).name))) from None


def _error_markdown(sentence: str) -> str:
    return f"**Error:** {sentence}" if sentence else ""


def _short(model: Any) -> str:
    text = str(model)
    if text.startswith("local-dir:"):
        return "local-dir:" + Path(text.partition(":")[2]).name
    return text
