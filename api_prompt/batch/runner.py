"""Run a :class:`~api_prompt.Prompter` over a whole dataset: batched, overlapped, resumable.

>>> from api_prompt import Prompter                                             # doctest: +SKIP
>>> from api_prompt.batch import run                                            # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:tests/fixtures/clip_reference/model", layer=4)  # doctest: +SKIP
>>> summary = run("questions.jsonl", "out/", prompter, batch_size=32)           # doctest: +SKIP
>>> print(summary)                                                              # doctest: +SKIP
998 ok, 2 failed, 0 skipped in 41.3 s (24.2 samples/s) -> out

How the work overlaps (the local engine): the main thread reads samples and runs the model one
batch at a time; a thread pool decodes the images of the next batches meanwhile (prefetch) and,
once a batch has its maps, applies the overlay, encodes and writes every image while the model
works on the next batch. Pillow, numpy and torch release the GIL for the heavy parts, so the
threads run in parallel with the model. ``engine="ray"`` runs the same stages in Ray actors
(:mod:`.ray_engine`).

Determinism: batches are formed from consecutive samples of the run's share of the input,
before anything is skipped, so a resumed run feeds the model exactly the batches an
uninterrupted run would (a batch with some samples already done is recomputed whole and only
the missing outputs are written). PNG and JPEG encoding carry no timestamps, so resumed outputs
are byte-identical to an uninterrupted run's.

Nothing is lost silently: a failed sample is recorded in the manifest with ``error_kind``
``permanent`` (the input itself is bad: an unreadable image, an empty question; a rerun gives
the same error until the input is fixed) or ``transient`` (anything else, e.g. the model ran
out of memory; a rerun may succeed). The prompted table or dataset is written only when every
sample succeeded, unless ``allow_partial`` (then failed rows keep their original image and a
status column says which rows those are).

Sharding: sample ``i`` (0-based position in the input, counted before ``limit``) belongs to
shard ``i % num_shards``. Each shard writes its own folder; :func:`~api_prompt.batch.merge`
combines them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

from ..errors import APIPromptError, ConfigError
from ..images import DEFAULT_MAX_PIXELS
from .sources import Sample, Source, is_multi_image, open_source
from .store import Namer, OutputDir, jsonable, package_versions, part_names, write_atomic

__all__ = ["run", "Summary", "Interrupted", "LazyPrompter", "OutputSpec", "encode_image", "IMAGE_FORMATS"]

#: output format name -> (PIL format, file extension); "auto" is JPEG for JPEG inputs, else PNG
IMAGE_FORMATS = {"png": ("PNG", "png"), "jpg": ("JPEG", "jpg"), "jpeg": ("JPEG", "jpg"), "auto": (None, None)}
#: zlib level for PNG outputs: 1 is several times faster than Pillow's default 6 for photos and
#: makes files only slightly larger; the output stays lossless and deterministic.
PNG_COMPRESS_LEVEL = 1
#: how many failed samples a Summary lists
MAX_LISTED_ERRORS = 20
#: version of the run.json / manifest layout
LAYOUT_VERSION = 2
ENGINES = ("local", "ray")


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
            return IMAGE_FORMATS["jpg" if is_jpeg else "png"]
        return IMAGE_FORMATS[self.format]

    def describe(self) -> dict[str, Any]:
        """For run.json: the format rule and the JPEG quality (whenever JPEG can be written)."""
        info: dict[str, Any] = {"format": self.format}
        if self.format != "png":
            info["jpeg_quality"] = self.jpeg_quality
        if self.format != "jpg":
            info["png_compress_level"] = PNG_COMPRESS_LEVEL
        return info


@dataclass
class LazyPrompter:
    """A Prompter that is loaded only when there is work left.

    ``build()`` loads it; ``request`` describes it cheaply (the options it is built from). When
    ``run`` finds every sample already done by a run with the same ``request`` and parameters,
    the model is never loaded.
    """

    build: Callable[[], Any]
    request: dict[str, Any]


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; what finished is kept (``done`` of ``total``; rerun to resume)."""

    def __init__(self, done: int, total: int | None, out_dir: Path) -> None:
        super().__init__(f"{done} of {total if total is not None else '?'} done")
        self.done, self.total, self.out_dir = done, total, out_dir


@dataclass
class Summary:
    """What a batch run did.

    Attributes:
        out_dir: the output folder.
        total: samples in this run's share of the input (after ``limit`` and sharding), when
            the source can tell without a costly pass; else None.
        ok, error: samples finished in this run, successfully or not.
        permanent, transient: the failed samples by kind (see the module docs).
        skipped: samples already done by an earlier run.
        seconds: wall time of the processing loop.
        errors: ``(id, message)`` of the first failed samples.
        failed_total: samples of the share whose latest record is an error (also earlier runs').
        tsv: the VLMEvalKit TSV written, if any.
        dataset: the prompted ``datasets`` folder or parquet folder written, if any.
        partial: the TSV / dataset keeps failed rows with their original image.
        not_exported: why no TSV / dataset was written although the input calls for one.
        model_loaded: False when nothing was left to do and the model was never loaded.
    """

    out_dir: Path
    total: int | None = None
    ok: int = 0
    error: int = 0
    permanent: int = 0
    transient: int = 0
    skipped: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)
    failed_total: int = 0
    tsv: Path | None = None
    dataset: Path | None = None
    partial: bool = False
    not_exported: str | None = None
    model_loaded: bool = True

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
        """Whether any sample of the share is not done (failed now or in an earlier run)."""
        return self.error > 0 or self.failed_total > 0

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
    image_format: str = "auto",
    jpeg_quality: int = 95,
    allow_partial: bool = False,
    tsv_name: str | None = None,
    output_format: str = "dataset",
    keep_original: bool = False,
    engine: str = "local",
    address: str | None = None,
    num_gpus: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    **source_options: Any,
) -> Summary:
    """Prompt every sample of ``source`` and write images, ``manifest.jsonl`` and ``run.json``,
    then the prompted table (TSV input) or dataset (parquet / ``datasets`` input).

    Args:
        source: a path (JSONL, CSV, VLMEvalKit TSV, parquet, saved HF dataset), a
            ``datasets.Dataset`` or a :class:`~api_prompt.batch.Source`.
        out_dir: output folder: new, empty, or one an earlier run with the same parameters
            wrote (then finished samples are skipped).
        prompter: a :class:`~api_prompt.Prompter` (its stages ``attribute`` in batches,
            ``render`` in worker threads, ``query_overflow`` and ``describe``), or a
            :class:`LazyPrompter` (loaded only when some sample is left to do; with
            ``engine="ray"`` only by the actors, never in this process).
        batch_size: samples per model call.
        workers: threads for decoding, overlay, encoding and writing (default:
            :func:`default_workers`, twice the usable cores, at most 32).
        limit: only the first ``limit`` samples of the input.
        num_shards, shard_index: process only samples whose index ``% num_shards == shard_index``.
        overwrite: delete an earlier run's outputs in ``out_dir`` first (also when its
            parameters differ, which is otherwise refused).
        image_format: ``"auto"`` (JPEG for JPEG inputs, else PNG), ``"png"`` or ``"jpg"``;
            ``jpeg_quality`` 1-100 for JPEG (recorded in run.json).
        allow_partial: write the TSV / dataset even when some samples failed (their rows keep
            the original image; a status column marks them).
        tsv_name: file name of the prompted VLMEvalKit TSV (default ``<stem>_API.tsv``).
        output_format: for parquet / ``datasets`` input: ``"dataset"`` (a ``DatasetDict``
            saved with ``save_to_disk`` in ``DIR/dataset``) or ``"parquet"`` (``DIR/data/``).
        keep_original: keep the original image in a ``<image column>_original`` column.
        engine: ``"local"`` (threads in this process) or ``"ray"`` (Ray Data actors).
        address: Ray cluster address (``engine="ray"``); default: start a local one.
        num_gpus: GPUs per Ray actor (default: 1 when the cluster has GPUs, else 0).
        progress: show progress on stderr (a bar on a terminal, a line now and then otherwise).
        log: called with one-line messages (resume, nothing left to do); default: none.
        max_pixels: images with more pixels fail (recorded, not raised) before they are decoded;
            :func:`~api_prompt.load_image`'s guard, with its default.
        **source_options: for :func:`~api_prompt.batch.open_source` (``format``, ``id_column``,
            ``image_column``, ``question_column``, ``image_root``, ``split``).

    Returns:
        A :class:`Summary`; samples that failed are recorded in the manifest, not raised.

    Raises:
        ConfigError: bad options, an unreadable source, or ``out_dir`` holding something else.
        Interrupted: Ctrl-C; what finished is kept, the same call resumes.
    """
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"shard index must be in 0..{num_shards - 1} for {num_shards} shards, got {shard_index}")
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 or more, got {limit}")
    if image_format.lower() not in IMAGE_FORMATS:
        raise ConfigError(f"unknown image format {image_format!r}; choose auto, png or jpg")
    if not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {jpeg_quality}")
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
    from .export import check_export_options

    check_export_options(tsv_name=tsv_name, output_format=output_format)
    workers = workers if workers is not None else default_workers()
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    say = log or (lambda message: None)

    source = open_source(source, **source_options)
    if max_pixels != source.max_pixels:  # a copy: a Source the caller passed is left as it was
        source = copy.copy(source)
        source.max_pixels = max_pixels
    fmt = image_format.lower()
    output = OutputSpec("jpg" if fmt == "jpeg" else fmt, jpeg_quality)
    out = OutputDir(out_dir)
    pipeline = None
    try:
        out.check_usable()
        out.root.mkdir(parents=True, exist_ok=True)
        out.lock()
        stored = None if overwrite else out.read_run()
        records = out.records() if stored is not None else {}
        done = {name for name, record in records.items() if out.is_done(record)}
        job = _Job(source, out, None, batch_size=batch_size, workers=workers, limit=limit,
                   num_shards=num_shards, shard_index=shard_index, done=done, output=output)
        share = _share_size(source, limit, num_shards, shard_index)
        summary = Summary(out_dir=out.root, total=share)
        already = sum(1 for name in done if _in_share(records[name].get("index"), limit, num_shards, shard_index))
        base_parameters = {"source": source.describe(), "output": output.describe()}
        same_data = stored is not None and all(
            jsonable(base_parameters)[key] == (stored.get("parameters") or {}).get(key) for key in base_parameters)
        if same_data:
            say(f"resuming {out.root}: {already} of {share if share is not None else '?'} samples already done")
        loaded = not isinstance(prompter, LazyPrompter)
        request = None if loaded else jsonable(prompter.request)
        if (not loaded and same_data and request == (stored.get("run") or {}).get("request")
                and job.all_done()):
            say(f"nothing left to do: all {already} samples are done (the model was not loaded)")
            parameters = {**base_parameters, "prompter": stored["parameters"]["prompter"]}
        else:
            if engine == "ray":
                from .ray_engine import start_ray

                pipeline = start_ray(job, summary, prompter, address=address, num_gpus=num_gpus)
            if pipeline is not None and not loaded:
                description = pipeline.description()   # an actor's model: this process loads none
            else:
                if not loaded:
                    prompter = prompter.build()
                description = prompter.describe()
                job.prompter = prompter
            loaded = True
            parameters = {**base_parameters, "prompter": description}

        resumed = out.prepare(parameters, overwrite=overwrite)
        if not resumed:
            already, job.done = 0, set()
        from .export import planned_outputs

        exports = planned_outputs(source, num_shards=num_shards, tsv_name=tsv_name, output_format=output_format)
        if stored is not None:   # an export under another name (say a new --tsv-name) would be stale
            stale = {key: name for key, name in (stored.get("outputs") or {}).items()
                     if key in ("tsv", "dataset", "parquet") and exports.get(key) != name}
            out.remove_exports({"outputs": stale})
        run_info = {
            "layout": LAYOUT_VERSION,
            "parameters": parameters,
            "run": {
                "batch_size": batch_size, "workers": workers, "limit": limit,
                "num_shards": num_shards, "shard_index": shard_index, "engine": engine,
                "source": source.location(), "argv": sys.argv, "request": request,
                "allow_partial": allow_partial,
                "export_options": {"tsv_name": tsv_name, "output_format": output_format,
                                   "keep_original": keep_original},
            },
            "versions": package_versions(),
            "outputs": {"manifest": "manifest.jsonl", "images": "images", **exports},
        }
        out.write_run(run_info)

        summary.model_loaded = loaded
        try:
            if loaded:
                if engine == "ray":
                    if pipeline is not None:
                        with _progress_bar(progress, share, already) as bar:
                            pipeline.collect(job, summary, bar, jsonable(parameters["prompter"]))
                else:
                    with _progress_bar(progress, share, already) as bar:
                        job.run(summary, bar)
            else:
                summary.skipped = already
        except KeyboardInterrupt:
            # counted from the manifest: a signal can land between a write and its tally
            finished = sum(1 for record in out.records().values()
                           if out.is_done(record) and _in_share(record.get("index"), limit, num_shards, shard_index))
            raise Interrupted(finished, share, out.root) from None

        from .export import export

        export(out, source, run_info, summary, allow_partial=allow_partial, keep_original=keep_original)
        run_info["summary"] = {"ok": summary.ok, "error": summary.error, "skipped": summary.skipped,
                               "failed_total": summary.failed_total, "partial": summary.partial,
                               "seconds": round(summary.seconds, 3)}
        out.write_run(run_info)
        return summary
    finally:
        if pipeline is not None:
            pipeline.close()
        out.close()


# ------------------------------------------------------------------------------------------------


@dataclass
class _Item:
    """One sample on its way through the pipeline."""

    sample: Sample
    name: str
    decoded: Future | None = None


class Stages:
    """The work on one batch, shared by the local and the Ray engine: decode, attribute, render,
    encode, write (no threads of its own)."""

    def __init__(self, source: Source, out: OutputDir, prompter: Any, output: OutputSpec) -> None:
        self.source, self.out, self.prompter, self.output = source, out, prompter, output
        self.model_lock: Any = contextlib.nullcontext()   # a Lock where several threads share the model

    def problem(self, sample: Sample) -> str | None:
        """Why a sample cannot be attributed at all, before decoding it."""
        if sample.error:
            return sample.error
        if sample.question is None or not str(sample.question).strip():
            return "the question is empty"
        return None

    def decode(self, item: _Item) -> list[tuple[Image.Image, bool]]:
        """The item's images with whether each was a JPEG (raises for a bad image)."""
        return self.source.load_images(item.sample)

    def attribute(self, images: list, queries: list[str]) -> list:
        """Maps for a batch; when the batch fails, each image alone (exceptions in its place)."""
        if not images:
            return []
        try:
            with self.model_lock:   # no truncation warning: query_note records it per sample
                return list(self.prompter.attribute(images, queries, warn=False))
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
        overflow = self.prompter.query_overflow(query)
        return {"query_truncated": {"tokens": overflow[0], "context_length": overflow[1]}} if overflow else {}

    def finish(self, item: _Item, decoded: list[tuple[Image.Image, bool]], maps: list,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Overlay, encode and write the item's image(s); its manifest record (runs in a worker).

        A sample the overlay or the encoder fails on is recorded as an error; a failed write
        (a full disk, say) stops the run.
        """
        try:
            encoded = []
            for (image, was_jpeg), attention_map in zip(decoded, maps):
                pil_format, extension = self.output.choose(was_jpeg)
                prompted = self.prompter.render(image, attention_map)
                encoded.append((encode_image(prompted, pil_format, self.output.jpeg_quality), extension))
        except Exception as exc:  # one bad sample must not sink the run
            return _record(item, "error", error=_message(exc), kind=_error_kind(exc))
        multi = is_multi_image(item.sample)
        stems = part_names(item.name, len(decoded)) if multi else [item.name]
        files = []
        for stem, (data, extension) in zip(stems, encoded):
            path = self.out.image_path(stem, extension)
            write_atomic(path, data)
            files.append(path.relative_to(self.out.root).as_posix())
        record = _record(item, "ok", file=files[0])
        if multi:
            record["files"] = files
            record["maps"] = [map_stats(attention_map) for attention_map in maps]
        else:
            record.update(map_stats(maps[0]))
        record.update(extra or {})
        return record

    def load(self, item: _Item, decode: Callable[[_Item], list] | None = None) -> list | dict[str, Any]:
        """The item's decoded images, or its error record: a problem found before decoding
        (:meth:`problem`) or a failed decode. ``decode`` gets the images (default :meth:`decode`)."""
        problem = self.problem(item.sample)
        if problem is not None:
            return _record(item, "error", error=problem, kind="permanent")
        try:
            return (decode or self.decode)(item)
        except Exception as exc:
            return _record(item, "error", error=_message(exc), kind=_error_kind(exc))

    def attribute_items(self, items: list[_Item], loaded: list[Any]) -> list[tuple | dict[str, Any]]:
        """One model call for a batch: per item, in order, ``(images, maps)`` ready for
        :meth:`finish`, or its error record (from :meth:`load`, or a map that failed).

        ``loaded`` is what :meth:`load` gave for each item."""
        valid = [(item, images) for item, images in zip(items, loaded) if not isinstance(images, dict)]
        maps = self.attribute([image for _, images in valid for image, _ in images],
                              [str(item.sample.question) for item, images in valid for _ in images])
        results: list[tuple | dict[str, Any]] = []
        position = 0
        for item, images in zip(items, loaded):
            if isinstance(images, dict):
                results.append(images)
                continue
            item_maps = maps[position:position + len(images)]
            position += len(images)
            failure = next((m for m in item_maps if isinstance(m, Exception)), None)
            if failure is not None:
                results.append(_record(item, "error", error=_message(failure), kind=_error_kind(failure)))
            else:
                results.append((images, item_maps))
        return results

    def process(self, items: list[_Item], pool: ThreadPoolExecutor | None = None,
                done: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """Every stage for one batch, start to end; the records of its samples not in ``done``, in
        input order (the Ray engine's unit of work). The whole batch goes through the model, so
        the maps are those of an uninterrupted run. ``pool`` parallelises decoding and encoding."""
        mapper = pool.map if pool is not None else map
        results = self.attribute_items(items, list(mapper(self.load, items)))

        def finish(entry: tuple[_Item, tuple]) -> dict[str, Any]:
            item, (images, item_maps) = entry
            return self.finish(item, images, item_maps, self.query_note(str(item.sample.question)))

        todo = [(item, result) for item, result in zip(items, results)
                if item.name not in done and not isinstance(result, dict)]
        finished = dict(zip([id(item) for item, _ in todo], mapper(finish, todo)))
        return [finished.get(id(item), result) for item, result in zip(items, results)
                if item.name not in done]


class _Job(Stages):
    """The local engine's pipeline of one run (see the module docs)."""

    def __init__(self, source: Source, out: OutputDir, prompter: Any, *, batch_size: int, workers: int,
                 limit: int | None, num_shards: int, shard_index: int, done: set[str],
                 output: OutputSpec) -> None:
        super().__init__(source, out, prompter, output)
        self.batch_size, self.workers, self.limit = batch_size, workers, limit
        self.num_shards, self.shard_index, self.done = num_shards, shard_index, done
        self.prefetch = 2                                   # batches decoded ahead of the model
        self.max_pending = 2 * batch_size + 2 * workers     # samples waiting to be written

    # -- reading -------------------------------------------------------------------------------

    def items(self) -> Iterator[_Item]:
        """This run's share of the samples, named."""
        for sample, name in named_samples(self.source, self.limit):
            if sample.index % self.num_shards == self.shard_index:
                yield _Item(sample, name)

    def all_done(self) -> bool:
        """Whether every sample of the share is done already (one pass over the source)."""
        return all(item.name in self.done for item in self.items())

    def batches(self, summary: Summary) -> Iterator[list[_Item]]:
        """Consecutive batches of the share; batches already done entirely are skipped."""
        items = self.items()
        while batch := list(islice(items, self.batch_size)):
            if all(item.name in self.done for item in batch):
                summary.skipped += len(batch)
                continue
            yield batch

    # -- the loop ------------------------------------------------------------------------------

    def count(self, summary: Summary, records: list[dict[str, Any]]) -> None:
        """Add finished records to the summary."""
        for record in records:
            if record["status"] == "ok":
                summary.ok += 1
            else:
                summary.error += 1
                if record.get("error_kind") == "permanent":
                    summary.permanent += 1
                else:
                    summary.transient += 1
                if len(summary.errors) < MAX_LISTED_ERRORS:
                    summary.errors.append((record["id"], record["error"]))

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
                self.count(summary, ready)
                bar.update(len(ready))

        def decode(item: _Item) -> _Item:
            if self.problem(item.sample) is None:
                item.decoded = pool.submit(self.decode, item)
            return item

        batches = self.batches(summary)
        try:
            while True:
                while len(lookahead) < self.prefetch and (batch := next(batches, None)) is not None:
                    lookahead.append([decode(item) for item in batch])
                if not lookahead:
                    break
                batch = lookahead.popleft()
                loaded = [self.load(item, lambda item: item.decoded.result()) for item in batch]
                for item, result in zip(batch, self.attribute_items(batch, loaded)):   # in input order
                    if item.name in self.done:
                        summary.skipped += 1
                    elif isinstance(result, dict):
                        pending.append(result)
                    else:
                        images, item_maps = result
                        extra = self.query_note(str(item.sample.question))
                        pending.append(pool.submit(self.finish, item, images, item_maps, extra))
                flush(block=False)
            flush(block=True)
        finally:
            for batch in lookahead:
                for item in batch:
                    if item.decoded is not None:
                        item.decoded.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            # keep what finished before an interruption
            kept = [
                head if isinstance(head, dict) else head.result() for head in pending
                if isinstance(head, dict) or (head.done() and not head.cancelled() and head.exception() is None)
            ]
            self.out.append(kept)
            self.count(summary, kept)
            bar.update(len(kept))
            pending.clear()
            summary.seconds = time.perf_counter() - started


# ------------------------------------------------------------------------------------------------


def default_workers() -> int:
    """Threads for decoding, overlay, encoding and writing: twice the cores this process may use
    (its CPU affinity), at most 32.

    Twice, because every image's write waits on fsync, which takes no CPU: with one thread per
    core that wait idled the core (on one core the pipeline reached 0.81 of the bare
    decode/overlay/encode loop with one thread, 1.16 with two; ``bench_batch.py --ceiling``).

    >>> import os
    >>> default_workers() == min(32, 2 * len(os.sched_getaffinity(0)))
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        cores = os.cpu_count() or 1
    return max(1, min(32, 2 * cores))


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


def named_samples(source: Source, limit: int | None) -> Iterator[tuple[Sample, str]]:
    """Every sample up to ``limit`` with its file name stem (names count every sample, all shards)."""
    namer = Namer()
    for sample in source:
        if limit is not None and sample.index >= limit:
            return
        yield sample, namer(sample.id, len(sample.image) if is_multi_image(sample) else 0)


def _record(item: _Item, status: str, *, file: str | None = None, error: str | None = None,
            kind: str | None = None) -> dict[str, Any]:
    sample = item.sample
    record = {"index": sample.index, "id": sample.id, "name": item.name, "status": status,
              "file": file, "error": error, "question": sample.question}
    if kind is not None:
        record["error_kind"] = kind
    if sample.extra:
        record["extra"] = jsonable(sample.extra)
    return record


def _error_kind(exc: BaseException) -> str:
    """``permanent`` for errors the same input always gives (bad data), else ``transient``.

    >>> _error_kind(ValueError("not an image")), _error_kind(RuntimeError("CUDA error"))
    ('permanent', 'transient')
    """
    return "permanent" if isinstance(exc, (ValueError, TypeError, KeyError, IndexError)) else "transient"


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


# ------------------------------------------------------------------------------------------------
# Progress


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        pass


class LineProgress:
    """Progress for logs: one plain line every ``interval`` seconds (and at the end), no ``\\r``.

    >>> import io
    >>> stream = io.StringIO()
    >>> with LineProgress(4, 0, stream=stream, interval=0) as bar:
    ...     bar.update(2)
    >>> stream.getvalue().splitlines()[0].startswith("prompting: 2/4 (50%)")
    True
    """

    def __init__(self, total: int | None, initial: int, *, stream: Any = None, interval: float = 30.0) -> None:
        self.total, self.done, self.start_done = total, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval = interval
        self.started = self.last = time.monotonic()
        self.printed_at = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if n and now - self.last >= self.interval:
            self.last = now
            self.write(now)

    def write(self, now: float) -> None:
        if self.printed_at == self.done:
            return
        self.printed_at = self.done
        elapsed = max(now - self.started, 1e-9)
        rate = (self.done - self.start_done) / elapsed
        text = f"prompting: {self.done}/{self.total if self.total is not None else '?'}"
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        text += f", {rate:.2f} img/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", about {_duration((self.total - self.done) / rate)} left"
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.done > self.start_done:
            self.write(time.monotonic())


def _duration(seconds: float) -> str:
    """
    >>> _duration(42), _duration(3725)
    ('42s', '1h02m')
    """
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _progress_bar(enabled: bool, total: int | None, initial: int):
    """A tqdm bar on a terminal; plain lines every 30 s when stderr is redirected to a log."""
    if not enabled:
        return _NoBar()
    if not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return LineProgress(total, initial)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="prompting", file=sys.stderr,
                dynamic_ncols=True, smoothing=0.1)
