"""Robust image loading: every entry point turns what the user has into one RGB PIL image here.

Long because: one module decides what every accepted image source means (paths, bytes, arrays,
tensors, PIL images, EXIF, modes, the pixel limit), so that no entry point decodes on its own.

Accepted sources: a path (``str`` or :class:`os.PathLike`), encoded bytes, a binary file-like
object, a :class:`PIL.Image.Image`, or a numpy array (H×W, H×W×1, H×W×3 or H×W×4; ``uint8``,
``uint16``, ``bool`` or float in [0, 1]).

What happens on the way (the reference implementation only calls ``Image.open(p).convert("RGB")``):

- **EXIF orientation** is applied by default, so a phone photo is upright as people see it. The
  reference ignores EXIF; pass ``exif_transpose=False`` to reproduce it exactly.
- **Transparency** (RGBA, LA, PA, palette or gray with a transparent colour) is composited over
  ``background`` (white by default) instead of dropping the alpha channel, which would reveal
  whatever colour the hidden pixels happen to store.
- **CMYK** goes through the embedded ICC profile when there is one, otherwise through the
  standard formula ``R = (255 - C)·(255 - K)/255`` (likewise G, B).
- **16-bit gray** (``I;16*`` and ``I`` modes, values 0..65535) is scaled to 8 bits
  (``round(v / 257)``), not clipped at 255. ``F`` (float) images follow PIL's 0..255 convention.
- **Animated** images (GIF, APNG, WebP, multi-page TIFF) use their first frame.
- **Decompression bombs**: images with more than ``max_pixels`` pixels are refused before they
  are decoded, with :class:`~api_prompt.errors.ImageLoadError`. The default, 178,956,970
  pixels, is the size at which PIL itself raises (twice its ``Image.MAX_IMAGE_PIXELS``);
  between 89,478,485 and that, PIL's own ``DecompressionBombWarning`` still appears.
  ``max_pixels=None`` disables the check.
- Every file is decoded completely inside the loader, so a truncated or corrupt file fails here
  with :class:`~api_prompt.errors.ImageLoadError` (a ``ValueError``) naming the file and the
  problem, not later in the middle of a batch.

>>> import numpy as np
>>> from api_prompt.images import load_image
>>> rgba = np.zeros((2, 3, 4), dtype=np.uint8)          # fully transparent
>>> image = load_image(rgba)
>>> image.mode, image.size, image.getpixel((0, 0))
('RGB', (3, 2), (255, 255, 255))
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageLoadError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageSource",
    "ImageTooLargeError",
    "is_jpeg",
    "load_image",
    "load_images",
    "readable_rgb",
]

#: PIL raises DecompressionBombError above 2 × ``Image.MAX_IMAGE_PIXELS`` (2 × 89,478,485).
DEFAULT_MAX_PIXELS = 178_956_970


class ImageTooLargeError(ImageLoadError):
    """An image refused for having more pixels than ``max_pixels`` (the decompression-bomb guard).

    ``size`` is ``(width, height)`` when known (None when PIL refused the file while reading
    its header); ``max_pixels`` is the limit in force. Front ends catch this class to say how to
    raise their own limit (``--max-pixels``) instead of reading the message.

    >>> from PIL import Image
    >>> try:
    ...     load_image(Image.new("RGB", (20, 10)), max_pixels=100)
    ... except ImageTooLargeError as exc:
    ...     print(exc.size, exc.max_pixels)
    (20, 10) 100
    """

    def __init__(
        self, message: str, *, size: tuple[int, int] | None, max_pixels: int | None
    ) -> None:
        super().__init__(message)
        self.size, self.max_pixels = size, max_pixels


ImageSource = (
    str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray
)
RGB = tuple[int, int, int]

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
# Only needed when a caller allows more pixels than PIL does: PIL's own limit is a global.
_PIL_LIMIT_LOCK = threading.Lock()


def load_image(
    source: ImageSource,
    *,
    exif_transpose: bool = True,
    background: RGB | int = (255, 255, 255),
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Load ``source`` as an RGB PIL image (a new image; the source is never modified).

    Args:
        source: path, bytes, binary file object, PIL image or numpy array (see module docs).
        exif_transpose: rotate/flip according to the EXIF orientation tag (the reference does not).
        background: RGB colour (or one gray level) that transparent pixels are composited over.
        max_pixels: refuse images with more pixels than this (decompression-bomb guard) before
            decoding them; ``None`` disables the check. Numpy arrays are already in memory and
            are not checked.

    Raises:
        ImageLoadError: the source is missing, empty, a directory, not an image, corrupt,
            truncated, too large, or an array of unsupported shape/dtype/range.
        TypeError: the source is of a type this function does not know.

    >>> from PIL import Image
    >>> load_image(Image.new("L", (4, 2), 128)).getpixel((0, 0))
    (128, 128, 128)
    """
    background = _check_background(background)
    if isinstance(source, np.ndarray):
        return _to_rgb(_image_from_array(source), background)
    if isinstance(source, Image.Image):
        return _decode(source, _describe(source), exif_transpose, background, max_pixels)
    name = _describe(source)
    with _open(source, name, max_pixels) as opened:
        return _decode(opened, name, exif_transpose, background, max_pixels)


def load_images(sources: Iterable[ImageSource], **options: Any) -> list[Image.Image]:
    """:func:`load_image` on every source, with the same options.

    >>> from PIL import Image
    >>> [im.size for im in load_images([Image.new("RGB", (2, 1)), Image.new("1", (1, 3))])]
    [(2, 1), (1, 3)]
    """
    return [load_image(source, **options) for source in sources]


_EXIF_ORIENTATION = 0x0112


def readable_rgb(source: ImageSource) -> Image.Image:
    """What :func:`load_image` gives, for a caller that only reads the image: an RGB PIL image of
    an allowed size with no EXIF rotation pending is returned itself, not copied (so a batch of
    decoded images goes to the model without a copy of each); anything else goes through
    :func:`load_image`.

    >>> from PIL import Image
    >>> image = Image.new("RGB", (4, 2))
    >>> readable_rgb(image) is image, readable_rgb(Image.new("L", (4, 2))).mode
    (True, 'RGB')
    """
    if (
        isinstance(source, Image.Image)
        and source.mode == "RGB"
        and "transparency" not in source.info
        and 0 < source.width * source.height <= DEFAULT_MAX_PIXELS
    ):
        try:
            source.load()
            upright = source.getexif().get(_EXIF_ORIENTATION, 1) == 1
        except Exception:  # load_image reports what is wrong with it
            upright = False
        if upright:
            return source
    return load_image(source)


_JPEG_MAGIC = b"\xff\xd8\xff"


def is_jpeg(value: Any) -> bool:
    """Whether an image value (encoded bytes, a path, a PIL image) holds a JPEG, by its first
    bytes (a PIL image by the format it was read from).

    >>> is_jpeg(b"\\xff\\xd8\\xff\\xe0"), is_jpeg(b"\\x89PNG")
    (True, False)
    """
    if isinstance(value, Image.Image):
        return value.format == "JPEG"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value[:3]) == _JPEG_MAGIC
    try:
        with open(value, "rb") as handle:
            return handle.read(3) == _JPEG_MAGIC
    except (OSError, TypeError):
        return False


# --------------------------------------------------------------------------------------------
# Encoded sources


def _describe(source: Any) -> str:
    """A short name for error messages: the path, or what kind of in-memory source it was."""
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", "")
        return (
            repr(filename)
            if filename
            else f"<PIL image {source.mode} {source.width}x{source.height}>"
        )
    name = getattr(source, "name", None)
    return repr(name) if isinstance(name, str) else f"<{type(source).__name__}>"


def _open(source: Any, name: str, max_pixels: int | None) -> Image.Image:
    """Open (parse the header of) an encoded source; decoding happens in :func:`_decode`."""
    if isinstance(source, (str, os.PathLike)):
        stream: Any = _check_path(Path(os.fspath(source)), name)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageLoadError(f"cannot load image {name}: the data is empty (0 bytes)")
        stream = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        stream = source
    else:
        raise TypeError(
            f"cannot load an image from {type(source).__name__}; pass a path, bytes, a binary "
            "file object, a PIL image or a numpy array"
        )
    try:
        with _pil_size_limit(max_pixels):
            return Image.open(stream)
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(
            f"cannot load image {name}: too large, {str(exc).rstrip('.')}; pass a higher "
            "max_pixels (or None) to allow it",
            size=None,
            max_pixels=max_pixels,
        ) from exc
    except Exception as exc:  # PIL raises many types for unreadable data
        raise ImageLoadError(f"cannot load image {name}: {_reason(exc)}") from exc


def _check_path(path: Path, name: str) -> Path:
    if str(path).startswith(("http://", "https://")):
        raise ImageLoadError(f"cannot load image {name}: URLs are not supported, download it first")
    if not path.exists():
        raise ImageLoadError(f"cannot load image {name}: no such file")
    if path.is_dir():
        raise ImageLoadError(f"cannot load image {name}: it is a directory, not an image file")
    if path.stat().st_size == 0:
        raise ImageLoadError(f"cannot load image {name}: the file is empty (0 bytes)")
    return path


@contextmanager
def _pil_size_limit(max_pixels: int | None) -> Iterator[None]:
    """Lift PIL's own decompression-bomb limit while opening, when the caller allows more.

    PIL's limit is a module global, so lifting it is serialised by a lock; loads in other
    threads keep their own ``max_pixels`` check, which :func:`_decode` always applies.
    (``warnings.catch_warnings`` is avoided on purpose: it is not thread-safe.)
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    if pil_limit is None or (max_pixels is not None and max_pixels <= 2 * pil_limit):
        yield
        return
    with _PIL_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def _reason(exc: BaseException) -> str:
    """One line saying what was wrong, from whatever PIL raised."""
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a recognised image format (is it really an image?)"
    if isinstance(exc, OSError) and exc.errno is not None:  # the file system, not the data
        return f"cannot read the file ({exc.strerror})"
    message = " ".join(str(exc).split()) or type(exc).__name__
    if "truncated" in message.lower() or isinstance(exc, EOFError):
        return f"the file is truncated or incomplete ({message})"
    return f"the image data is corrupt or unsupported ({type(exc).__name__}: {message})"


def _decode(
    image: Image.Image, name: str, exif_transpose: bool, background: RGB, max_pixels: int | None
) -> Image.Image:
    """Check the size, decode fully, orient and convert to RGB; every failure names the file."""
    pixels = image.width * image.height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLargeError(
            f"cannot load image {name}: too large, {image.width}x{image.height} = {pixels:,} pixels "
            f"exceeds max_pixels={max_pixels:,} (decompression-bomb guard); pass a higher "
            "max_pixels (or None) to allow it",
            size=image.size,
            max_pixels=max_pixels,
        )
    if pixels == 0:
        raise ImageLoadError(
            f"cannot load image {name}: it has no pixels ({image.width}x{image.height})"
        )
    try:
        image.load()  # decode now, so truncated files fail here and not later
        oriented = _apply_exif_orientation(image) if exif_transpose else image
        return _to_rgb(oriented, background, fresh=oriented is not image)
    except ImageLoadError:
        raise
    except Exception as exc:
        raise ImageLoadError(f"cannot load image {name}: {_reason(exc)}") from exc


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        # A damaged EXIF block should not make an otherwise fine image unusable.
        return image


# --------------------------------------------------------------------------------------------
# Modes


def _to_rgb(image: Image.Image, background: RGB, *, fresh: bool = False) -> Image.Image:
    """A new RGB image from any PIL mode (see the module docstring for each conversion);
    ``fresh``: ``image`` is already a new image (an RGB one is then returned, not copied)."""
    mode = image.mode
    if mode == "RGB":
        return image if fresh else image.copy()
    if _has_alpha(image):
        return _composite(image.convert("RGBA"), background)
    if mode == "CMYK":
        return _cmyk_to_rgb(image)
    if mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(image)
    return image.convert("RGB")


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        return True
    return image.mode == "P" and image.palette is not None and image.palette.mode == "RGBA"


def _composite(rgba: Image.Image, background: RGB) -> Image.Image:
    backdrop = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(backdrop, rgba).convert("RGB")


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    profile = image.info.get("icc_profile")
    if profile:
        converted = _cmyk_via_icc(image, profile)
        if converted is not None:
            return converted
    cmyk = np.asarray(image, dtype=np.float64)
    rgb = (255.0 - cmyk[..., :3]) * (255.0 - cmyk[..., 3:]) / 255.0
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _cmyk_via_icc(image: Image.Image, profile: bytes) -> Image.Image | None:
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        return ImageCms.profileToProfile(
            image, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except Exception:  # no littlecms, or a broken profile: fall back to the formula
        return None


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image).astype(np.float64)
    gray = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _check_background(background: RGB | int) -> RGB:
    if isinstance(background, (int, np.integer)) and not isinstance(background, bool):
        background = (background,) * 3
    try:
        values = tuple(background)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    valid = len(values) == 3 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and 0 <= v <= 255
        for v in values
    )
    if not valid:
        raise ValueError(
            f"background must be an (R, G, B) tuple of integers in 0..255 or one gray level, "
            f"got {background!r}"
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Numpy arrays


def _image_from_array(array: np.ndarray) -> Image.Image:
    """An L, RGB or RGBA image from an H×W[×C] array (see the module docstring for dtypes)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ImageLoadError(
            f"cannot load image from an array of shape {array.shape}: expected H×W, H×W×3 or "
            "H×W×4 (channels last; for a C×H×W array use array.transpose(1, 2, 0))"
        )
    if array.size == 0:
        raise ImageLoadError(f"cannot load image from an empty array of shape {array.shape}")
    # uint8 H×W, H×W×3 and H×W×4 become L, RGB and RGBA images.
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype == np.uint8:
        return array
    if dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if dtype == np.uint16:
        return np.rint(array / 257.0).astype(np.uint8)
    if np.issubdtype(dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageLoadError("cannot load image from a float array containing NaN or infinity")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageLoadError(
                f"cannot load image from a float array with values in [{low:g}, {high:g}]: float "
                "images must be in [0, 1] (divide 0..255 data by 255, or pass it as uint8)"
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise ImageLoadError(
        f"cannot load image from an array of dtype {dtype}: use uint8 (0..255), uint16 "
        "(0..65535), bool, or float in [0, 1]"
    )
