"""The proxy's per-image work after the model: the overlay, and the image sent upstream.

Both are on every request's path, so both are made cheap here without changing a pixel:

- :class:`TableRender` is :meth:`Prompter.render <api_prompt.Prompter.render>` by table lookup.
  The overlay's blend (:func:`api_prompt.overlay.blend`) works pixel by pixel: each output level
  depends only on the input level, the mask level and the background. So the table is made once,
  by that very function, on a 256×256 grid of (input, mask) levels, and a prompted image is one
  ``take`` from it: the same bytes, a few times faster than the float64 arithmetic on a photo.
- :func:`encode_like` sends the prompted image upstream in the format the client sent: a JPEG in
  gives a JPEG out (quality ``jpeg_quality``, 95 by default; under a millisecond for a photo, and
  about the size of the client's own JPEG), anything else a lossless PNG (``png_compress_level``,
  1 by default). A client that sent a lossless image gets exactly the prompted pixels upstream;
  one that sent a JPEG had already chosen lossy compression, and re-encoding its prompted image
  losslessly would cost tens of milliseconds and make the request about ten times larger.

>>> import numpy as np
>>> from PIL import Image
>>> from api_prompt import AttentionMap, Overlay
>>> amap = AttentionMap(mask=np.eye(2, dtype=np.float32), parts={}, image_size=(4, 4),
...                     region=(0.0, 0.0, 4.0, 4.0))
>>> overlay = Overlay(resample="nearest", background=100)
>>> image = Image.new("RGB", (4, 4), (200, 30, 255))
>>> TableRender(overlay)(image, amap).tobytes() == overlay.apply(image, amap).tobytes()
True
>>> encode_like(image, b"\\xff\\xd8\\xff\\xe0...")[:23], encode_like(image, b"\\x89PNG...")[:22]
('data:image/jpeg;base64,', 'data:image/png;base64,')
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from ..overlay import Overlay, blend

__all__ = ["TableRender", "blend_table", "encode_like", "is_jpeg"]

_JPEG_MAGIC = b"\xff\xd8\xff"


def blend_table(background: int) -> np.ndarray:
    """``table[m, v]``: what :func:`~api_prompt.overlay.blend` makes of level ``v`` under mask level ``m``.

    Made by ``blend`` itself on every (v, m) pair, so it is that arithmetic, not a copy of it.

    >>> table = blend_table(0)
    >>> table.shape, int(table[128, 200]), int(table[255, 200]), int(table[0, 200])
    ((256, 256), 100, 200, 0)
    """
    levels = np.arange(256, dtype=np.uint8)
    image = Image.fromarray(np.repeat(np.tile(levels, (256, 1))[..., None], 3, axis=2))  # row m: 0..255
    masks = np.repeat(levels[:, None], 256, axis=1)                                       # row m: all m
    return np.ascontiguousarray(np.asarray(blend(image, masks, background))[..., 0])


class TableRender:
    """``render(image, attention_map)``, the same image as ``overlay.apply`` (or ``prompter.render``).

    Takes an :class:`~api_prompt.Overlay` or a :class:`~api_prompt.Prompter`; the table is made
    on the first call (about a millisecond) and kept. Images that are not RGB go to the overlay's
    own ``apply``.
    """

    def __init__(self, overlay: Any) -> None:
        self.overlay = overlay if isinstance(overlay, Overlay) else overlay.overlay
        self._table: np.ndarray | None = None

    def __call__(self, image: Any, attention_map: Any) -> Image.Image:
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            return self.overlay.apply(image, attention_map)
        if self._table is None:
            self._table = blend_table(self.overlay.background).reshape(-1)
        mask = self.overlay.resized_mask(attention_map, image.size)
        pixels = np.asarray(image)
        index = (mask.astype(np.uint16) << 8)[..., None] | pixels  # m * 256 + v, per channel
        return Image.fromarray(self._table.take(index))


def is_jpeg(data: bytes) -> bool:
    """Whether encoded image bytes are a JPEG (by their first bytes).

    >>> is_jpeg(b"\\xff\\xd8\\xff\\xdb"), is_jpeg(b"\\x89PNG\\r\\n")
    (True, False)
    """
    return data[:3] == _JPEG_MAGIC


def encode_like(image: Image.Image, source: bytes, *, jpeg_quality: int | None = 95,
                png_compress_level: int = 1) -> str:
    """``image`` as a data URL in the format of ``source`` (the client's encoded image).

    A JPEG ``source`` gives a JPEG of quality ``jpeg_quality`` (None: PNG as for everything
    else); any other source a lossless PNG of zlib level ``png_compress_level``.
    """
    buffer = io.BytesIO()
    if jpeg_quality is not None and is_jpeg(source):
        image.save(buffer, format="JPEG", quality=jpeg_quality)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG", compress_level=png_compress_level)
        mime = "image/png"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
