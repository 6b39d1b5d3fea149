"""``crop``: zoom into where the map points (ViCrop, "MLLMs know where to look", ICLR 2025).

The target gets the original image *and* a zoomed crop of the high-attention region, in one
turn. The crop's box follows ViCrop's adaptive rule (:func:`attention_box`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from ..attention_map import AttentionMap
from ..errors import ConfigError
from ..figures import side_by_side
from ..settings import check_geometry
from .base import Style, as_rgb, grid_geometry, mask_array

__all__ = ["CropStyle", "attention_box", "VICROP_RATIOS", "ONE_IMAGE"]

#: Box sides tried, as multiples of ``crop_size`` (ViCrop's).
VICROP_RATIOS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0)

#: What :meth:`CropStyle.single` gives a consumer that takes one image.
ONE_IMAGE = ("side-by-side", "crop")


def attention_box(
    mask: np.ndarray,
    size: tuple[int, int],
    cells: tuple[float, float, float, float],
    crop_size: float = 336,
    ratios: Sequence[float] = VICROP_RATIOS,
) -> tuple[int, int, int, int]:
    """ViCrop's adaptive box around the high-attention region: ``(left, top, right, bottom)``.

    For each ratio ``r`` a window of ``crop_size·r`` image pixels (in whole grid cells, at
    least one, at most the grid) slides over the map; its best position has the largest sum
    (ties: leftmost, then topmost). The window's *sharpness* is that sum minus the mean of the
    sums one cell to the left, right, above and below (those that exist), per cell. The ratio
    with the sharpest peak wins (ties: the smaller); the box is a ``crop_size·r`` square centred
    on its window, shifted to lie inside the image and cut at its edges. A window that covers
    the whole grid is skipped, and at ``r = 1`` it means the whole image is the box.

    Args:
        mask: the (rows, cols) map; any non-negative scale.
        size: (W, H) of the image the box is for.
        cells: ``(left, top, cell_w, cell_h)`` of the grid on that image
            (:func:`~api_prompt.styles.base.grid_geometry`).
        crop_size: the side of the smallest box, in image pixels (ViCrop: the target's input
            resolution, 336 for LLaVA-1.5).

    >>> mask = np.zeros((4, 4)); mask[3, 3] = 1.0
    >>> attention_box(mask, (400, 400), (0.0, 0.0, 100.0, 100.0), crop_size=200)
    (200, 200, 400, 400)
    """
    mask = np.asarray(mask, dtype=np.float64)
    rows, cols = mask.shape
    width, height = size
    left, top, cell_w, cell_h = cells
    candidates = []  # (sharpness, position (x, y), window (bw, bh), side)
    for ratio in ratios:
        side = crop_size * ratio
        bw = min(max(int(side / cell_w), 1), cols)
        bh = min(max(int(side / cell_h), 1), rows)
        if bw == cols and bh == rows:
            if ratio == ratios[0]:
                return 0, 0, int(width), int(height)
            continue
        sums = np.lib.stride_tricks.sliding_window_view(mask, (bh, bw)).sum(axis=(2, 3))
        # x-major order, so the first maximum is the leftmost, then the topmost
        x, y = divmod(int(np.argmax(sums.T)), sums.shape[0])
        neighbours = [
            sums[y + dy, x + dx]
            for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1))
            if 0 <= x + dx < sums.shape[1] and 0 <= y + dy < sums.shape[0]
        ]
        sharpness = (sums[y, x] - np.mean(neighbours)) / (bw * bh)
        candidates.append((sharpness, (x, y), (bw, bh), side))
    best = max(range(len(candidates)), key=lambda i: (candidates[i][0], -i))
    _, (x, y), (bw, bh), side = candidates[best]
    half = side // 2
    centre_x = int(left + x * cell_w + cell_w * bw / 2)
    centre_y = int(top + y * cell_h + cell_h * bh / 2)
    clamped_x = min(max(centre_x, half), width - half)
    clamped_y = min(max(centre_y, half), height - half)
    return (
        int(max(0, clamped_x - half)),
        int(max(0, clamped_y - half)),
        int(min(width, clamped_x + half)),
        int(min(height, clamped_y + half)),
    )


class CropStyle(Style):
    """The original image, then a zoomed crop of the region the map points at.

    Args:
        crop_size: side of the smallest crop box in original-image pixels (ViCrop: the
            target's input resolution; 336 for LLaVA-1.5). Boxes up to twice that are tried.
        zoom: the crop is resized (LANCZOS) so its longer side is ``zoom`` pixels (None:
            ``crop_size``), as a target's processor would see it.
        one_image: what :meth:`single` gives a one-image consumer: ``side-by-side`` (the
            original and the zoomed crop in one picture) or ``crop`` (the crop only).
        geometry: where the grid lies on the image (``stretch`` or ``fit``).

    >>> from api_prompt import AttentionMap
    >>> mask = np.zeros((4, 4), np.float32); mask[0, 0] = 1
    >>> amap = AttentionMap(mask, {}, (400, 400), (0.0, 0.0, 400.0, 400.0))
    >>> [im.size for im in CropStyle(crop_size=100, zoom=50).apply(Image.new("RGB", (400, 400)), amap)]
    [(400, 400), (50, 50)]
    """

    name = "crop"

    def __init__(
        self,
        *,
        crop_size: int = 336,
        zoom: int | None = None,
        one_image: str = "side-by-side",
        geometry: str = "stretch",
    ) -> None:
        self.crop_size = _positive_int("crop_size", crop_size)
        self.zoom = self.crop_size if zoom is None else _positive_int("zoom", zoom)
        if one_image not in ONE_IMAGE:
            raise ConfigError(
                f"unknown one_image {one_image!r}; choose one of: {', '.join(ONE_IMAGE)}"
            )
        self.one_image = one_image
        self.geometry = check_geometry(geometry)

    def box(self, image: Any, attention_map: AttentionMap) -> tuple[int, int, int, int]:
        """The crop box on ``image`` (left, top, right, bottom), in its pixels."""
        size = as_rgb(image).size
        return attention_box(
            mask_array(attention_map),
            size,
            grid_geometry(attention_map, size, self.geometry),
            self.crop_size,
        )

    def apply(self, image: Any, attention_map: AttentionMap) -> list[Image.Image]:
        image = as_rgb(image)
        crop = image.crop(self.box(image, attention_map))
        scale = self.zoom / max(crop.size)
        zoomed = crop.resize(
            (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
            Image.Resampling.LANCZOS,
        )
        return [image.copy(), zoomed]

    def single_from(self, images: list[Image.Image]) -> Image.Image:
        original, zoomed = images
        return zoomed if self.one_image == "crop" else side_by_side([original, zoomed])


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive number of pixels, got {value!r}")
    return int(value)
