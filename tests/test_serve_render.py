"""The proxy's per-image work: the table overlay is the overlay, pixel for pixel; the prompted
image goes upstream in the client's format (a JPEG for a JPEG, otherwise a lossless PNG)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from api_prompt import AttentionMap, Overlay
from api_prompt.serve.render import TableRender, encode_like


def random_map(seed: int, image_size: tuple[int, int], region: tuple[float, ...]) -> AttentionMap:
    mask = np.random.default_rng(seed).random((7, 7)).astype(np.float32)
    mask[0, 0], mask[-1, -1] = 0.0, 1.0  # both ends of the range
    return AttentionMap(mask=mask, parts={}, image_size=image_size, region=region)


@pytest.mark.parametrize("background", [0, 1, 127, 128, 254, 255])
@pytest.mark.parametrize("geometry", ["stretch", "fit"])
@pytest.mark.parametrize("resample", ["lanczos", "nearest"])
def test_table_render_is_exactly_the_overlay(background, geometry, resample):
    rng = np.random.default_rng(background)
    image = Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8))
    overlay = Overlay(resample=resample, background=background, geometry=geometry)
    render = TableRender(overlay)
    for seed, region in enumerate([(0.0, 0.0, 61.0, 45.0), (8.0, 0.0, 53.0, 45.0)]):
        amap = random_map(seed, image.size, region)
        expected = overlay.apply(image, amap)
        got = render(image, amap)
        assert got.mode == "RGB" and got.size == image.size
        assert got.tobytes() == expected.tobytes()


def test_table_render_takes_a_prompter_and_images_that_are_not_rgb():
    class Holder:  # anything with an ``overlay``, as a Prompter has
        overlay = Overlay(background=90)

    gray = Image.fromarray(np.arange(35 * 20, dtype=np.uint32).reshape(20, 35).astype(np.uint8), "L")
    amap = random_map(3, gray.size, (0.0, 0.0, 35.0, 20.0))
    assert TableRender(Holder()).overlay is Holder.overlay
    assert TableRender(Holder())(gray, amap).tobytes() == Holder.overlay.apply(gray, amap).tobytes()


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
    assert decode(encode_like(image, jpeg), "image/jpeg") == encoded(image, format="JPEG", quality=95)
    assert decode(encode_like(image, jpeg, jpeg_quality=80), "image/jpeg") == encoded(image, format="JPEG", quality=80)
    for source in (png, webp, jpeg):  # lossless, exactly the pixels (a JPEG too when asked)
        url = encode_like(image, source, jpeg_quality=None if source is jpeg else 95, png_compress_level=0)
        with Image.open(io.BytesIO(decode(url, "image/png"))) as sent:
            assert sent.mode == "RGB" and sent.tobytes() == image.tobytes()
