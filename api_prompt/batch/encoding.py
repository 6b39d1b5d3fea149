"""How a batch run encodes its prompted images, and the numbers the manifest keeps per map.

PNG and JPEG encoding carry no timestamps or other metadata, so the same image always gives the
same bytes (what makes a resumed run's outputs byte-identical to an uninterrupted run's).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ..attention_map import AttentionMap

__all__ = ["IMAGE_FORMATS", "PNG_COMPRESS_LEVEL", "OutputSpec", "encode_image", "map_stats"]

#: output format name -> (PIL format, file extension); "auto" is JPEG for JPEG inputs, else PNG
IMAGE_FORMATS = {
    "png": ("PNG", "png"),
    "jpg": ("JPEG", "jpg"),
    "jpeg": ("JPEG", "jpg"),
    "auto": (None, None),
}
#: zlib level for PNG outputs: 1 is several times faster than Pillow's default 6 for photos and
#: makes files only slightly larger; the output stays lossless and deterministic.
PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class OutputSpec:
    """How prompted images are encoded.

    ``format`` is ``"auto"`` (JPEG at ``jpeg_quality`` where the input image was a JPEG, PNG
    otherwise), ``"png"`` (lossless) or ``"jpg"``.

    >>> OutputSpec("auto").choose(is_jpeg=True), OutputSpec("auto").choose(is_jpeg=False)
    (('JPEG', 'jpg'), ('PNG', 'png'))
    """

    format: str = "auto"
    jpeg_quality: int = 95

    def choose(self, is_jpeg: bool) -> tuple[str, str]:
        """``(PIL format, extension)`` for an input image that was (not) a JPEG."""
        if self.format == "auto":
            return IMAGE_FORMATS["jpg" if is_jpeg else "png"]  # type: ignore[return-value]
        return IMAGE_FORMATS[self.format]  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        """For run.json: the format rule and the JPEG quality (whenever JPEG can be written)."""
        info: dict[str, Any] = {"format": self.format}
        if self.format != "png":
            info["jpeg_quality"] = self.jpeg_quality
        if self.format != "jpg":
            info["png_compress_level"] = PNG_COMPRESS_LEVEL
        return info


def encode_image(image: Image.Image, pil_format: str = "PNG", jpeg_quality: int = 95) -> bytes:
    """Encode deterministically (no timestamps or other metadata).

    >>> encode_image(Image.new("RGB", (2, 2)))[:4]
    b'\\x89PNG'
    >>> encode_image(Image.new("RGB", (2, 2)), "JPEG")[:3]
    b'\\xff\\xd8\\xff'
    """
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def map_stats(attention_map: AttentionMap) -> dict[str, Any]:
    """A few numbers that summarise a map, for the manifest.

    >>> mask = np.zeros((4, 4), np.float32); mask[1, 2] = 1
    >>> map_stats(AttentionMap(mask, {}, (8, 8), (0, 0, 8, 8)))
    {'grid': 4, 'mask_mean': 0.0625, 'mask_max': 1.0, 'argmax': [1, 2]}
    """
    mask = np.asarray(attention_map.mask, dtype=np.float32)
    row, col = np.unravel_index(int(np.argmax(mask)), mask.shape)
    stats: dict[str, Any] = {
        "grid": int(mask.shape[-1]),
        "mask_mean": round(float(mask.mean()), 6),
        "mask_max": round(float(mask.max()), 6),
        "argmax": [int(row), int(col)],
    }
    if getattr(attention_map, "answer", None):
        stats["answer"] = attention_map.answer
    return stats
