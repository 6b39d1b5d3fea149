"""Turn an :class:`~api_prompt.AttentionMap` into a prompted image (docs/ALGORITHM.md §3). No model.

The reference pipeline, reproduced bit for bit by :class:`Overlay` with ``geometry="stretch"``:

1. ``floor(255·mask)``: the P×P map as an 8-bit gray image (:func:`mask_to_uint8`);
2. resized with PIL to the image size (W, H), LANCZOS by default (:data:`RESAMPLE`);
3. used as an alpha mask over a uniform gray ``g`` (:func:`blend`).

``geometry="fit"`` instead places the map where the auxiliary model actually looked (the map's
``region``); see :class:`Overlay`. :func:`render_heatmap` and :func:`side_by_side` make figures
for people.

>>> import numpy as np
>>> from PIL import Image
>>> from api_prompt import AttentionMap, Overlay
>>> amap = AttentionMap(mask=np.eye(2, dtype=np.float32), parts={}, image_size=(4, 4),
...                     region=(0.0, 0.0, 4.0, 4.0))
>>> prompted = Overlay(resample="nearest").apply(Image.new("RGB", (4, 4), "white"), amap)
>>> np.asarray(prompted)[..., 0].tolist()
[[255, 255, 0, 0], [255, 255, 0, 0], [0, 0, 255, 255], [0, 0, 255, 255]]
"""

from __future__ import annotations

import functools

import math
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .errors import ConfigError
from .images import load_image

if TYPE_CHECKING:  # pragma: no cover
    from .attribution.base import AttentionMap

__all__ = [
    "RESAMPLE",
    "GEOMETRIES",
    "Overlay",
    "blend",
    "check_background",
    "check_geometry",
    "fit_mask",
    "mask_to_uint8",
    "render_heatmap",
    "resolve_resample",
    "side_by_side",
]

#: PIL filters by the names the CLI and presets use.
RESAMPLE: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}

#: ``stretch``: the reference (map over the whole image); ``fit``: map over its true region.
GEOMETRIES = ("stretch", "fit")


def resolve_resample(resample: str | Image.Resampling) -> Image.Resampling:
    """A PIL filter from a name in :data:`RESAMPLE` (any case) or one of those PIL filters.

    >>> resolve_resample("LANCZOS") is Image.Resampling.LANCZOS
    True
    """
    if isinstance(resample, Image.Resampling) and resample in RESAMPLE.values():
        return resample
    if isinstance(resample, str) and resample.strip().lower() in RESAMPLE:
        return RESAMPLE[resample.strip().lower()]
    raise ConfigError(f"unknown resample {resample!r}; choose one of: {', '.join(RESAMPLE)}")


def check_background(background: Any) -> int:
    """The gray level ``g`` of the masked-out area: an integer in 0..255."""
    if isinstance(background, bool) or not isinstance(background, (int, np.integer)):
        raise ConfigError(f"background must be an integer gray level in 0..255, got {background!r}")
    if not 0 <= background <= 255:
        raise ConfigError(f"background must be in 0..255 (0 black, 255 white), got {background}")
    return int(background)


def check_geometry(geometry: Any) -> str:
    if not isinstance(geometry, str) or geometry.strip().lower() not in GEOMETRIES:
        raise ConfigError(f"unknown geometry {geometry!r}; choose one of: {', '.join(GEOMETRIES)}")
    return geometry.strip().lower()


def mask_to_uint8(mask: Any) -> np.ndarray:
    """``floor(255·mask)`` as uint8, clipped to 0..255, computed in float32 as the reference does.

    Floor, not rounding: 0.999 becomes 254.

    >>> mask_to_uint8(np.array([[0.0, 0.5], [0.999, 1.0]])).tolist()
    [[0, 127], [254, 255]]
    """
    values = np.asarray(mask, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"the mask must be a 2-D P×P array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("the mask contains NaN or infinity")
    return np.clip(np.floor(values * np.float32(255.0)), 0, 255).astype(np.uint8)


def blend(image: Image.Image, mask: Image.Image | np.ndarray, background: int = 0) -> Image.Image:
    """Keep ``image`` where the 8-bit ``mask`` is bright, fade to gray ``background`` where dark.

    Exactly the reference arithmetic, with ``M = mask/255``: ``I·M`` in float32 plus
    ``(1 − M)·g`` where ``g`` is float64, the sum truncated (not rounded) to uint8.
    Computing it all in float32 changes about 1% of pixels by one level when ``g ≠ 0``.
    Each output level depends only on (mask level, pixel level, g), so the arithmetic is done
    once per background on the 256×256 pairs (:func:`blend_table`) and an image is one lookup.

    Args:
        image: the original image (converted to RGB if needed), size (W, H).
        mask: the resized mask, an ``L`` image or a uint8 H×W array of the same size.
        background: gray level ``g`` in 0..255.

    >>> out = blend(Image.new("RGB", (1, 1), (200, 100, 50)), np.array([[128]], np.uint8), 0)
    >>> out.getpixel((0, 0))
    (100, 50, 25)
    """
    table = blend_table(check_background(background))
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    weights = np.asarray(mask)
    if weights.shape != pixels.shape[:2]:
        raise ValueError(
            f"the mask is {weights.shape[1]}x{weights.shape[0]} but the image is "
            f"{pixels.shape[1]}x{pixels.shape[0]}; resize the mask to the image first"
        )
    if weights.dtype != np.uint8:
        raise ValueError(f"the mask must be 8-bit (uint8), got {weights.dtype}")
    return Image.fromarray(table[weights[..., None], pixels])


@functools.lru_cache(maxsize=16)
def blend_table(background: int) -> np.ndarray:
    """``table[m, v]``: the blend of pixel level ``v`` under mask level ``m`` over gray ``background``.

    The reference arithmetic evaluated on every (m, v) pair, read-only.

    >>> table = blend_table(0)
    >>> table.shape, int(table[128, 200]), int(table[255, 200]), int(table[0, 200])
    ((256, 256), 100, 200, 0)
    """
    levels = np.arange(256, dtype=np.float32)
    alpha = (levels / np.float32(255.0))[:, None]          # mask level m, float32
    pixels = np.broadcast_to(levels, (256, 256))            # pixel level v, float32
    gray_field = np.full((256, 256), background, dtype=np.float64)
    table = (pixels * alpha + (1 - alpha) * gray_field).astype(np.uint8)
    table.setflags(write=False)
    return table


class Overlay:
    """Applies attention maps to images: configure once, then call :meth:`apply` (or the object).

    Args:
        resample: PIL filter for resizing the 8-bit map, a name in :data:`RESAMPLE`
            (``"lanczos"`` as the reference; ``"bicubic"`` in some published settings).
        background: gray level the masked-out area fades to (0 black as the reference; 100 and
            200 appear in published settings).
        geometry: how the P×P grid is laid over the image:

            - ``"stretch"`` (the reference, bit-exact): the map is resized to the whole image
              (W, H), although CLIP saw only the central crop and LLaVA a padded square.
            - ``"fit"`` (geometry-correct): the map is resized to its ``region`` box, the part of
              the image the auxiliary model actually looked at. Where the region extends beyond
              the image (LLaVA's padded square) that part is cropped away. Where the image
              extends beyond the region (the strips CLIP's centre crop cut off, which the model
              never saw) every pixel takes the value of the nearest edge of the map
              (replicate), so unseen content is neither hidden nor highlighted arbitrarily: it
              continues the attention at the crop border. When the region is exactly the image,
              ``"fit"`` equals ``"stretch"``.

    If the image passed to :meth:`apply` has a different size than ``attention_map.image_size``
    (say, the full-resolution original of a downscaled copy), ``"fit"`` scales the region in
    proportion.

    >>> import numpy as np
    >>> from PIL import Image
    >>> from api_prompt import AttentionMap
    >>> overlay = Overlay(resample="bicubic", background=200)
    >>> amap = AttentionMap(mask=np.ones((8, 8), np.float32), parts={}, image_size=(64, 48),
    ...                     region=(8.0, 0.0, 56.0, 48.0))
    >>> overlay(Image.new("RGB", (64, 48), "red"), amap).getpixel((0, 0))
    (255, 0, 0)
    """

    def __init__(self, resample: str = "lanczos", background: int = 0, geometry: str = "stretch") -> None:
        self.resample = resolve_resample(resample)
        self.background = check_background(background)
        self.geometry = check_geometry(geometry)

    def __repr__(self) -> str:
        return (
            f"Overlay(resample={self.resample.name.lower()!r}, background={self.background}, "
            f"geometry={self.geometry!r})"
        )

    def apply(self, image: Any, attention_map: "AttentionMap") -> Image.Image:
        """The prompted image: ``image`` faded to gray where the map is low. A new RGB image.

        ``image`` is a PIL image or anything :func:`~api_prompt.load_image` accepts (loaded
        without EXIF rotation, so it keeps the geometry the map was computed on).
        """
        image = _as_rgb(image)
        return blend(image, self.resized_mask(attention_map, image.size), self.background)

    __call__ = apply

    def resized_mask(self, attention_map: "AttentionMap", size: tuple[int, int]) -> np.ndarray:
        """The 8-bit map laid over an image of ``size`` (W, H): a uint8 H×W array."""
        mask_u8 = mask_to_uint8(attention_map.mask)
        width, height = size
        if self.geometry == "stretch":
            return np.asarray(Image.fromarray(mask_u8).resize((width, height), self.resample))
        region = _scaled_region(attention_map, size)
        return fit_mask(mask_u8, region, size, self.resample)


def fit_mask(
    mask_u8: np.ndarray,
    region: tuple[float, float, float, float],
    size: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> np.ndarray:
    """Resize a uint8 grid so it covers ``region`` (left, top, right, bottom) of a ``size`` image.

    Pixels outside the region take the nearest edge value of the grid (replicate). The result is
    a uint8 H×W array.

    >>> fit_mask(np.array([[0, 255]], np.uint8), (2.0, 0.0, 4.0, 1.0), (6, 1), Image.Resampling.NEAREST).tolist()
    [[0, 0, 0, 255, 255, 255]]
    """
    width, height = size
    left, top, right, bottom = _check_region(region)
    rows, cols = mask_u8.shape
    # Size of one grid cell in image pixels, and the image's edges in grid coordinates.
    cell_w, cell_h = (right - left) / cols, (bottom - top) / rows
    box = [-left / cell_w, -top / cell_h, (width - left) / cell_w, (height - top) / cell_h]
    # Replicate-pad the grid wherever the image reaches beyond it; the extra margin keeps the
    # filter's support inside replicated values, so the seam is smooth.
    margin = 4
    pad_left = _cells(-box[0], margin)
    pad_top = _cells(-box[1], margin)
    pad_right = _cells(box[2] - cols, margin)
    pad_bottom = _cells(box[3] - rows, margin)
    padded = np.pad(mask_u8, ((pad_top, pad_bottom), (pad_left, pad_right)), mode="edge")
    padded_rows, padded_cols = padded.shape
    box = [  # clamped: float noise must not push an unpadded side past the grid
        max(box[0] + pad_left, 0.0),
        max(box[1] + pad_top, 0.0),
        min(box[2] + pad_left, padded_cols),
        min(box[3] + pad_top, padded_rows),
    ]
    resized = Image.fromarray(np.ascontiguousarray(padded)).resize((width, height), resample, box=box)
    return np.asarray(resized)


def _cells(overhang: float, margin: int) -> int:
    """Grid cells to pad on one side: none if the image stays inside, else overhang + margin."""
    return math.ceil(overhang) + margin if overhang > 1e-9 else 0


def _check_region(region: Any) -> tuple[float, float, float, float]:
    try:
        left, top, right, bottom = (float(v) for v in region)
    except (TypeError, ValueError):
        raise ValueError(f"region must be (left, top, right, bottom), got {region!r}") from None
    if not all(map(math.isfinite, (left, top, right, bottom))) or right <= left or bottom <= top:
        raise ValueError(f"region must be a finite box with right > left and bottom > top, got {region!r}")
    return left, top, right, bottom


def _scaled_region(attention_map: "AttentionMap", size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The map's region in the pixel coordinates of an image of ``size``."""
    left, top, right, bottom = _check_region(attention_map.region)
    map_w, map_h = attention_map.image_size
    sx, sy = size[0] / map_w, size[1] / map_h
    return left * sx, top * sy, right * sx, bottom * sy


def _as_rgb(image: Any) -> Image.Image:
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return image
    return load_image(image, exif_transpose=False)


# --------------------------------------------------------------------------------------------
# Figures for people


def render_heatmap(
    image: Any,
    attention_map: "AttentionMap",
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
    image = _as_rgb(image)
    weights = Overlay(resample=resample, geometry=geometry).resized_mask(attention_map, image.size)
    colours = colormap(weights, bytes=True)[..., :3].astype(np.float64)  # uint8 indexes the LUT
    mixed = (1.0 - alpha) * np.asarray(image, dtype=np.float64) + alpha * colours
    heatmap = Image.fromarray(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
    if colorbar:
        strip = _named_colorbar_strip(cmap, heatmap.height) if isinstance(cmap, str) else \
            _colorbar_strip(colormap, heatmap.height)
        heatmap = _attach(heatmap, strip)
    return heatmap


def _colormap(cmap: Any):
    import matplotlib

    if not isinstance(cmap, str):
        return cmap
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ConfigError(f"unknown colormap {cmap!r}; see matplotlib.colormaps for the names") from None


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
    images = [_as_rgb(image) for image in images]
    if not images:
        raise ValueError("side_by_side needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    row_height = height or max(image.height for image in images)
    scaled = [
        image.resize((max(1, round(image.width * row_height / image.height)), row_height), Image.Resampling.LANCZOS)
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
            position = (x + (image.width - (right - left)) / 2 - left, (caption_height - (bottom - top)) / 2 - top)
            draw.text(position, text, fill="black", font=font)
        x += image.width + gap
    return canvas


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the small bitmap font
        return ImageFont.load_default()
