"""What the playground computes, with no web framework: one model, three stages, pictures.

The page calls three verbs, each doing only what a changed control needs:

- :meth:`Playground.attribute` runs the auxiliary model (a new image, question or layer);
- :meth:`Playground.combine` makes a new mask from the raw parts it kept (enhance, kernel size);
- :meth:`Playground.view` draws the prompted image, the same map in every prompt style side by
  side, the heat map and the raw parts (resample, background, geometry).

The model is loaded once, on first use, behind a lock: concurrent requests wait for the same
load instead of loading twice, and a load that failed is tried again by the next request.
``loads`` and ``model_runs`` count what happened, for tests and for the curious.

>>> from api_prompt.playground.engine import Playground                    # doctest: +SKIP
>>> playground = Playground(device="cpu")              # the shipped small CLIP  # doctest: +SKIP
>>> raw = playground.attribute(image, "a red square")                      # doctest: +SKIP
>>> view = playground.view(image, playground.combine(raw, kernel_size=5))  # doctest: +SKIP
>>> view.prompted.size == image.size, playground.loads                     # doctest: +SKIP
(True, 1)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import ConfigError, ModelLoadError
from ..images import DEFAULT_MAX_PIXELS
from ..prompter import Prompter, check_settings, style_with
from ..styles import STYLES, Style
from ..styles import style_options as options_of

if TYPE_CHECKING:
    from ..targets import Target

__all__ = ["Playground", "View", "default_model_dir", "part_picture", "shrink_to"]

#: The small CLIP trained on synthetic shapes: in a wheel it ships inside this package; in a
#: clone of the repository it is read from ``assets/`` (the same files).
_PACKAGED_MODEL = Path(__file__).resolve().parent / "synthshapes_clip"
_REPOSITORY_MODEL = Path(__file__).resolve().parents[2] / "assets" / "synthshapes-clip"
_MODEL_FILES = ("open_clip_config.json", "open_clip_model.safetensors")

#: Longest side of the heat-map figure; the prompted image always keeps the input's size.
HEATMAP_SIDE = 512
#: Side of each raw-part thumbnail.
PART_SIDE = 160


def default_model_dir() -> Path:
    """The folder of the shipped small CLIP, or a ModelLoadError saying it is missing."""
    for folder in (_PACKAGED_MODEL, _REPOSITORY_MODEL):
        if all((folder / name).is_file() for name in _MODEL_FILES):
            return folder
    raise ModelLoadError(
        "the small example CLIP is not installed with this copy of api-prompt (looked in "
        f"{_PACKAGED_MODEL} and {_REPOSITORY_MODEL}); pass a model with --model"
    )


@dataclass
class View:
    """Everything the page shows for one map: pictures plus the map they came from.

    ``styles`` holds one picture per prompt style (:data:`api_prompt.styles.STYLES`, in order),
    all from this one map; ``prompted`` is the page's style among them. A style that shows the
    target several images (``crop``) is one picture here, as ``Prompter(style=...)`` gives it
    (``PromptResult.image``).
    """

    prompted: Image.Image
    heatmap: Image.Image
    parts: list[tuple[Image.Image, str]]
    map: Any  # AttentionMap
    styles: dict[str, Image.Image] = field(default_factory=dict)


@dataclass
class Playground:
    """One auxiliary model shared by every visitor of the page, plus the page's default settings.

    Args:
        backend, model, pretrained, device, dtype: as for :class:`~api_prompt.Prompter`. With
            the CLIP backend and no model, the small CLIP shipped with api-prompt is used.
        backend_options: further options for the backend's constructor (see its spec).
        layer: the layer selected when the page opens (None: the backend's default).
        preset, enhance, kernel_size, resample, background, geometry: the settings the page
            opens with (checked here, before any model is loaded).
        max_pixels: the largest image (in pixels) the page accepts; None: no limit.
        style: the prompt style of the page's prompted image and download (``overlay``, the
            paper's, by default); every style is shown beside it from the same map.
        style_options: options of the styles (as for :class:`~api_prompt.Prompter`: each goes
            to the styles that take it, e.g. ``{"crop_size": 224, "color": "blue"}``).
        target: optional model asked about the original and the prompted image:
            ``"openai:<model>"``, ``"hf:<id or folder>"`` (``target_options`` go to its
            constructor) or anything :func:`~api_prompt.targets.as_target` takes.
        build_prompter: how to build the Prompter (tests pass a counting or failing one).
    """

    backend: str = "clip"
    model: Any = None
    pretrained: str | None = None
    device: str = "auto"
    dtype: str | None = None
    layer: int | None = None
    preset: str | None = None
    enhance: float | None = None
    kernel_size: int | None = None
    resample: str | None = None
    background: int | None = None
    geometry: str = "stretch"
    backend_options: dict = field(default_factory=dict)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    style: str = "overlay"
    style_options: dict | None = None
    target: Any = None
    target_options: dict = field(default_factory=dict)
    max_new_tokens: int = 64
    build_prompter: Callable[..., Prompter] = Prompter

    loads: int = field(default=0, init=False)
    model_runs: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.settings, self.overlay = check_settings(
            self.preset,
            enhance=self.enhance,
            kernel_size=self.kernel_size,
            resample=self.resample,
            background=self.background,
            geometry=self.geometry,
        )
        self.style, self.style_options = _check_styles(
            self.style, self.style_options, self.settings, self.overlay.geometry
        )
        #: True when the page runs the small CLIP trained on synthetic shapes (no model given).
        self.small_example_model = self.backend == "clip" and self.model is None
        if self.small_example_model:
            self.model = f"local-dir:{default_model_dir()}"
        self._prompter: Prompter | None = None
        self._target: Target | None = None
        self._model_lock = threading.Lock()
        self._target_lock = threading.Lock()

    # -- the model -----------------------------------------------------------------------------

    def prompter(self) -> Prompter:
        """The loaded Prompter; the first call loads the model (later calls wait for it)."""
        with self._model_lock:
            if self._prompter is None:
                options = dict(self.backend_options)
                if self.pretrained is not None:
                    options["pretrained"] = self.pretrained
                prompter = self.build_prompter(
                    self.backend,
                    self.model,
                    layer=self.layer,
                    device=self.device,
                    dtype=self.dtype,
                    preset=self.preset,
                    **self.settings,
                    geometry=self.geometry,
                    **options,
                )
                if prompter.attributor.n_layers is None:
                    raise ConfigError(
                        f"the {self.backend!r} backend does not give its model's number of "
                        "layers (Attributor.n_layers), which the playground's layer slider needs"
                    )
                self._prompter = prompter
                self._n_layers = int(prompter.attributor.n_layers)
                self._default_layer = int(self._prompter.attributor.layer)
                self.loads += 1
            return self._prompter

    @property
    def loaded(self) -> bool:
        """Whether the model is loaded (a load that failed leaves it unloaded)."""
        return self._prompter is not None

    @property
    def target_name(self) -> str | None:
        """How the page names the target."""
        if self.target is None or isinstance(self.target, str):
            return self.target
        return getattr(self.target, "__name__", type(self.target).__name__)

    def layers(self) -> tuple[int, int]:
        """``(number of layers, default layer)`` of the loaded model (loads it if needed)."""
        self.prompter()
        return self._n_layers, self._default_layer

    def attribute(self, image: Image.Image, question: str, layer: int | None = None):
        """The raw map of ``question`` on ``image`` at ``layer`` (None: the model's default).

        The only verb that runs the model. Changing the layer does not reload anything: the
        loaded attributor reads another block for this call, then goes back to its default.
        """
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty: type what the image should answer")
        prompter = self.prompter()
        attributor = prompter.attributor
        with self._model_lock:
            if layer is not None:
                from ..attribution.base import check_layer

                attributor.layer = check_layer(int(layer), self._n_layers)
            try:
                amap = prompter.attribute([image], [question.strip()])[0]
            finally:
                attributor.layer = self._default_layer
            self.model_runs += 1
        return amap

    def truncation_note(self, question: str) -> str | None:
        """A sentence when the text encoder reads only the start of ``question``, else None."""
        overflow = self.prompter().query_overflow(question.strip())
        if overflow is None:
            return None
        count, context = overflow
        return f"the question is {count} tokens long but the text encoder reads {context}; only its start was used"

    # -- no model ------------------------------------------------------------------------------

    def combine(self, amap, *, enhance: float, kernel_size: int):
        """A copy of ``amap`` with the mask its raw parts give at these settings. No model."""
        return self.prompter().combine(amap, enhance=enhance, kernel_size=kernel_size)

    def view(
        self,
        image: Image.Image,
        amap,
        *,
        resample: str,
        background: int,
        geometry: str,
        every_style: bool = True,
    ) -> View:
        """The prompted image (in the page's style), the heat map with its colour bar, the raw
        parts and (``every_style``) the picture of every style. No model."""
        from ..figures import render_heatmap

        self.prompter()
        styles = self.styles(resample=resample, background=background, geometry=geometry)
        prompted = styles[self.style].single(image, amap)
        styled = {self.style: prompted}
        if every_style:
            styled = self.style_pictures(
                image,
                amap,
                resample=resample,
                background=background,
                geometry=geometry,
                known=styled,
            )
        small = shrink_to(image, HEATMAP_SIDE)
        heatmap = render_heatmap(small, amap, geometry=geometry, colorbar=True)
        parts = [
            (part_picture(values), _part_caption(name, values))
            for name, values in amap.parts.items()
        ]
        return View(prompted=prompted, heatmap=heatmap, parts=parts, map=amap, styles=styled)

    def style_pictures(
        self,
        image: Image.Image,
        amap,
        *,
        resample: str,
        background: int,
        geometry: str,
        known: dict[str, Image.Image] | None = None,
    ) -> dict[str, Image.Image]:
        """One picture per style (in :data:`~api_prompt.styles.STYLES` order) from this one map;
        ``known`` holds pictures already drawn with these settings. No model."""
        known = known or {}
        return {
            name: known[name] if name in known else style.single(image, amap)
            for name, style in self.styles(
                resample=resample, background=background, geometry=geometry
            ).items()
        }

    def styles(self, *, resample: str, background: int, geometry: str) -> dict[str, Style]:
        """Every prompt style with these overlay settings and the page's style options, as
        ``Prompter(style=name, style_options=..., resample=..., background=..., geometry=...)``
        builds it (so the pictures are the Python API's). No model."""
        settings, overlay = check_settings(
            None, resample=resample, background=background, geometry=geometry
        )
        assert self.style_options is not None  # __post_init__ made it a dict
        return {
            name: style_with(name, settings, overlay.geometry, self.style_options)
            for name in STYLES
        }

    # -- the target ----------------------------------------------------------------------------

    def ask(self, original: Image.Image, prompted: Image.Image, question: str) -> tuple[str, str]:
        """The target's answers about the original and the prompted image (one batch)."""
        if self.target is None:
            raise ConfigError(
                "no target model: start the playground with --target to compare answers"
            )
        if not isinstance(question, str) or not question.strip():
            raise ConfigError("the question is empty: type what the target should answer")
        with self._target_lock:
            if self._target is None:
                from ..targets import as_target

                self._target = as_target(self.target, **self.target_options)
            # A function target takes (image, question) only; built-in ones take generation options.
            generation = (
                {"max_new_tokens": self.max_new_tokens} if isinstance(self.target, str) else {}
            )
            answers = self._target([original, prompted], [question.strip()] * 2, **generation)
        return answers[0], answers[1]


def _check_styles(style: Any, options: Any, settings: dict, geometry: str) -> tuple[str, dict]:
    """The page's style name and options, each style built once with them: a one-line
    ConfigError for an unknown style, an option no style takes, or a value a style refuses."""
    if options is not None and not isinstance(options, dict):
        raise ConfigError(
            f"style_options must be a dict of option names and values, got {type(options).__name__}"
        )
    options = dict(options or {})
    taken = {option for cls in STYLES.values() for option in options_of(cls)}
    unknown = sorted(str(option) for option in options if option not in taken)
    if unknown:
        raise ConfigError(
            f"no prompt style takes {', '.join(unknown)}; the styles' options are: "
            f"{', '.join(sorted(taken))}"
        )
    if not isinstance(style, str) or style.strip().lower() not in STYLES:
        raise ConfigError(f"unknown style {style!r}; choose one of: {', '.join(STYLES)}")
    for name in STYLES:
        style_with(name, settings, geometry, options)
    return style.strip().lower(), options


def part_picture(values: np.ndarray, side: int = PART_SIDE) -> Image.Image:
    """A raw map as a small picture: min-max scaled, viridis colours, square pixels, ``side`` px.

    >>> part_picture(np.array([[0.0, 1.0], [2.0, 3.0]], np.float32), side=4).size
    (4, 4)
    """
    import matplotlib

    grid = np.asarray(values, dtype=np.float64)
    low, high = np.nanmin(grid), np.nanmax(grid)
    scaled = (grid - low) / (high - low) if high > low else np.zeros_like(grid)
    colours = matplotlib.colormaps["viridis"](scaled, bytes=True)[..., :3]
    rows, cols = grid.shape
    scale = max(1, side // max(rows, cols))
    return Image.fromarray(colours).resize((cols * scale, rows * scale), Image.Resampling.NEAREST)


def _part_caption(name: str, values: np.ndarray) -> str:
    return f"{name}  [{float(np.min(values)):.3g}, {float(np.max(values)):.3g}]"


def shrink_to(image: Image.Image, side: int) -> Image.Image:
    """``image`` itself if its longer side is at most ``side``, else a smaller copy (same aspect).

    >>> shrink_to(Image.new("RGB", (4000, 3000)), 1024).size
    (1024, 768)
    """
    if max(image.size) <= side:
        return image
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    return copy
