"""Run a :class:`~api_prompt.Prompter` over a whole dataset: batched, overlapped, resumable.

>>> from api_prompt import Prompter                                             # doctest: +SKIP
>>> from api_prompt.batch import run                                            # doctest: +SKIP
>>> prompter = Prompter(model="local-dir:tests/fixtures/clip_reference/model", layer=4)  # doctest: +SKIP
>>> summary = run("questions.jsonl", "out/", prompter, batch_size=32)           # doctest: +SKIP
>>> print(summary)                                                              # doctest: +SKIP
998 ok, 2 failed, 0 skipped in 41.3 s (24.2 samples/s) -> out

:func:`run` checks the options, prepares ``DIR`` (:class:`~api_prompt.batch.store.OutputDir`:
lock, parameter check, resume), hands the pending batches to an engine (:mod:`.local_engine`:
threads in this process; :mod:`.ray_engine`: Ray Data actors) and writes the prompted table or
dataset (:mod:`.export`). The work on a batch is :mod:`.stages`; which samples, in which
batches, :mod:`.selection`.

Determinism: batches are formed from consecutive samples of the run's share of the input,
before anything is skipped, so a resumed run feeds the model exactly the batches an
uninterrupted run would (a batch with some samples already done is recomputed whole and only
the missing outputs are written). PNG and JPEG encoding carry no timestamps, so resumed outputs
are byte-identical to an uninterrupted run's.

Nothing is lost silently: a failed sample is recorded in the manifest with ``error_kind``
``permanent`` or ``transient`` (:mod:`.records`). The prompted table or dataset is written
only when every sample succeeded, unless ``allow_partial`` (then failed rows keep their
original image and a status column says which rows those are).

Sharding: sample ``i`` (0-based position in the input, counted before ``limit``) belongs to
shard ``i % num_shards``. Each shard writes its own folder; :func:`~api_prompt.batch.merge`
combines them.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable
from typing import Any

from ..images import DEFAULT_MAX_PIXELS
from ..runs import jsonable
from .encoding import IMAGE_FORMATS, OutputSpec, encode_image
from .export import check_export_options, export, planned_outputs
from .job import BatchPrompter, Interrupted, LazyPrompter, RunSettings, Summary, default_workers
from .local_engine import Job
from .progress import progress_bar
from .ray_engine import RayPipeline, start_ray
from .sources import Source, open_source
from .store import OutputDir, package_versions

__all__ = [
    "run",
    "Summary",
    "Interrupted",
    "LazyPrompter",
    "OutputSpec",
    "encode_image",
    "IMAGE_FORMATS",
    "RunSettings",
    "default_workers",
    "LAYOUT_VERSION",
]

#: version of the run.json / manifest layout
LAYOUT_VERSION = 2


def run(
    source: Source | str | os.PathLike | Any,
    out_dir: str | os.PathLike,
    prompter: BatchPrompter | LazyPrompter,
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
    output_format: str | None = None,
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
        workers: threads for decoding, overlay and encoding, and as many again for writing
            (default: :func:`~api_prompt.batch.job.default_workers`, one per usable core, at
            most 32).
        limit: only the first ``limit`` samples of the input.
        num_shards, shard_index: process only samples whose index ``% num_shards == shard_index``.
        overwrite: delete an earlier run's outputs in ``out_dir`` first (also when its
            parameters differ, which is otherwise refused).
        image_format: ``"auto"`` (JPEG for JPEG inputs, else PNG), ``"png"`` or ``"jpg"``;
            ``jpeg_quality`` 1-100 for JPEG (recorded in run.json).
        allow_partial: write the TSV / dataset even when some samples failed (their rows keep
            the original image; a status column marks them).
        tsv_name: file name of the prompted VLMEvalKit TSV (default ``<stem>_API.tsv``).
        output_format: a registered output format (:mod:`.formats`) for the inputs it can
            write: for parquet / ``datasets`` input ``"dataset"`` (a ``DatasetDict`` saved with
            ``save_to_disk`` in ``DIR/dataset``, the default) or ``"parquet"`` (``DIR/data/``);
            a format for another kind of input is left out for the input's default (the TSV
            for a TSV input, nothing for JSON Lines and CSV).
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
    settings = RunSettings(
        batch_size=batch_size,
        workers=workers,
        limit=limit,
        num_shards=num_shards,
        shard_index=shard_index,
        overwrite=overwrite,
        image_format=image_format,
        jpeg_quality=jpeg_quality,
        allow_partial=allow_partial,
        tsv_name=tsv_name,
        output_format=output_format,
        keep_original=keep_original,
        engine=engine,
        address=address,
        num_gpus=num_gpus,
        progress=progress,
        max_pixels=max_pixels,
    ).checked()
    check_export_options(tsv_name=tsv_name, output_format=output_format)
    opened = open_source(source, **source_options)
    if max_pixels != opened.max_pixels:  # a copy: a Source the caller passed is left as it was
        opened = copy.copy(opened)
        opened.max_pixels = max_pixels
    return run_with(opened, OutputDir(out_dir), prompter, settings, log or (lambda message: None))


def run_with(
    source: Source,
    out: OutputDir,
    prompter: BatchPrompter | LazyPrompter,
    settings: RunSettings,
    say: Callable[[str], None],
) -> Summary:
    """:func:`run` with its options checked (``settings``) and its source opened."""
    share, output = settings.share, settings.output
    pipeline: RayPipeline | None = None
    try:
        out.check_usable()
        out.lock()
        stored = None if settings.overwrite else out.read_run()
        records = out.records() if stored is not None else {}
        done = {name for name, record in records.items() if out.is_done(record)}
        job = Job(
            source,
            out,
            None,
            batch_size=settings.batch_size,
            workers=settings.worker_count,
            share=share,
            done=done,
            output=output,
        )
        total = share.size(source)
        summary = Summary(out_dir=out.root, total=total)
        already = sum(1 for name in done if share.contains(records[name].get("index")))
        base_parameters = {"source": source.describe(), "output": output.describe()}
        same_data = stored is not None and all(
            jsonable(base_parameters)[key] == (stored.get("parameters") or {}).get(key)
            for key in base_parameters
        )
        if same_data:
            say(
                f"resuming {out.root}: {already} of {total if total is not None else '?'} samples already done"
            )
        loaded = not isinstance(prompter, LazyPrompter)
        request = jsonable(prompter.request) if isinstance(prompter, LazyPrompter) else None
        if (
            stored is not None
            and isinstance(prompter, LazyPrompter)
            and same_data
            and request == (stored.get("run") or {}).get("request")
            and job.all_done()
        ):
            say(f"nothing left to do: all {already} samples are done (the model was not loaded)")
            parameters = {**base_parameters, "prompter": stored["parameters"]["prompter"]}
        else:
            if settings.engine == "ray":
                pipeline = start_ray(
                    job, summary, prompter, address=settings.address, num_gpus=settings.num_gpus
                )
            if pipeline is not None and isinstance(prompter, LazyPrompter):
                description = pipeline.description()  # an actor's model: this process loads none
            else:
                model = prompter.build() if isinstance(prompter, LazyPrompter) else prompter
                description = model.describe()
                job.prompter = model
            loaded = True
            parameters = {**base_parameters, "prompter": description}

        resumed = out.prepare(parameters, overwrite=settings.overwrite)
        if not resumed:
            already, job.done = 0, set()
        exports = planned_outputs(
            source,
            num_shards=settings.num_shards,
            tsv_name=settings.tsv_name,
            output_format=settings.output_format,
        )
        if stored is not None:  # an export under another name (say a new --tsv-name) would be stale
            stale = {
                key: name
                for key, name in (stored.get("outputs") or {}).items()
                if key not in ("manifest", "images") and exports.get(key) != name
            }
            out.remove_exports({"outputs": stale})
        run_info = {
            "layout": LAYOUT_VERSION,
            "parameters": parameters,
            "run": {
                "batch_size": settings.batch_size,
                "workers": settings.worker_count,
                "limit": settings.limit,
                "num_shards": settings.num_shards,
                "shard_index": settings.shard_index,
                "engine": settings.engine,
                "source": source.location(),
                "argv": sys.argv,
                "request": request,
                "allow_partial": settings.allow_partial,
                "export_options": {
                    "tsv_name": settings.tsv_name,
                    "output_format": settings.output_format,
                    "keep_original": settings.keep_original,
                },
            },
            "versions": package_versions(),
            "outputs": {"manifest": "manifest.jsonl", "images": "images", **exports},
        }
        out.write_run(run_info)

        summary.model_loaded = loaded
        try:
            if not loaded:
                summary.skipped = already
            elif pipeline is not None:
                with progress_bar(settings.progress, total, already) as bar:
                    pipeline.collect(job, summary, bar, jsonable(parameters["prompter"]))
            elif settings.engine != "ray":
                with progress_bar(settings.progress, total, already) as bar:
                    job.run(summary, bar)
        except KeyboardInterrupt:
            # counted from the manifest: a signal can land between a write and its tally
            finished = sum(
                1
                for record in out.records().values()
                if out.is_done(record) and share.contains(record.get("index"))
            )
            raise Interrupted(finished, total, out.root) from None

        export(
            out,
            source,
            run_info,
            summary,
            allow_partial=settings.allow_partial,
            keep_original=settings.keep_original,
        )
        run_info["summary"] = {
            "ok": summary.ok,
            "error": summary.error,
            "skipped": summary.skipped,
            "failed_total": summary.failed_total,
            "partial": summary.partial,
            "seconds": round(summary.seconds, 3),
        }
        out.write_run(run_info)
        return summary
    finally:
        if pipeline is not None:
            pipeline.close()
        out.close()
