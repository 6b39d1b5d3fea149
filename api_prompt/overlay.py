"""Turn an :class:`~api_prompt.AttentionMap` into a prompted image (docs/ALGORITHM.md §3). No model.

The reference pipeline, reproduced bit for bit by :class:`Overlay` with ``geometry="stretch"``:

1. ``floor(255·mask)``: the P×P map as an 8-bit gray image (:func:`mask_to_uint8`);
2. resized with PIL to the image size (W, H), LANCZOS by default (:data:`RESAMPLE`);
3. used as an alpha mask over a uniform gray ``g`` (:func:`blend`).

``geometry="fit"`` instead places the map where the auxiliary model actually looked (the map's
``region``); see :class:`Overlay`. Figures for people (heat maps, rows of images) are in
:mod:`api_prompt.figures`.

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
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .images import load_image
from .settings import GEOMETRIES, RESAMPLE, check_background, check_geometry, resolve_resample

if TYPE_CHECKING:  # pragma: no cover
    from .attention_map import AttentionMap

__all__ = [
    "RESAMPLE",
    "GEOMETRIES",
    "Overlay",
    "blend",
    "check_background",
    "check_geometry",
    "fit_mask",
    "mask_to_uint8",
    "resolve_resample",
]


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
    levels: np.ndarray = np.clip(np.floor(values * np.float32(255.0)), 0, 255).astype(np.uint8)
    return levels


def blend(image: Image.Image, mask: Image.Image | np.ndarray, background: int = 0) -> Image.Image:
    """Keep ``image`` where the 8-bit ``mask`` is bright, fade to gray ``background`` where dark.

    Exactly the reference arithmetic, with ``M = mask/255``: ``I·M`` in float32 plus
    ``(1 − M)·g`` where ``g`` is float64, the sum truncated (not rounded) to uint8.
    Computing it all in float32 changes about 1% of pixels by one level when ``g ≠ 0``.
    Each output level depends only on (mask level, pixel level, g), so the arithmetic is done
    once per background on the 256×256 pairs (:func:`blend_table`) and an image is one lookup.
    For ``g = 0`` (the reference's) that table is exactly ``floor(I·m/255)`` for the mask level
    ``m``, which integer arithmetic computes faster than the lookup.

    Args:
        image: the original image (converted to RGB if needed), size (W, H).
        mask: the resized mask, an ``L`` image or a uint8 H×W array of the same size.
        background: gray level ``g`` in 0..255.

    >>> out = blend(Image.new("RGB", (1, 1), (200, 100, 50)), np.array([[128]], np.uint8), 0)
    >>> out.getpixel((0, 0))
    (100, 50, 25)
    """
    background = check_background(background)
    pixels = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
    weights = np.asarray(mask)
    if weights.shape != pixels.shape[:2]:
        raise ValueError(
            f"the mask is {weights.shape[1]}x{weights.shape[0]} but the image is "
            f"{pixels.shape[1]}x{pixels.shape[0]}; resize the mask to the image first"
        )
    if weights.dtype != np.uint8:
        raise ValueError(f"the mask must be 8-bit (uint8), got {weights.dtype}")
    if background == 0:
        levels = pixels.astype(np.uint16)
        levels *= weights.astype(np.uint16)[..., None]
        levels //= 255
        return Image.fromarray(levels.astype(np.uint8))
    pairs = np.left_shift(weights, 8, dtype=np.uint16)[..., None] | pixels  # 256·m + v
    return Image.fromarray(np.take(blend_table(background).ravel(), pairs))


@functools.lru_cache(maxsize=16)
def blend_table(background: int) -> np.ndarray:
    """``table[m, v]``: the blend of pixel level ``v`` under mask level ``m`` over gray ``background``.

    The reference arithmetic evaluated on every (m, v) pair, read-only.

    >>> table = blend_table(0)
    >>> table.shape, int(table[128, 200]), int(table[255, 200]), int(table[0, 200])
    ((256, 256), 100, 200, 0)
    """
    levels = np.arange(256, dtype=np.float32)
    alpha = (levels / np.float32(255.0))[:, None]  # mask level m, float32
    pixels = np.broadcast_to(levels, (256, 256))  # pixel level v, float32
    gray_field = np.full((256, 256), background, dtype=np.float64)
    table: np.ndarray = (pixels * alpha + (1 - alpha) * gray_field).astype(np.uint8)
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

    def __init__(
        self, resample: str = "lanczos", background: int = 0, geometry: str = "stretch"
    ) -> None:
        self.resample = resolve_resample(resample)
        self.background = check_background(background)
        self.geometry = check_geometry(geometry)

    def __repr__(self) -> str:
        return (
            f"Overlay(resample={self.resample.name.lower()!r}, background={self.background}, "
            f"geometry={self.geometry!r})"
        )

    def apply(self, image: Any, attention_map: AttentionMap) -> Image.Image:
        """The prompted image: ``image`` faded to gray where the map is low. A new RGB image.

        ``image`` is a PIL image or anything :func:`~api_prompt.load_image` accepts (loaded
        without EXIF rotation, so it keeps the geometry the map was computed on).
        """
        image = as_rgb(image)
        return blend(image, self.resized_mask(attention_map, image.size), self.background)

    __call__ = apply

    def resized_mask(self, attention_map: AttentionMap, size: tuple[int, int]) -> np.ndarray:
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
    source = (  # clamped: float noise must not push an unpadded side past the grid
        max(box[0] + pad_left, 0.0),
        max(box[1] + pad_top, 0.0),
        min(box[2] + pad_left, padded_cols),
        min(box[3] + pad_top, padded_rows),
    )
    resized = Image.fromarray(np.ascontiguousarray(padded)).resize(
        (width, height), resample, box=source
    )
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
        raise ValueError(
            f"region must be a finite box with right > left and bottom > top, got {region!r}"
        )
    return left, top, right, bottom


def _scaled_region(
    attention_map: AttentionMap, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """The map's region in the pixel coordinates of an image of ``size``."""
    left, top, right, bottom = _check_region(attention_map.region)
    map_w, map_h = attention_map.image_size
    sx, sy = size[0] / map_w, size[1] / map_h
    return left * sx, top * sy, right * sx, bottom * sy


def as_rgb(image: Any) -> Image.Image:
    if isinstance(image, Image.Image) and image.mode == "RGB":
        return image
    return load_image(image, exif_transpose=False)


def __getattr__(name: str) -> Any:
    # figures moved to api_prompt.figures; the old import path keeps working
    if name in ("render_heatmap", "side_by_side"):
        from . import figures

        return getattr(figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
