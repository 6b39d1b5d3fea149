"""``box``: a box or ellipse drawn on the original around where the map points."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image, ImageColor, ImageDraw

from ..attention_map import AttentionMap
from ..errors import ConfigError
from ..settings import check_geometry
from .base import Style, as_rgb, grid_geometry, mask_array

__all__ = ["BoxStyle", "attended_box", "SHAPES"]

SHAPES = ("box", "ellipse")


def attended_box(
    mask: np.ndarray,
    size: tuple[int, int],
    cells: tuple[float, float, float, float],
    threshold: float,
) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom; right/bottom inclusive) around every grid cell
    whose value is at least ``threshold`` times the map's maximum, cut at the image's edges.

    >>> mask = np.zeros((4, 4)); mask[1, 2] = 1.0
    >>> attended_box(mask, (40, 40), (0.0, 0.0, 10.0, 10.0), 0.5)
    (20, 10, 29, 19)
    """
    mask = np.asarray(mask, dtype=np.float64)
    rows, cols = np.nonzero(mask >= threshold * mask.max())
    left, top, cell_w, cell_h = cells
    width, height = size
    x0 = math.floor(left + cols.min() * cell_w)
    y0 = math.floor(top + rows.min() * cell_h)
    x1 = math.ceil(left + (cols.max() + 1) * cell_w) - 1
    y1 = math.ceil(top + (rows.max() + 1) * cell_h) - 1
    return (
        min(max(x0, 0), width - 1),
        min(max(y0, 0), height - 1),
        min(max(x1, 0), width - 1),
        min(max(y1, 0), height - 1),
    )


class BoxStyle(Style):
    """The original image with a box (or ellipse) around the cells the map attends to.

    Args:
        color: outline colour (a name or ``#rrggbb``; red by default, as visual-prompting work
            with red circles uses).
        width: line width in pixels (None: 0.5% of the image's longer side, at least 2).
        shape: ``box`` or ``ellipse`` (the ellipse inscribed in the box).
        threshold: a cell is attended when its value is at least this fraction of the maximum.
        geometry: where the grid lies on the image (``stretch`` or ``fit``).

    >>> from api_prompt import AttentionMap
    >>> mask = np.zeros((2, 2), np.float32); mask[0, 0] = 1
    >>> amap = AttentionMap(mask, {}, (20, 20), (0.0, 0.0, 20.0, 20.0))
    >>> BoxStyle(width=1).apply(Image.new("RGB", (20, 20)), amap)[0].getpixel((9, 9))
    (255, 0, 0)
    """

    name = "box"

    def __init__(
        self,
        *,
        color: str = "red",
        width: int | None = None,
        shape: str = "box",
        threshold: float = 0.5,
        geometry: str = "stretch",
    ) -> None:
        try:
            self._rgb = ImageColor.getrgb(color)[:3]
        except (ValueError, AttributeError):
            raise ConfigError(
                f"unknown color {color!r}; use a name such as 'red' or '#ff0000'"
            ) from None
        if width is not None and (
            isinstance(width, bool) or not isinstance(width, int) or width < 1
        ):
            raise ConfigError(f"width must be a positive number of pixels, got {width!r}")
        if shape not in SHAPES:
            raise ConfigError(f"unknown shape {shape!r}; choose one of: {', '.join(SHAPES)}")
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not 0 <= threshold <= 1
        ):
            raise ConfigError(f"threshold must be in [0, 1], got {threshold!r}")
        self.color, self.width, self.shape = color, width, shape
        self.threshold = float(threshold)
        self.geometry = check_geometry(geometry)

    def box(self, image: Any, attention_map: AttentionMap) -> tuple[int, int, int, int]:
        """The drawn box on ``image`` (left, top, right, bottom; inclusive), in its pixels."""
        size = as_rgb(image).size
        return attended_box(
            mask_array(attention_map),
            size,
            grid_geometry(attention_map, size, self.geometry),
            self.threshold,
        )

    def apply(self, image: Any, attention_map: AttentionMap) -> list[Image.Image]:
        image = as_rgb(image).copy()
        width = self.width or max(2, round(0.005 * max(image.size)))
        draw = ImageDraw.Draw(image)
        box = self.box(image, attention_map)
        if self.shape == "box":
            draw.rectangle(box, outline=self._rgb, width=width)
        else:
            draw.ellipse(box, outline=self._rgb, width=width)
        return [image]
