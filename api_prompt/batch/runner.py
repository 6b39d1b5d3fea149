"""Run a :class:`~api_prompt.Prompter` over a whole dataset: batched, overlapped, resumable.

>>> from api_prompt import Prompter                                             # doctest: +SKIP
>>> from api_prompt.batch import run                                            # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:tests/fixtures/clip_reference/model", layer=4)  # doctest: +SKIP
>>> summary = run("questions.jsonl", "out/", prompter, batch_size=32)           # doctest: +SKIP
>>> print(summary)                                                              # doctest: +SKIP
998 ok, 2 failed, 0 skipped in 41.3 s (24.2 samples/s) -> out

How the work overlaps: the main thread reads samples and runs the model one batch at a time; a
thread pool decodes the images of the next batches meanwhile (prefetch) and, once a batch has
its maps, applies the overlay, encodes and writes every image. Pillow, numpy and torch release
the GIL for the heavy parts, so the threads run in parallel with the model.

Determinism: batches are formed from consecutive samples of the run's share of the input,
before anything is skipped, so a resumed run feeds the model exactly the batches an
uninterrupted run would (a batch with some samples already done is recomputed whole and only
the missing outputs are written). PNG and JPEG encoding carry no timestamps, so resumed outputs
are byte-identical to an uninterrupted run's.

Sharding: sample ``i`` (0-based position in the input, counted before ``limit``) belongs to
shard ``i % num_shards``. Each shard writes its own folder; :func:`~api_prompt.batch.merge`
combines them.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from ..errors import APIPromptError, ConfigError
from ..prompter import query_overflow
from .sources import Sample, Source, TSVSource, open_source
from .store import Namer, OutputDir, jsonable, package_versions, write_atomic

__all__ = ["run", "Summary", "encode_image", "IMAGE_FORMATS"]

#: output format name -> (PIL format, file extension)
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg")}
#: zlib level for PNG outputs: 1 is several times faster than Pillow's default 6 for photos and
#: makes files only slightly larger; the output stays lossless and deterministic.
PNG_COMPRESS_LEVEL = 1
#: how many failed samples a Summary lists
MAX_LISTED_ERRORS = 20
#: version of the run.json / manifest layout
LAYOUT_VERSION = 1


@dataclass
class Summary:
    """What a batch run did.

    Attributes:
        out_dir: the output folder.
        total: samples in this run's share of the input (after ``limit`` and sharding), when
            the source can tell without a costly pass; else None.
        ok, error: samples finished in this run, successfully or not.
        skipped: samples already done by an earlier run.
        seconds: wall time of the processing loop.
        errors: ``(id, message)`` of the first failed samples.
        tsv: the VLMEvalKit TSV written, if any.
    """

    out_dir: Path
    total: int | None = None
    ok: int = 0
    error: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    tsv: Path | None = None

    @property
    def processed(self) -> int:
        """Samples finished in this run (ok or error)."""
        return self.ok + self.error

    @property
    def rate(self) -> float:
        """Samples finished per second."""
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> bool:
        """Whether any sample failed."""
        return self.error > 0

    def __str__(self) -> str:
        return (
            f"{self.ok} ok, {self.error} failed, {self.skipped} skipped (already done) in "
            f"{self.seconds:.1f} s ({self.rate:.1f} samples/s) -> {self.out_dir}"
        )


def run(
    source: Any,
    out_dir: str | os.PathLike,
    prompter: Any,
    *,
    batch_size: int = 16,
    workers: int | None = None,
    limit: int | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
    overwrite: bool = False,
    image_format: str = "png",
    jpeg_quality: int = 95,
    progress: bool = True,
    **source_options: Any,
) -> Summary:
    """Prompt every sample of ``source`` and write images, ``manifest.jsonl`` and ``run.json``.

    Args:
        source: a path (JSONL, CSV, VLMEvalKit TSV, parquet, saved HF dataset), a
            ``datasets.Dataset`` or a :class:`~api_prompt.batch.Source`.
        out_dir: output folder: new, empty, or one an earlier run with the same parameters
            wrote (then finished samples are skipped).
        prompter: a :class:`~api_prompt.Prompter` (its ``attributor`` runs in batches, its
            ``overlay`` in worker threads).
        batch_size: samples per model call.
        workers: threads for decoding, overlay and encoding (default: CPU count, at most 8).
        limit: only the first ``limit`` samples of the input.
        num_shards, shard_index: process only samples whose index ``% num_shards == shard_index``.
        overwrite: delete an earlier run's outputs in ``out_dir`` first (also when its
            parameters differ, which is otherwise refused).
        image_format: ``"png"`` (lossless) or ``"jpg"``; ``jpeg_quality`` 1-100 for JPEG.
        progress: show a progress bar on stderr.
        **source_options: for :func:`~api_prompt.batch.open_source` (``format``, ``id_column``,
            ``image_column``, ``question_column``, ``image_root``, ``split``).

    Returns:
        A :class:`Summary`; samples that failed are recorded in the manifest, not raised.

    Raises:
        ConfigError: bad options, an unreadable source, or ``out_dir`` holding something else.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard index must be in 0..{num_shards - 1} for {num_shards} shards, got {shard_index}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    if image_format.lower() not in IMAGE_FORMATS:
        raise ConfigError(f"unknown image format {image_format!r}; choose png or jpg")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    pil_format, extension = IMAGE_FORMATS[image_format.lower()]
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")

    source = open_source(source, **source_options)
    output = {"format": extension}
    if extension == "jpg":
        output["jpeg_quality"] = jpeg_quality
    parameters = {"source": source.describe(), "output": output, "prompter": prompter.describe()}
    out = OutputDir(out_dir)
    try:
        resumed = out.prepare(parameters, overwrite=overwrite)
        records = out.records() if resumed else {}
        done = {name for name, record in records.items() if out.is_done(record)}
        write_tsv = isinstance(source, TSVSource) and num_shards == 1
        run_info = {
            "layout": LAYOUT_VERSION,
            "parameters": parameters,
            "run": {
                "batch_size": batch_size, "workers": workers, "limit": limit,
                "num_shards": num_shards, "shard_index": shard_index,
                "source": source.location(), "argv": sys.argv,
            },
            "versions": package_versions(),
            "outputs": {"manifest": "manifest.jsonl", "images": "images",
                        "tsv": source.name if write_tsv else None},
        }
        out.write_run(run_info)

        share = _share_size(source, limit, num_shards, shard_index)
        already = sum(
            1 for name in done
            if _in_share(records[name].get("index"), limit, num_shards, shard_index)
        )
        job = _Job(source, out, prompter, batch_size=batch_size, workers=workers, limit=limit,
                   num_shards=num_shards, shard_index=shard_index, done=done,
                   pil_format=pil_format, extension=extension, jpeg_quality=jpeg_quality)
        summary = Summary(out_dir=out.root, total=share)
        with _progress_bar(progress, share, already) as bar:
            job.run(summary, bar)
        if write_tsv:
            summary.tsv = out.write_tsv(parameters["source"], source.name)
        run_info["summary"] = {"ok": summary.ok, "error": summary.error, "skipped": summary.skipped,
                               "seconds": round(summary.seconds, 3)}
        out.write_run(run_info)
        return summary
    finally:
        out.close()


# ------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One sample on its way through the pipeline."""

    sample: Sample
    name: str
    decoded: Future | None = None


class _Job:
    """The pipeline of one run (see the module docs)."""

    def __init__(self, source: Source, out: OutputDir, prompter: Any, *, batch_size: int, workers: int,
                 limit: int | None, num_shards: int, shard_index: int, done: set[str],
                 pil_format: str, extension: str, jpeg_quality: int) -> None:
        self.source, self.out, self.prompter = source, out, prompter
        self.batch_size, self.workers, self.limit = batch_size, workers, limit
        self.num_shards, self.shard_index, self.done = num_shards, shard_index, done
        self.pil_format, self.extension, self.jpeg_quality = pil_format, extension, jpeg_quality
        self.prefetch = 2                                   # batches decoded ahead of the model
        self.max_pending = 2 * batch_size + 2 * workers     # images waiting to be written

    # -- reading -------------------------------------------------------------------------------

    def items(self) -> Iterator[_Item]:
        """This run's share of the samples, named (names count every sample, all shards)."""
        namer = Namer()
        for sample in self.source:
            if self.limit is not None and sample.index >= self.limit:
                return
            name = namer(sample.id)
            if sample.index % self.num_shards == self.shard_index:
                yield _Item(sample, name)

    def batches(self, summary: Summary) -> Iterator[list[_Item]]:
        """Consecutive batches of the share; batches already done entirely are skipped."""
        items = self.items()
        while batch := list(islice(items, self.batch_size)):
            if all(item.name in self.done for item in batch):
                summary.skipped += len(batch)
                continue
            yield batch

    # -- stages --------------------------------------------------------------------------------

    def problem(self, sample: Sample) -> str | None:
        """Why a sample cannot be attributed at all, before decoding it."""
        if sample.error:
            return sample.error
        if sample.question is None or not str(sample.question).strip():
            return "the question is empty"
        return None

    def attribute(self, images: list, queries: list[str]) -> list:
        """Maps for a batch; when the batch fails, each sample alone (exceptions in its place)."""
        if not images:
            return []
        try:
            return list(self.prompter.attributor.attribute(images, queries))
        except Exception as exc:  # one bad sample must not sink the batch
            if _out_of_memory(exc):
                raise ConfigError(f"out of memory with a batch of {len(images)}: lower --batch-size ({exc})") from exc
            if len(images) == 1:
                return [exc]
        return [self.attribute([image], [query])[0] for image, query in zip(images, queries)]

    def query_note(self, query: str) -> dict[str, Any]:
        """``query_truncated`` for the manifest when the text encoder reads only part of it.

        (:meth:`Prompter.batch` warns about this instead; a dataset run records it per sample.)
        """
        overflow = query_overflow(self.prompter.attributor, query)
        return {"query_truncated": {"tokens": overflow[0], "context_length": overflow[1]}} if overflow else {}

    def finish(self, item: _Item, image: Image.Image, attention_map: Any,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Overlay, encode and write one image; its manifest record (runs in a worker).

        A sample the overlay or the encoder fails on is recorded as an error; a failed write
        (a full disk, say) stops the run.
        """
        try:
            prompted = self.prompter.overlay.apply(image, attention_map)
            data = encode_image(prompted, self.pil_format, self.jpeg_quality)
        except Exception as exc:  # one bad sample must not sink the run
            return _record(item, "error", error=_message(exc))
        path = self.out.image_path(item.name, self.extension)
        write_atomic(path, data)
        record = _record(item, "ok", file=path.relative_to(self.out.root).as_posix())
        record.update(map_stats(attention_map))
        record.update(extra or {})
        return record

    # -- the loop ------------------------------------------------------------------------------

    def run(self, summary: Summary, bar: Any) -> None:
        pending: deque[dict[str, Any] | Future] = deque()   # records in input order
        lookahead: deque[list[_Item]] = deque()
        started = time.perf_counter()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="api-prompt-batch")

        def flush(block: bool) -> None:
            """Write finished records from the head of ``pending`` (all of them when ``block``).

            A record leaves ``pending`` only once it is in hand, so when a write fails the
            records before it are still appended (here) and the failed one is not.
            """
            ready = []
            try:
                while pending and (block or not isinstance(pending[0], Future) or pending[0].done()
                                   or len(pending) > self.max_pending):
                    head = pending[0]
                    ready.append(head.result() if isinstance(head, Future) else head)
                    pending.popleft()
            finally:
                self.out.append(ready)
                for record in ready:
                    if record["status"] == "ok":
                        summary.ok += 1
                    else:
                        summary.error += 1
                        if len(summary.errors) < MAX_LISTED_ERRORS:
                            summary.errors.append((record["id"], record["error"]))
                bar.update(len(ready))

        def decode(item: _Item) -> _Item:
            if self.problem(item.sample) is None:
                item.decoded = pool.submit(self.source.load_image, item.sample)
            return item

        batches = self.batches(summary)
        try:
            while True:
                while len(lookahead) < self.prefetch and (batch := next(batches, None)) is not None:
                    lookahead.append([decode(item) for item in batch])
                if not lookahead:
                    break
                batch = lookahead.popleft()
                problems: dict[int, str] = {}
                valid: list[tuple[_Item, Image.Image]] = []
                for item in batch:
                    problem = self.problem(item.sample)
                    if problem is None:
                        try:
                            valid.append((item, item.decoded.result()))
                            continue
                        except (APIPromptError, OSError, ValueError, TypeError) as exc:
                            problem = _message(exc)
                    problems[id(item)] = problem
                maps = self.attribute([image for _, image in valid],
                                      [str(item.sample.question) for item, _ in valid])
                results = {id(item): (image, result) for (item, image), result in zip(valid, maps)}
                for item in batch:                      # records keep the input order
                    if item.name in self.done:
                        summary.skipped += 1
                    elif id(item) in problems:
                        pending.append(_record(item, "error", error=problems[id(item)]))
                    elif isinstance(results[id(item)][1], Exception):
                        pending.append(_record(item, "error", error=_message(results[id(item)][1])))
                    else:
                        extra = self.query_note(str(item.sample.question))
                        pending.append(pool.submit(self.finish, item, *results[id(item)], extra))
                flush(block=False)
            flush(block=True)
        finally:
            for batch in lookahead:
                for item in batch:
                    if item.decoded is not None:
                        item.decoded.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            # keep what finished before an interruption
            self.out.append([
                head if isinstance(head, dict) else head.result() for head in pending
                if isinstance(head, dict) or (head.done() and not head.cancelled() and head.exception() is None)
            ])
            pending.clear()
            summary.seconds = time.perf_counter() - started


# ------------------------------------------------------------------------------------------------


def encode_image(image: Image.Image, pil_format: str = "PNG", jpeg_quality: int = 95) -> bytes:
    """Encode deterministically (no timestamps or other metadata).

    >>> encode_image(Image.new("RGB", (2, 2)))[:4]
    b'\\x89PNG'
    """
    buffer = io.BytesIO()
    if pil_format == "PNG":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    return buffer.getvalue()


def map_stats(attention_map: Any) -> dict[str, Any]:
    """A few numbers that summarise a map, for the manifest.

    >>> from api_prompt import AttentionMap
    >>> mask = np.zeros((4, 4), np.float32); mask[1, 2] = 1
    >>> map_stats(AttentionMap(mask, {}, (8, 8), (0, 0, 8, 8)))
    {'grid': 4, 'mask_mean': 0.0625, 'mask_max': 1.0, 'argmax': [1, 2]}
    """
    mask = np.asarray(attention_map.mask, dtype=np.float32)
    row, col = np.unravel_index(int(np.argmax(mask)), mask.shape)
    stats = {
        "grid": int(mask.shape[-1]),
        "mask_mean": round(float(mask.mean()), 6),
        "mask_max": round(float(mask.max()), 6),
        "argmax": [int(row), int(col)],
    }
    if getattr(attention_map, "answer", None):
        stats["answer"] = attention_map.answer
    return stats


def _record(item: _Item, status: str, *, file: str | None = None, error: str | None = None) -> dict[str, Any]:
    sample = item.sample
    record = {"index": sample.index, "id": sample.id, "name": item.name, "status": status,
              "file": file, "error": error, "question": sample.question}
    if sample.extra:
        record["extra"] = jsonable(sample.extra)
    return record


def _message(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if not isinstance(exc, APIPromptError) or not text else text


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _in_share(index: Any, limit: int | None, num_shards: int, shard_index: int) -> bool:
    return (isinstance(index, int) and (limit is None or index < limit)
            and index % num_shards == shard_index)


def _share_size(source: Source, limit: int | None, num_shards: int, shard_index: int) -> int | None:
    count = source.count()
    if count is None:
        return None if limit is None else len(range(shard_index, limit, num_shards))
    return len(range(shard_index, count if limit is None else min(count, limit), num_shards))


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass


def _progress_bar(enabled: bool, total: int | None, initial: int):
    """A tqdm bar on stderr with rate and ETA (counting samples finished in this run)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="prompting", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
