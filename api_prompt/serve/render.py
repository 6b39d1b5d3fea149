"""The image the proxy sends upstream, in the format the client sent.

:func:`encode_like` sends the prompted image upstream in the format the client sent: a JPEG in
gives a JPEG out (quality ``jpeg_quality``, 95 by default; under a millisecond for a photo, and
about the size of the client's own JPEG), anything else a lossless PNG (``png_compress_level``,
1 by default). A client that sent a lossless image gets exactly the prompted pixels upstream;
one that sent a JPEG had already chosen lossy compression, and re-encoding its prompted image
losslessly would cost tens of milliseconds and make the request about ten times larger.

>>> from PIL import Image
>>> image = Image.new("RGB", (4, 4), (200, 30, 255))
>>> encode_like(image, b"\\xff\\xd8\\xff\\xe0...")[:23], encode_like(image, b"\\x89PNG...")[:22]
('data:image/jpeg;base64,', 'data:image/png;base64,')
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from ..images import is_jpeg

__all__ = ["encode_like", "is_jpeg"]


def encode_like(
    image: Image.Image, source: bytes, *, jpeg_quality: int | None = 95, png_compress_level: int = 1
) -> str:
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
