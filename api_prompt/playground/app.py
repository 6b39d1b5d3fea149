"""The playground page: a Gradio app over :class:`~api_prompt.playground.engine.Playground`.

Long because: the page's layout and the events wiring its panels are one Gradio definition;
the model-free work is in :mod:`api_prompt.playground.engine`.

>>> from api_prompt.playground import build_app, Playground        # doctest: +SKIP
>>> build_app(Playground(device="cpu")).launch()                   # doctest: +SKIP

Each control is wired to the cheapest stage that depends on it:

- image, question, layer: the model (:meth:`Playground.attribute`), then the rest;
- preset, enhance, kernel size: a new mask from the kept raw parts (no model), then drawing;
- resample, background, geometry: drawing only;
- after each of those, the row of every prompt style from the same map (a second step, so the
  prompted image is shown as soon as before).

The handlers live in :class:`Page`, plain Python over the controls' raw values. Every handler
turns a failure into one sentence in the page (``#error``) and leaves the last good pictures in
place; the full traceback of an unexpected failure goes to the server log. A number typed beyond
a slider's range is such a failure (the page checks every number itself). A new upload empties
every result panel; a file that is not an image gets a sentence. Pictures larger than
:data:`DISPLAY_SIDE` are shown as a smaller copy; the download keeps the full size.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import APIPromptError, ImageLoadError
from ..images import ImageTooLargeError, load_image
from ..overlay import GEOMETRIES, RESAMPLE
from ..presets import PRESETS
from ..styles import STYLES
from .engine import Playground, shrink_to

try:
    import gradio as gr
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("the playground needs Gradio: pip install 'api-prompt[playground]'") from exc

__all__ = ["DISPLAY_SIDE", "EXAMPLES_DIR", "Page", "Session", "build_app", "examples"]

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"

# Bounds of the map controls (the presets use enhance 1..10, kernel 3..7, background 0..200).
ENHANCE_RANGE = (0.0, 20.0, 0.5)
KERNEL_RANGE = (1, 15, 2)  # odd sizes only

#: Longest side of a picture sent to the browser: a larger image is shown as a smaller copy (the
#: download keeps the full size), so a photo does not travel as a full-size PNG on every change.
DISPLAY_SIDE = 1024

#: The side-by-side panels: the same map in each prompt style (output name -> style name).
STYLE_PANELS = {f"style_{name}": name for name in STYLES}

#: The picture panels and the files offered for download: a new upload empties them all.
PICTURES = (
    "original",
    "prompted",
    "heatmap",
    "parts",
    *STYLE_PANELS,
    "download_image",
    "download_map",
)

#: What each style shows the target, under its panel.
STYLE_CAPTIONS = {
    "overlay": "overlay (the paper's): faded to gray where the model does not look",
    "crop": "crop (ViCrop): the original and a zoomed crop of where it looks, here side by side",
    "blur": "blur: blurred where it does not look, sharp where it does",
    "box": "box: a box around where it looks",
}

#: The line under the Geometry control.
GEOMETRY_INFO = (
    "stretch (the paper's) spreads the map over the whole image; fit puts it on the part the model saw, so "
    "on a tall or wide image the highlight stays on the object instead of shifting off it."
)

#: How to start the page with a real CLIP instead of the small example one.
REAL_CLIP_COMMAND = "api-prompt playground -m ViT-B-16 --pretrained openai"


def examples() -> list[list[str]]:
    """``[image path, question]`` for each shipped synthetic scene (see examples/examples.json)."""
    entries = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    return [[str(EXAMPLES_DIR / entry["file"]), entry["question"]] for entry in entries]


@dataclass
class Session:
    """One visitor's work: the loaded image, the last raw map and the files offered for download."""

    folder: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="api-prompt-playground-"))
    )
    image_path: str | None = None
    image: Image.Image | None = None
    question: str = ""
    raw: Any = None  # AttentionMap from the model: parts kept for re-combining
    combined: Any = None  # the same with the mask the current enhance/kernel size give
    prompted: Image.Image | None = None
    drawn: dict | None = None  # the drawing settings of the pictures shown
    shown: int = 0  # counts the times pictures were drawn ...
    styles_shown: int = -1  # ... and which of them the style panels show

    def use_image(self, path: str | None, image: Image.Image | None) -> None:
        """A new image: the maps of the previous one no longer apply."""
        self.image_path, self.image = path, image
        self.raw = self.combined = self.prompted = self.drawn = None

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


def _number(
    label: str, value: Any, low: float, high: float, *, whole: bool = False, odd: bool = False
):
    """The number a control holds, or a sentence naming the control and the numbers it takes.

    A slider's number box lets a visitor type anything; this is the page's own check of it.

    >>> _number("Background gray", 300, 0, 255, whole=True)
    Traceback (most recent call last):
    ...
    api_prompt.playground.app._Failure: Background gray takes a whole number from 0 to 255, not 300
    """
    kind = "an odd whole number" if odd else "a whole number" if whole else "a number"
    wanted = f"{label} takes {kind} from {_number_text(low)} to {_number_text(high)}"
    if value is None or value == "":
        raise _Failure(f"{wanted}; its box is empty")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _Failure(f"{wanted}, not {value!r}")
    if not low <= value <= high or (whole and value != int(value)) or (odd and int(value) % 2 == 0):
        raise _Failure(f"{wanted}, not {_number_text(value)}")
    return int(value) if whole else float(value)


def _number_text(value: float) -> str:
    return f"{value:g}"


def _uploaded(file: Any) -> tuple[str, str] | tuple[None, None]:
    """``(path on the server, name the visitor knows)`` of the upload box's value (None: empty).

    The events send the box's raw value, a dict with ``path`` and ``orig_name``; a path string
    (as a caller outside Gradio may pass) works too.
    """
    if not file:
        return None, None
    if isinstance(file, dict):
        path = file["path"]
        return path, file.get("orig_name") or Path(path).name
    return str(file), Path(file).name


def _in_the_page(handler: Callable[..., dict]) -> Callable[..., dict]:
    """Run ``handler``; a failure becomes one sentence in ``error``, and the pictures stay."""

    @functools.wraps(handler)
    def run(*args):
        try:
            return handler(*args)
        except Exception as exc:  # every failure becomes a sentence, the app keeps serving
            return {"error": _error_markdown(_sentence(exc))}

    return run


class Page:
    """What each control of the page does, in plain Python: a handler takes the values of its
    inputs and returns ``{output name: new value}``; an output it does not name keeps what it
    shows. Outputs: the picture panels (:data:`PICTURES`), ``answer_original``,
    ``answer_prompted``, ``error`` (one sentence) and ``session`` (a :class:`Session`).

    The events send the controls' raw values (no Gradio preprocessing), and every number is
    checked here, so a value typed beyond a slider's range is one sentence and the pictures stay.
    """

    def __init__(self, playground: Playground) -> None:
        self.playground = playground
        settings = playground.settings
        # The ranges stretch to take a start value from the command line beyond them.
        self.enhance_range = (
            min(ENHANCE_RANGE[0], settings["enhance"]),
            max(ENHANCE_RANGE[1], settings["enhance"]),
        )
        self.kernel_range = (KERNEL_RANGE[0], max(KERNEL_RANGE[1], settings["kernel_size"]))

    # -- the handlers --------------------------------------------------------------------------

    @_in_the_page
    def prompt(
        self,
        file,
        question,
        layer,
        enhance,
        kernel,
        resample,
        background,
        geometry,
        state: Session | None,
        known: bool,
    ) -> dict:
        """Prompt (the button or Enter): the model, then the mask and the pictures."""
        state = state or Session()
        path, name = _uploaded(file)
        if path is None or name is None:
            raise _Failure("no image: upload one or pick an example")
        if not (question or "").strip():
            raise _Failure("the question is empty: type what the image should answer")
        layer = self._layer(layer, known)
        enhance, kernel = self._mask_settings(enhance, kernel)
        background = self._background(background)
        changes: dict[str, Any] = {}
        image = state.image
        if path != state.image_path or image is None:
            image = self._load(path, name)
            state.use_image(path, image)
            changes["original"] = shrink_to(image, DISPLAY_SIDE)
        state.question = question.strip()
        state.raw = self.playground.attribute(image, state.question, layer=layer)
        state.combined = self.playground.combine(state.raw, enhance=enhance, kernel_size=kernel)
        changes.update(self._show(state, resample, background, geometry))
        note = self.playground.truncation_note(state.question)
        if note:
            changes["error"] = f"**Note:** {note}"
        return changes

    def relayer(self, file, question, layer, *rest) -> dict:
        """Another layer: the model again, once there is an image and a question."""
        if not _uploaded(file)[0] or not (question or "").strip():
            return self._checked(lambda: self._layer(layer, rest[-1]))  # nothing to recompute yet
        return self.prompt(file, question, layer, *rest)

    @_in_the_page
    def recombine(
        self, enhance, kernel, resample, background, geometry, state: Session | None
    ) -> dict:
        """Enhance or kernel size: a new mask from the kept raw parts (no model), then the pictures."""
        enhance, kernel = self._mask_settings(enhance, kernel)
        background = self._background(background)
        if state is None or state.raw is None:
            return {"error": ""}
        state.combined = self.playground.combine(state.raw, enhance=enhance, kernel_size=kernel)
        return self._show(state, resample, background, geometry)

    @_in_the_page
    def redraw(self, resample, background, geometry, state: Session | None) -> dict:
        """Resample, background or geometry: the pictures only."""
        background = self._background(background)
        if state is None or state.combined is None:
            return {"error": ""}
        return self._show(state, resample, background, geometry)

    def upload(self, file, state: Session | None) -> dict:
        """A new upload (or an example, or a cleared box): the results of the previous image go,
        the new image is shown at once, so a file that is not an image is reported before anything else."""
        state = state or Session()
        state.use_image(None, None)
        changes = {
            **dict.fromkeys(PICTURES),
            "answer_original": "",
            "answer_prompted": "",
            "error": "",
            "session": state,
        }
        path, name = _uploaded(file)
        if path is None or name is None:
            return changes
        try:
            image = self._load(path, name)
            state.use_image(path, image)
        except Exception as exc:
            return {**changes, "error": _error_markdown(_sentence(exc))}
        return {**changes, "original": shrink_to(image, DISPLAY_SIDE)}

    @_in_the_page
    def ask(self, question, state: Session | None) -> dict:
        """Ask the target about the original and the prompted image."""
        if state is None or state.image is None or state.prompted is None:
            raise _Failure("prompt an image first, then ask the target")
        original, prompted = self.playground.ask(
            state.image, state.prompted, question or state.question
        )
        return {"answer_original": original, "answer_prompted": prompted, "error": ""}

    # -- helpers -------------------------------------------------------------------------------

    @_in_the_page
    def _checked(self, check: Callable[[], Any]) -> dict:
        check()
        return {"error": ""}

    def _layer(self, layer, known: bool) -> int | None:
        """The layer slider's value once the page knows the model's layers, else None (the default)."""
        if not known:
            return None
        n_layers, _ = self.playground.layers()
        return _number("Layer", layer, 0, n_layers - 1, whole=True)

    def _mask_settings(self, enhance, kernel) -> tuple[float, int]:
        return (
            _number("Enhance", enhance, *self.enhance_range),
            _number("Kernel size", kernel, *self.kernel_range, whole=True, odd=True),
        )

    @staticmethod
    def _background(background) -> int:
        return _number("Background gray", background, 0, 255, whole=True)

    def _load(self, path: str, name: str) -> Image.Image:
        """The uploaded image, or a sentence that names the file as the visitor knows it."""
        try:
            return load_image(path, max_pixels=self.playground.max_pixels)
        except ImageTooLargeError as exc:
            size = f" ({exc.size[0]}×{exc.size[1]} pixels)" if exc.size else ""
            raise _Failure(
                f"{name!r}{size} is larger than this page accepts ({exc.max_pixels:,} pixels): "
                "upload a smaller copy of it"
            ) from None
        except ImageLoadError as exc:
            raise _Failure(str(exc).replace(repr(path), repr(name))) from None

    def _show(self, state: Session, resample: str, background: int, geometry: str) -> dict:
        """Draw the pictures for ``state.combined`` and write the files the page offers."""
        assert state.image is not None, "a map is drawn only for a loaded image"
        amap = state.combined
        state.drawn = dict(resample=resample, background=background, geometry=geometry)
        view = self.playground.view(state.image, amap, **state.drawn, every_style=False)
        state.prompted = view.prompted
        state.shown += 1
        # Written here, fast (PNG level 1; lossless at every level): Gradio then only copies them.
        # The download keeps the full size; the browser gets at most DISPLAY_SIDE pixels a side.
        download = state.folder / "prompted.png"
        view.prompted.save(download, compress_level=1)
        shown = download
        if max(view.prompted.size) > DISPLAY_SIDE:
            shown = state.folder / "prompted-shown.png"
            shrink_to(view.prompted, DISPLAY_SIDE).save(shown, compress_level=1)
        # Numbered, as the style row's files are: the row's number says which drawing it shows.
        for old in state.folder.glob("heatmap-*.png"):
            old.unlink()
        heatmap = state.folder / f"heatmap-{state.shown}.png"
        view.heatmap.save(heatmap, compress_level=1)
        parts = []
        for index, (picture, caption) in enumerate(view.parts):
            path = state.folder / f"part{index}.png"
            picture.save(path, compress_level=1)
            parts.append((str(path), caption))
        map_file = state.folder / "map.npz"
        amap.save(map_file)
        return {
            "prompted": str(shown),
            "heatmap": str(heatmap),
            "parts": parts,
            "download_image": str(download),
            "download_map": str(map_file),
            "error": "",
            "session": state,
        }

    @_in_the_page
    def draw_styles(self, state: Session | None) -> dict:
        """The side-by-side row: every style from the map and settings the pictures above show.

        It runs after each event that drew them, so the prompted image is on the page as soon as
        before (each style costs about as much again as the overlay on a large image)."""
        if (
            state is None
            or state.combined is None
            or state.drawn is None
            or state.image is None
            or state.prompted is None
            or state.styles_shown == state.shown
        ):
            return {}
        pictures = self.playground.style_pictures(
            state.image,
            state.combined,
            **state.drawn,
            known={self.playground.style: state.prompted},
        )
        changes = {}
        for panel, name in STYLE_PANELS.items():
            for old in state.folder.glob(f"{panel}-*.png"):
                old.unlink()
            path = state.folder / f"{panel}-{state.shown}.png"
            shrink_to(pictures[name], DISPLAY_SIDE).save(path, compress_level=1)
            changes[panel] = str(path)
        state.styles_shown = state.shown
        return changes


def build_app(playground: Playground, *, title: str = "api-prompt playground") -> gr.Blocks:
    """The page for ``playground``; call ``.launch()`` on the result (its queue is set up)."""
    presets = list(PRESETS)
    settings = playground.settings
    has_target = playground.target is not None
    page = Page(playground)

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        session = gr.State(None, time_to_live=6 * 3600, delete_callback=_delete_session)
        # False until the page knows the model's layers: until then the model's default is used.
        layer_known = gr.State(playground.loaded)
        gr.Markdown(_introduction(playground, title), elem_id="introduction")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                # Any file is accepted, so a file that is not an image gets a sentence (a filter
                # here would make the browser drop it with Gradio's own message).
                upload = gr.File(label="Image", type="filepath", elem_id="upload")
                question = gr.Textbox(
                    label="Question", placeholder="What color is the car?", elem_id="question"
                )
                run = gr.Button("Prompt", variant="primary", elem_id="run")
                error = gr.Markdown("", elem_id="error")
                preset = gr.Dropdown(
                    presets, value=playground.preset or "package", label="Preset", elem_id="preset"
                )
                layer = gr.Slider(
                    step=1,
                    label="Layer (needs the model)",
                    elem_id="layer",
                    **{
                        "minimum": 0,
                        "maximum": 1,
                        "value": 0,
                        "info": "loading the model ...",
                        **_layer_bounds(playground),
                    },
                )
                enhance = gr.Slider(
                    *page.enhance_range,
                    step=ENHANCE_RANGE[2],
                    value=settings["enhance"],
                    label="Enhance (contrast)",
                    elem_id="enhance",
                )
                kernel = gr.Slider(
                    *page.kernel_range,
                    step=KERNEL_RANGE[2],
                    value=settings["kernel_size"],
                    label="Kernel size (smoothing)",
                    elem_id="kernel",
                )
                resample = gr.Radio(
                    list(RESAMPLE), value=settings["resample"], label="Resample", elem_id="resample"
                )
                background = gr.Slider(
                    0,
                    255,
                    step=1,
                    value=settings["background"],
                    label="Background gray",
                    elem_id="background",
                )
                geometry = gr.Radio(
                    list(GEOMETRIES),
                    value=playground.overlay.geometry,
                    label="Geometry",
                    info=GEOMETRY_INFO,
                    elem_id="geometry",
                )
                gr.Examples(
                    examples(), inputs=[upload, question], label="Examples (synthetic shapes)"
                )
            with gr.Column(scale=2):
                with gr.Row():
                    original = gr.Image(
                        label="Input", format="png", interactive=False, elem_id="original"
                    )
                    prompted = gr.Image(
                        label=f"Prompted image ({playground.style})",
                        format="png",
                        interactive=False,
                        elem_id="prompted",
                    )
                    heatmap = gr.Image(
                        label="Heat map", format="png", interactive=False, elem_id="heatmap"
                    )
                gr.Markdown(
                    "**Every prompt style from the same map** (`--style` picks the one above and the "
                    "download; `api_prompt` in a proxy request picks it per request)",
                    elem_id="styles-heading",
                )
                with gr.Row(elem_id="styles"):
                    style_panels = {
                        panel: gr.Image(
                            label=STYLE_CAPTIONS.get(name, name),
                            format="png",
                            interactive=False,
                            # one height for all: crop's side-by-side picture is twice as wide and
                            # would otherwise shrink under its caption
                            height=220,
                            elem_id=panel.replace("_", "-"),
                        )
                        for panel, name in STYLE_PANELS.items()
                    }
                parts = gr.Gallery(
                    label="Raw parts (each min-max scaled; raw range in the caption)",
                    columns=4,
                    fit_columns=False,
                    height=240,
                    object_fit="contain",
                    format="png",
                    interactive=False,
                    elem_id="parts",
                )
                with gr.Row():
                    download_image = gr.DownloadButton(
                        "Download full-size image (.png)", elem_id="download-image"
                    )
                    download_map = gr.DownloadButton("Download map (.npz)", elem_id="download-map")
                with gr.Row(visible=has_target):
                    ask = gr.Button(f"Ask {playground.target_name}", elem_id="ask")
                with gr.Row(visible=has_target):
                    answer_original = gr.Textbox(
                        label="Answer on the original", interactive=False, elem_id="answer-original"
                    )
                    answer_prompted = gr.Textbox(
                        label="Answer on the prompted image",
                        interactive=False,
                        elem_id="answer-prompted",
                    )

        named = dict(
            original=original,
            prompted=prompted,
            heatmap=heatmap,
            parts=parts,
            **style_panels,
            download_image=download_image,
            download_map=download_map,
            answer_original=answer_original,
            answer_prompted=answer_prompted,
            error=error,
            session=session,
        )

        def wired(handler: Callable[..., dict], *outputs: str) -> dict:
            """Event options that run ``handler`` on the controls' raw values and show what it names."""

            def run(*args):
                changes = handler(*args)
                if not changes:  # Gradio reads an empty dict as one value, not as "nothing changes"
                    return [gr.skip()] * len(outputs)
                return {named[name]: value for name, value in changes.items()}

            return dict(fn=run, outputs=[named[name] for name in outputs], preprocess=False)

        def preset_step(name):
            """Fill the four controls; their change events then recompute what they need."""
            values = PRESETS[name]
            return (
                values["enhance"],
                values["kernel_size"],
                values["resample"],
                values["background"],
            )

        def page_opened():
            """Bound the layer slider by the model's block count (the model loads here, once)."""
            try:
                playground.layers()
            except Exception as exc:
                return (
                    gr.update(info="the model could not be loaded"),
                    _error_markdown(f"the model could not be loaded: {_sentence(exc)}"),
                    False,
                )
            return gr.update(**_layer_bounds(playground)), "", True

        shows = (*PICTURES, "error", "session")
        settings_inputs = [enhance, kernel, resample, background, geometry]
        prompt_inputs = [upload, question, layer, *settings_inputs, session, layer_known]
        # One queue for the whole page: visitors take turns, and one visitor's events run in order.
        one_queue = dict(concurrency_id="playground", concurrency_limit=1)
        # After every event that draws, the style row follows from the same map (a second step,
        # so the prompted image does not wait for it).
        styles_row = dict(
            inputs=[session], **wired(page.draw_styles, *STYLE_PANELS, "error"), **one_queue
        )
        gr.on(
            [run.click, question.submit],
            inputs=prompt_inputs,
            **wired(page.prompt, *shows),
            **one_queue,
        ).then(**styles_row)
        # `change` fires for drags, clicks, arrow keys, typed numbers and presets alike;
        # always_last: while one recompute runs, a burst of changes leaves only the newest queued.
        latest = dict(one_queue, trigger_mode="always_last")
        layer.change(inputs=prompt_inputs, **wired(page.relayer, *shows), **latest).then(
            **styles_row
        )
        gr.on(
            [enhance.change, kernel.change],
            inputs=[*settings_inputs, session],
            **wired(page.recombine, *shows),
            **latest,
        ).then(**styles_row)
        gr.on(
            [resample.change, background.change, geometry.change],
            inputs=[resample, background, geometry, session],
            **wired(page.redraw, *shows),
            **latest,
        ).then(**styles_row)
        preset.input(preset_step, preset, [enhance, kernel, resample, background], **one_queue)
        upload.change(
            inputs=[upload, session],
            **wired(
                page.upload, *PICTURES, "answer_original", "answer_prompted", "error", "session"
            ),
            **one_queue,
        )
        ask.click(
            inputs=[question, session],
            **wired(page.ask, "answer_original", "answer_prompted", "error"),
            **one_queue,
        )
        app.load(
            page_opened, None, [layer, error, layer_known], show_progress="hidden", **one_queue
        )
    app.queue(default_concurrency_limit=1)
    return app


def _introduction(playground: Playground, title: str) -> str:
    """The page's heading: what it does, and which model it runs."""
    text = (
        f"## {title}\n"
        f"Attention Prompting on Image: where does `{playground.backend}` (`{_short(playground.model)}`) look "
        "for your question? Upload an image or pick an example, type a question, press **Prompt** (or Enter)."
    )
    if playground.small_example_model:
        text += (
            "\n\nThe model here is a **small CLIP trained only on synthetic shapes** (try the examples); for your "
            f"own photos start the page with a real CLIP: `{REAL_CLIP_COMMAND}`"
        )
    return text


def _layer_bounds(playground: Playground) -> dict:
    """The layer slider's bounds and value, once the model is loaded."""
    if not playground.loaded:
        return {}
    n_layers, default = playground.layers()
    return dict(
        minimum=0,
        maximum=n_layers - 1,
        value=default,
        info=f"0..{n_layers - 1}; the model's default is {default}",
    )


def _error_markdown(sentence: str) -> str:
    return f"**Error:** {sentence}" if sentence else ""


def _short(model: Any) -> str:
    text = str(model)
    if text.startswith("local-dir:"):
        return "local-dir:" + Path(text.partition(":")[2]).name
    return text
