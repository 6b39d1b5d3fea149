"""Figures for people, not for the target model: the map as a colour heat map, images in a row.

>>> import numpy as np
>>> from PIL import Image
>>> from api_prompt import AttentionMap
>>> from api_prompt.figures import render_heatmap, side_by_side
>>> amap = AttentionMap(mask=np.eye(4, dtype=np.float32), parts={}, image_size=(32, 16),
...                     region=(8.0, 0.0, 24.0, 16.0))
>>> side_by_side([Image.new("RGB", (32, 16)), render_heatmap(Image.new("RGB", (32, 16)), amap)]).size
(72, 16)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ConfigError
from .overlay import Overlay, as_rgb

if TYPE_CHECKING:  # pragma: no cover
    from .attention_map import AttentionMap

__all__ = ["render_heatmap", "side_by_side"]


def render_heatmap(
    image: Any,
    attention_map: AttentionMap,
    *,
    cmap: Any = "jet",
    alpha: float = 0.5,
    colorbar: bool = False,
    geometry: str = "stretch",
    resample: str = "bilinear",
) -> Image.Image:
    """The map as a colour heat map over the image, for looking at (not for the target model).

    Colour ``c = cmap(floor(255·m))`` of the map laid over the image as :class:`Overlay` does, then
    ``(1 − alpha)·image + alpha·c``, rounded. The result has the input's size; with
    ``colorbar=True`` a labelled colour bar (0 = ignored, 1 = attended) is added on the right
    (the figure is then wider, and taller for images under 160 px high).

    Args:
        image: PIL image or anything :func:`~api_prompt.load_image` accepts.
        attention_map: the map to show.
        cmap: a matplotlib colormap name or object.
        alpha: opacity of the colours, in [0, 1].
        colorbar: add the colour bar strip.
        geometry: ``"stretch"`` or ``"fit"``, as in :class:`Overlay`.
        resample: filter used to resize the map (smooth ``"bilinear"`` by default).

    >>> import numpy as np
    >>> from PIL import Image
    >>> from api_prompt import AttentionMap
    >>> amap = AttentionMap(mask=np.eye(4, dtype=np.float32), parts={}, image_size=(32, 16),
    ...                     region=(8.0, 0.0, 24.0, 16.0))
    >>> render_heatmap(Image.new("RGB", (32, 16)), amap).size
    (32, 16)
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    colormap = _colormap(cmap)
    image = as_rgb(image)
    weights = Overlay(resample=resample, geometry=geometry).resized_mask(attention_map, image.size)
    colours = colormap(weights, bytes=True)[..., :3].astype(np.float64)  # uint8 indexes the LUT
    mixed = (1.0 - alpha) * np.asarray(image, dtype=np.float64) + alpha * colours
    heatmap = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
    if colorbar:
        strip = (
            _named_colorbar_strip(cmap, heatmap.height)
            if isinstance(cmap, str)
            else _colorbar_strip(colormap, heatmap.height)
        )
        heatmap = _attach(heatmap, strip)
    return heatmap


def _colormap(cmap: Any) -> Any:
    import matplotlib

    if not isinstance(cmap, str):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ConfigError(
            f"unknown colormap {cmap!r}; see matplotlib.colormaps for the names"
        ) from None


@functools.lru_cache(maxsize=16)
def _named_colorbar_strip(cmap: str, image_height: int) -> Image.Image:
    # matplotlib takes ~50 ms to draw a bar (a third of the playground's time per request); the
    # same colormap and height always give the same pixels, and the strip is only read.
    return _colorbar_strip(_colormap(cmap), image_height)


def _colorbar_strip(colormap: Any, image_height: int) -> Image.Image:
    """A vertical colour bar labelled 'attention' from 0 to 1, rendered with matplotlib's Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colorbar import ColorbarBase
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    dpi = 100
    height = max(image_height, 160)
    font_size = min(max(height / 28, 7), 14)
    width = int(font_size * 9)
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(figure)
    bar_top = font_size / height  # room for the half-height of the "1.0" tick label
    axes = figure.add_axes((0.1, bar_top, 0.18, 1 - 2 * bar_top))
    bar = ColorbarBase(axes, cmap=colormap, norm=Normalize(0.0, 1.0), orientation="vertical")
    bar.set_ticks([0.0, 0.5, 1.0])
    bar.ax.tick_params(labelsize=font_size)
    bar.set_label("attention", fontsize=font_size)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def _attach(left: Image.Image, right: Image.Image) -> Image.Image:
    """``right`` placed to the right of ``left`` on white, both vertically centred."""
    height = max(left.height, right.height)
    canvas = Image.new("RGB", (left.width + right.width, height), "white")
    canvas.paste(left, (0, (height - left.height) // 2))
    canvas.paste(right, (left.width, (height - right.height) // 2))
    return canvas


def side_by_side(
    images: Sequence[Any],
    labels: Sequence[str] | None = None,
    *,
    height: int | None = None,
    gap: int = 8,
) -> Image.Image:
    """Images in a row at one height (the tallest input's by default), optionally captioned.

    Handy for figures: ``side_by_side([image, heat map, prompted], ["input", "map", "API"])``.

    >>> from PIL import Image
    >>> side_by_side([Image.new("RGB", (20, 10)), Image.new("RGB", (10, 20))], gap=2).size
    (52, 20)
    """
    images = [as_rgb(image) for image in images]
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    row_height = height or max(image.height for image in images)
    scaled = [
        image.resize(
            (max(1, round(image.width * row_height / image.height)), row_height),
            Image.Resampling.LANCZOS,
        )
        if image.height != row_height
        else image
        for image in images
    ]
    font_size = max(10, min(row_height // 12, 28))
    font = _font(font_size)
    caption_height = int(font_size * 1.6) if labels is not None else 0
    width = sum(image.width for image in scaled) + gap * (len(scaled) - 1)
    canvas = Image.new("RGB", (width, row_height + caption_height), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for index, image in enumerate(scaled):
        canvas.paste(image, (x, caption_height))
        if labels is not None:
            text = str(labels[index])
            left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
            position = (
                x + (image.width - (right - left)) / 2 - left,
                (caption_height - (bottom - top)) / 2 - top,
            )
            draw.text(position, text, fill="black", font=font)
        x += image.width + gap
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()
