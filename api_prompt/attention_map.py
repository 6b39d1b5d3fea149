"""The result of attribution, as plain data: raw parts, the grid, the region it covers, the mask.

Torch-free on purpose (numpy only), so code that only moves maps around (targets, the proxy,
reports) never imports torch.

>>> import numpy as np
>>> from api_prompt.attention_map import AttentionMap
>>> amap = AttentionMap(mask=None, parts={"attention": np.zeros((2, 3), np.float32)},
...                     image_size=(60, 40), region=(0.0, 0.0, 60.0, 40.0))
>>> amap.grid_shape
(2, 3)
>>> amap.with_mask(np.ones((2, 3), np.float32), recipe="llava").recipe
'llava'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: (left, top, right, bottom) in original-image pixels.
Box = tuple[float, float, float, float]


@dataclass
class AttentionMap:
    """Where an auxiliary model looked for one (image, query) pair.

    Attributes:
        mask: (gh, gw) float32 in [0, 1], the combined map before 8-bit conversion, made by the
            recipe named in ``recipe``; None while only the raw parts exist.
        parts: named raw maps in the reference's scale (``psi_cls``/``psi_comp`` for CLIP,
            ``attention`` for decoders), each (gh, gw) float32.
        image_size: (W, H) of the original image.
        region: (left, top, right, bottom) box in original-image pixels that the grid covers.
            CLIP's centre crop lies inside the image; LLaVA's padded square extends beyond it.
        query: the text the map answers.
        answer: the text the auxiliary model generated, when it generates (decoders).
        extra: backend-specific extras (e.g. the number of generation passes averaged).
        recipe: the name of the recipe (:data:`api_prompt.maps.RECIPES`) that made ``mask``.
    """

    mask: np.ndarray | None
    parts: dict[str, np.ndarray]
    image_size: tuple[int, int]
    region: Box
    query: str = ""
    answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, columns) of the grid; rectangular grids are allowed."""
        source = self.mask if self.mask is not None else next(iter(self.parts.values()))
        return int(source.shape[-2]), int(source.shape[-1])

    @property
    def grid(self) -> int:
        """P, the side of a square grid (see :attr:`grid_shape` for rectangular ones)."""
        rows, columns = self.grid_shape
        if rows != columns:
            raise ValueError(f"the grid is {rows}×{columns}, not square: use grid_shape")
        return rows

    def with_mask(self, mask: np.ndarray, recipe: str | None) -> AttentionMap:
        """A copy holding ``mask`` (made by ``recipe``); parts and metadata are shared."""
        return dataclasses.replace(self, mask=np.asarray(mask, dtype=np.float32), recipe=recipe)

    def save(self, path: str | Path) -> None:
        """Write ``mask``, the raw parts, ``image_size`` and ``region`` to an ``.npz`` file."""
        if self.mask is None:
            raise ValueError("this map has no mask yet: combine its parts with a recipe first")
        arrays: dict[str, Any] = {
            "mask": self.mask.astype(np.float32),
            **{name: part.astype(np.float32) for name, part in self.parts.items()},
            "image_size": np.asarray(self.image_size, dtype=np.int64),
            "region": np.asarray(self.region, dtype=np.float64),
        }
        np.savez(path, **arrays)
