"""load_image: every awkward input a user may hand us becomes an RGB image or a clear error."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from api_prompt.errors import ImageLoadError
from api_prompt.images import DEFAULT_MAX_PIXELS, load_image, load_images


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def png_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` gray pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


# ---------------------------------------------------------------------------------------------
# Sources


def test_path_str_bytes_and_file_object_give_the_same_image(tmp_path):
    original = Image.fromarray(np.arange(60, dtype=np.uint8).reshape(4, 5, 3))
    path = save(original, tmp_path / "a.png")
    data = path.read_bytes()
    loaded = [
        load_image(path),
        load_image(str(path)),
        load_image(data),
        load_image(bytearray(data)),
        load_image(io.BytesIO(data)),
    ]
    for image in loaded:
        np.testing.assert_array_equal(pixels(image), np.asarray(original))


def test_pil_input_is_copied_not_modified():
    original = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    loaded = load_image(original)
    assert loaded is not original and original.mode == "RGBA"
    rgb = Image.new("RGB", (3, 2), "red")
    assert load_image(rgb) is not rgb


def test_one_by_one_image(tmp_path):
    image = load_image(save(Image.new("RGB", (1, 1), (1, 2, 3)), tmp_path / "dot.png"))
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (1, 2, 3)


def test_load_images_applies_options_to_each():
    images = load_images([np.zeros((2, 2, 4), np.uint8)] * 2, background=(0, 0, 255))
    assert [im.getpixel((0, 0)) for im in images] == [(0, 0, 255), (0, 0, 255)]


def test_unknown_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="path, bytes"):
        load_image(12345)


# ---------------------------------------------------------------------------------------------
# Modes


def test_rgba_is_composited_over_white_by_default_and_over_a_chosen_background(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (255, 0, 0, 128))
    path = save(rgba, tmp_path / "alpha.png")
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(path, background=(0, 0, 0)).getpixel((0, 0)) == (0, 0, 0)
    half = load_image(path, background=(0, 0, 255)).getpixel((1, 0))
    assert half[0] in (127, 128) and half[1] == 0 and half[2] in (127, 128)


def test_la_image_is_composited(tmp_path):
    path = save(Image.new("LA", (2, 2), (0, 0)), tmp_path / "la.png")
    assert load_image(path, background=(10, 20, 30)).getpixel((0, 0)) == (10, 20, 30)


def test_palette_with_transparent_index_is_composited(tmp_path):
    palette_image = Image.new("P", (2, 1), 0)
    palette_image.putpalette([0, 255, 0, 255, 0, 0] + [0] * 762)
    palette_image.putpixel((1, 0), 1)
    path = save(palette_image, tmp_path / "p.png", transparency=0)
    image = load_image(path, background=(50, 50, 50))
    assert image.getpixel((0, 0)) == (50, 50, 50)  # transparent green is hidden
    assert image.getpixel((1, 0)) == (255, 0, 0)


def test_palette_with_alpha_in_the_palette_is_composited():
    palette_image = Image.new("P", (2, 1), 0)
    palette_image.putpalette([0, 255, 0, 0, 255, 0, 0, 255], rawmode="RGBA")
    palette_image.putpixel((1, 0), 1)
    image = load_image(palette_image, background=(9, 9, 9))
    assert image.getpixel((0, 0)) == (9, 9, 9) and image.getpixel((1, 0)) == (255, 0, 0)


def test_animated_gif_uses_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), colour) for colour in ("red", "lime", "blue")]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert load_image(path).getpixel((2, 2)) == (255, 0, 0)


def test_sixteen_bit_gray_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    gray = pixels(load_image(path))[0, :, 0]
    assert gray.tolist() == [0, 4, 128, 255]


def test_cmyk_jpeg_becomes_the_right_rgb(tmp_path):
    cmyk = Image.new("CMYK", (16, 16), (255, 0, 0, 0))  # pure cyan
    path = save(cmyk, tmp_path / "cyan.jpg", quality=95)
    r, g, b = pixels(load_image(path))[8, 8]
    assert r < 10 and g > 245 and b > 245
    half_black = load_image(Image.new("CMYK", (1, 1), (0, 0, 0, 128))).getpixel((0, 0))
    assert half_black == (127, 127, 127)


def test_one_bit_image_is_black_and_white(tmp_path):
    bits = Image.new("1", (2, 1), 0)
    bits.putpixel((1, 0), 1)
    image = load_image(save(bits, tmp_path / "bits.png"))
    assert pixels(image)[0].tolist() == [[0, 0, 0], [255, 255, 255]]


def exif_rotated_jpeg(path, orientation=6):
    image = Image.new("RGB", (40, 20), "blue")
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red marker at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)
    return path


def test_exif_orientation_is_applied_by_default(tmp_path):
    path = exif_rotated_jpeg(tmp_path / "phone.jpg")
    image = load_image(path)
    assert image.size == (20, 40)  # orientation 6: displayed rotated 90° clockwise
    red, _, blue = pixels(image)[2, 17]  # the marker is now at the top-right
    assert red > 200 and blue < 60


def test_exif_orientation_can_be_ignored_like_the_reference(tmp_path):
    image = load_image(exif_rotated_jpeg(tmp_path / "phone.jpg"), exif_transpose=False)
    assert image.size == (40, 20)
    assert pixels(image)[2, 2, 0] > 200


def test_invalid_background_is_refused():
    with pytest.raises(ValueError, match="background"):
        load_image(Image.new("RGB", (1, 1)), background=(0, 0, 300))
    assert load_image(np.zeros((1, 1, 4), np.uint8), background=7).getpixel((0, 0)) == (7, 7, 7)


# ---------------------------------------------------------------------------------------------
# Numpy arrays


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.full((2, 3), 200, np.uint8), (200, 200, 200)),
        (np.full((2, 3, 1), 200, np.uint8), (200, 200, 200)),
        (np.full((2, 3, 3), (1, 2, 3), np.uint8), (1, 2, 3)),
        (np.full((2, 3, 4), (1, 2, 3, 255), np.uint8), (1, 2, 3)),
        (np.full((2, 3, 3), 65535, np.uint16), (255, 255, 255)),
        (np.full((2, 3), 257 * 100, np.uint16), (100, 100, 100)),
        (np.full((2, 3, 3), 0.5, np.float32), (128, 128, 128)),
        (np.full((2, 3), 1.0, np.float64), (255, 255, 255)),
        (np.ones((2, 3), bool), (255, 255, 255)),
    ],
    ids=["gray", "gray1", "rgb", "rgba", "u16-rgb", "u16-gray", "f32", "f64", "bool"],
)
def test_numpy_arrays_of_each_supported_dtype(array, expected):
    image = load_image(array)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((1, 1)) == expected


def test_non_contiguous_array_is_accepted():
    array = np.zeros((4, 6, 3), np.uint8)
    array[:, ::2] = 255
    assert load_image(array[:, ::2]).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((2, 2), 255.0), r"\[0, 1\]"),
        (np.array([[np.nan]]), "NaN"),
        (np.zeros((2, 2), np.int64), "dtype int64"),
        (np.zeros((3, 8, 8), np.uint8), "channels last"),
        (np.zeros((0, 4), np.uint8), "empty"),
    ],
    ids=["float-0-255", "nan", "int64", "chw", "empty"],
)
def test_unsupported_arrays_raise_clear_errors(array, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


# ---------------------------------------------------------------------------------------------
# Failures name the file and the problem


def assert_fails(source, problem: str, **options):
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **options)
    message = str(caught.value)
    assert "\n" not in message
    if not isinstance(source, (bytes, bytearray)):
        assert str(source) in message
    assert problem.lower() in message.lower(), message
    assert isinstance(caught.value, ValueError)
    return message


def test_missing_path(tmp_path):
    assert_fails(tmp_path / "nope.jpg", "no such file")


def test_directory(tmp_path):
    assert_fails(tmp_path, "directory")


def test_zero_byte_file_and_empty_bytes(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_fails(empty, "empty")
    assert_fails(b"", "empty")


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n")
    assert_fails(fake, "not a recognised image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_fail_at_load_time(tmp_path, fmt):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = tmp_path / f"full.{fmt.lower()}"
    Image.fromarray(noise).save(full, format=fmt)
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert_fails(cut, "truncated")


def test_corrupt_png_data(tmp_path):
    data = bytearray(png_bytes(Image.new("RGB", (32, 32), "red")))
    start = data.index(b"IDAT") + 4
    data[start : start + 20] = b"\xff" * 20
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    assert_fails(bad, "cannot load image")


def test_image_over_max_pixels_is_refused_before_decoding(tmp_path):
    path = save(Image.new("RGB", (20, 10)), tmp_path / "big.png")
    message = assert_fails(path, "max_pixels", max_pixels=199)
    assert "20x10" in message
    assert load_image(path, max_pixels=200).size == (20, 10)


def test_decompression_bomb_header_raises_not_warns(tmp_path, recwarn):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(100_000, 100_000))
    assert "max_pixels" in assert_fails(bomb, "too large")
    assert "max_pixels" in assert_fails(png_header_only(20_000, 10_000), "too large")
    assert DEFAULT_MAX_PIXELS == 2 * 89_478_485
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_above_pils_own_limit_is_honoured(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # PIL alone would refuse > 100 pixels
    data = png_bytes(Image.new("RGB", (20, 10), "red"))
    assert load_image(data, max_pixels=None).size == (20, 10)
    assert load_image(data, max_pixels=1000).size == (20, 10)
    assert Image.MAX_IMAGE_PIXELS == 50  # restored
    assert_fails(data, "too large", max_pixels=100)
