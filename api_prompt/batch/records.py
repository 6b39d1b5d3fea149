"""What travels through a batch run: an :class:`Item` per sample, and what becomes of it.

A sample ends as one manifest record (a JSON object, one line of ``manifest.jsonl``): ``ok``
with its file(s) and map statistics, or ``error`` with the message and its kind. On the way,
an item that fails is an :class:`ItemFailure` and one that reached the model an
:class:`Attributed`; both turn into the manifest record at the end.

Error kinds: ``permanent`` for errors the same input always gives (an unreadable image, an
empty question; a rerun gives the same error until the input is fixed), ``transient`` for
anything else (e.g. the model ran out of memory; a rerun may succeed).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

from ..attention_map import AttentionMap
from ..runs import error_message, jsonable
from .sources import Sample

__all__ = [
    "Item",
    "ItemFailure",
    "Attributed",
    "DecodedImage",
    "ErrorKind",
    "ManifestRecord",
    "error_kind",
    "manifest_record",
]

ErrorKind = Literal["permanent", "transient"]
#: one line of ``manifest.jsonl``
ManifestRecord = dict[str, Any]
#: a decoded image with whether it was stored as a JPEG
DecodedImage = tuple[Image.Image, bool]


@dataclass
class Item:
    """One sample on its way through the pipeline: the sample, its file name stem, and (local
    engine) the decoding under way in a worker thread."""

    sample: Sample
    name: str
    decoded: Future[list[DecodedImage]] | None = None


@dataclass(frozen=True)
class ItemFailure:
    """An item that failed before its images were written: why, and whether a rerun can fix it.

    >>> failure = ItemFailure(Item(Sample(0, "q0", "a.png", "?"), "q0"), "the question is empty", "permanent")
    >>> {key: failure.record()[key] for key in ("id", "status", "error", "error_kind")}
    {'id': 'q0', 'status': 'error', 'error': 'the question is empty', 'error_kind': 'permanent'}
    """

    item: Item
    error: str
    kind: ErrorKind

    @classmethod
    def from_exception(cls, item: Item, exc: BaseException) -> ItemFailure:
        return cls(item, error_message(exc), error_kind(exc))

    def record(self) -> ManifestRecord:
        """Its manifest record."""
        return manifest_record(self.item, "error", error=self.error, kind=self.kind)


@dataclass(frozen=True)
class Attributed:
    """An item's decoded images and their maps, ready to be rendered, encoded and written;
    ``note``: what the manifest adds about the query (``query_truncated``)."""

    item: Item
    images: list[DecodedImage]
    maps: list[AttentionMap]
    note: dict[str, Any] = field(default_factory=dict)


def error_kind(exc: BaseException) -> ErrorKind:
    """``permanent`` for errors the same input always gives (bad data), else ``transient``.

    >>> error_kind(ValueError("not an image")), error_kind(RuntimeError("CUDA error"))
    ('permanent', 'transient')
    """
    return (
        "permanent"
        if isinstance(exc, (ValueError, TypeError, KeyError, IndexError))
        else "transient"
    )


def manifest_record(
    item: Item,
    status: str,
    *,
    file: str | None = None,
    error: str | None = None,
    kind: ErrorKind | None = None,
) -> ManifestRecord:
    """The manifest record of ``item``: its sample's index, id, name and question, ``status``,
    the (first) file written or the error, and the sample's other columns (``extra``)."""
    sample = item.sample
    record: ManifestRecord = {
        "index": sample.index,
        "id": sample.id,
        "name": item.name,
        "status": status,
        "file": file,
        "error": error,
        "question": sample.question,
    }
    if kind is not None:
        record["error_kind"] = kind
    if sample.extra:
        record["extra"] = jsonable(sample.extra)
    return record
