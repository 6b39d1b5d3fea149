"""The prompted image goes upstream in the client's format (a JPEG for a JPEG, otherwise a lossless PNG)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from api_prompt.serve.render import encode_like


def decode(url: str, mime: str) -> bytes:
    header, data = url.split(",", 1)
    assert header == f"data:{mime};base64"
    return base64.b64decode(data)


def encoded(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, **options)
    return buffer.getvalue()


def test_encode_like_keeps_the_clients_format():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    jpeg, png = encoded(image, format="JPEG"), encoded(image, format="PNG")
    webp = encoded(image, format="WEBP")
    assert decode(encode_like(image, jpeg), "image/jpeg") == encoded(
        image, format="JPEG", quality=95
    )
    assert decode(encode_like(image, jpeg, jpeg_quality=80), "image/jpeg") == encoded(
        image, format="JPEG", quality=80
    )
    for source in (png, webp, jpeg):  # lossless, exactly the pixels (a JPEG too when asked)
        url = encode_like(
            image, source, jpeg_quality=None if source is jpeg else 95, png_compress_level=0
        )
        with Image.open(io.BytesIO(decode(url, "image/png"))) as sent:
            assert sent.mode == "RGB" and sent.tobytes() == image.tobytes()
