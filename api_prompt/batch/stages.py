"""The work on one batch, shared by the local and the Ray engine: decode, attribute, render,
encode, write. No threads of its own: the engines decide what runs where.

Nothing is lost silently: a sample that fails at any stage becomes an
:class:`~api_prompt.batch.records.ItemFailure` (and then an ``error`` manifest record) while the
rest of its batch goes on; only a failed write (a full disk, say) or a model out of memory
stops the run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..attention_map import AttentionMap
from ..errors import ConfigError
from ..runs import write_atomic
from .encoding import OutputSpec, encode_image, map_stats
from .job import BatchPrompter
from .records import Attributed, DecodedImage, Item, ItemFailure, ManifestRecord, manifest_record
from .sources import Sample, Source, is_multi_image
from .store import OutputDir, part_names

__all__ = ["Stages"]

Loaded = list[DecodedImage] | ItemFailure
Encoded = tuple[bytes, str]  # an encoded image and its file extension


class Stages:
    """The stages of one run's batches (see the module docs).

    ``prompter`` may be None until the model is loaded (the local engine reads and plans first).
    """

    def __init__(
        self, source: Source, out: OutputDir, prompter: BatchPrompter | None, output: OutputSpec
    ) -> None:
        self.source, self.out, self.prompter, self.output = source, out, prompter, output
        # a Lock where several threads share the model (the Ray actors)
        self.model_lock: contextlib.AbstractContextManager[object] = contextlib.nullcontext()

    @property
    def model(self) -> BatchPrompter:
        if self.prompter is None:
            raise RuntimeError("the batch stages have no prompter yet")
        return self.prompter

    def problem(self, sample: Sample) -> str | None:
        """Why a sample cannot be attributed at all, before decoding it."""
        if sample.error:
            return sample.error
        if sample.question is None or not str(sample.question).strip():
            return "the question is empty"
        return None

    def decode(self, item: Item) -> list[DecodedImage]:
        """The item's images with whether each was a JPEG (raises for a bad image)."""
        return self.source.load_images(item.sample)

    def load(
        self, item: Item, decode: Callable[[Item], list[DecodedImage]] | None = None
    ) -> Loaded:
        """The item's decoded images, or its failure: a problem found before decoding
        (:meth:`problem`) or a failed decode. ``decode`` gets the images (default :meth:`decode`)."""
        problem = self.problem(item.sample)
        if problem is not None:
            return ItemFailure(item, problem, "permanent")
        try:
            return (decode or self.decode)(item)
        except Exception as exc:
            return ItemFailure.from_exception(item, exc)

    def attribute(
        self, images: Sequence[Image.Image], queries: Sequence[str]
    ) -> list[AttentionMap | Exception]:
        """Maps for a batch; when the batch fails, each image alone (exceptions in its place)."""
        if not images:
            return []
        try:
            with self.model_lock:  # no truncation warning: query_note records it per sample
                return list(self.model.attribute(images, queries, warn=False))
        except Exception as exc:  # one bad sample must not sink the batch
            if _out_of_memory(exc):
                raise ConfigError(
                    f"out of memory with a batch of {len(images)}: lower --batch-size ({exc})"
                ) from exc
            if len(images) == 1:
                return [exc]
        return [self.attribute([image], [query])[0] for image, query in zip(images, queries)]

    def attribute_items(
        self, items: list[Item], loaded: list[Loaded]
    ) -> list[Attributed | ItemFailure]:
        """One model call for a batch: per item, in order, what :meth:`finish` takes, or its
        failure (from :meth:`load`, or a map that failed). ``loaded``: :meth:`load` per item.
        Runs where the model runs (the query's tokenizer is not shared with worker threads)."""
        valid = [
            (item, images)
            for item, images in zip(items, loaded)
            if not isinstance(images, ItemFailure)
        ]
        maps = self.attribute(
            [image for _, images in valid for image, _ in images],
            [str(item.sample.question) for item, images in valid for _ in images],
        )
        results: list[Attributed | ItemFailure] = []
        position = 0
        for item, images in zip(items, loaded):
            if isinstance(images, ItemFailure):
                results.append(images)
                continue
            item_maps = maps[position : position + len(images)]
            position += len(images)
            failure = next((m for m in item_maps if isinstance(m, Exception)), None)
            if failure is not None:
                results.append(ItemFailure.from_exception(item, failure))
            else:
                results.append(
                    Attributed(
                        item,
                        images,
                        [m for m in item_maps if isinstance(m, AttentionMap)],
                        self.query_note(str(item.sample.question)),
                    )
                )
        return results

    def query_note(self, query: str) -> dict[str, Any]:
        """``query_truncated`` for the manifest when the text encoder reads only part of it.

        (:meth:`Prompter.batch` warns about this instead; a dataset run records it per sample.)
        """
        overflow = self.model.query_overflow(query)
        return (
            {"query_truncated": {"tokens": overflow[0], "context_length": overflow[1]}}
            if overflow
            else {}
        )

    def finish(self, attributed: Attributed) -> ManifestRecord:
        """Overlay, encode and write the item's image(s); its manifest record (runs in a worker):
        :meth:`store` after :meth:`encode`."""
        encoded = self.encode(attributed)
        return encoded if isinstance(encoded, dict) else self.store(attributed, encoded)

    def encode(self, attributed: Attributed) -> list[Encoded] | ManifestRecord:
        """The item's prompted image(s), encoded: the CPU work of :meth:`finish`. A sample the
        overlay or the encoder fails on gets its error record instead."""
        try:
            encoded = []
            for (image, was_jpeg), attention_map in zip(attributed.images, attributed.maps):
                pil_format, extension = self.output.choose(was_jpeg)
                prompted = self.model.render(image, attention_map)
                encoded.append(
                    (encode_image(prompted, pil_format, self.output.jpeg_quality), extension)
                )
        except Exception as exc:  # one bad sample must not sink the run
            return ItemFailure.from_exception(attributed.item, exc).record()
        return encoded

    def store(self, attributed: Attributed, encoded: list[Encoded]) -> ManifestRecord:
        """Write what :meth:`encode` made (each file made durable before this returns) and
        return the manifest record: the waiting part of :meth:`finish`. A failed write (a full
        disk, say) raises, which stops the run."""
        item, maps = attributed.item, attributed.maps
        multi = is_multi_image(item.sample)
        stems = part_names(item.name, len(attributed.images)) if multi else [item.name]
        files = []
        for stem, (data, extension) in zip(stems, encoded):
            path = self.out.image_path(stem, extension)
            write_atomic(path, data)
            files.append(path.relative_to(self.out.root).as_posix())
        record = manifest_record(item, "ok", file=files[0])
        if multi:
            record["files"] = files
            record["maps"] = [map_stats(attention_map) for attention_map in maps]
        else:
            record.update(map_stats(maps[0]))
        record.update(attributed.note)
        return record

    def process(
        self,
        items: list[Item],
        pool: ThreadPoolExecutor | None = None,
        done: frozenset[str] = frozenset(),
    ) -> list[ManifestRecord]:
        """Every stage for one batch, start to end; the records of its samples not in ``done``, in
        input order (the Ray engine's unit of work). The whole batch goes through the model, so
        the maps are those of an uninterrupted run. ``pool`` parallelises decoding and encoding."""
        results = self.attribute_items(
            items, list(pool.map(self.load, items) if pool else map(self.load, items))
        )
        todo = [
            result
            for result in results
            if isinstance(result, Attributed) and result.item.name not in done
        ]
        finished = list(pool.map(self.finish, todo) if pool else map(self.finish, todo))
        by_item = {id(attributed.item): record for attributed, record in zip(todo, finished)}
        return [
            by_item[id(item)] if isinstance(result, Attributed) else result.record()
            for item, result in zip(items, results)
            if item.name not in done
        ]


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()
