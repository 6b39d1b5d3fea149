"""The types a batch run is made of, shared by the runner and both engines: its settings, the
prompter it drives, the summary it returns, and the interruption it raises."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from ..attention_map import AttentionMap
from ..errors import ConfigError
from ..images import DEFAULT_MAX_PIXELS
from .encoding import IMAGE_FORMATS, OutputSpec
from .records import ManifestRecord
from .selection import Share

__all__ = [
    "RunSettings",
    "BatchPrompter",
    "LazyPrompter",
    "Summary",
    "Interrupted",
    "ENGINES",
    "MAX_LISTED_ERRORS",
    "default_workers",
]

ENGINES = ("local", "ray")
#: how many failed samples a Summary lists
MAX_LISTED_ERRORS = 20


class BatchPrompter(Protocol):
    """What a batch run needs of a :class:`~api_prompt.Prompter`: its stages, called apart."""

    def attribute(
        self, images: Sequence[Image.Image], queries: Sequence[str], *, warn: bool = True
    ) -> Sequence[AttentionMap]: ...

    def render(self, image: Image.Image, attention_map: AttentionMap) -> Image.Image: ...

    def query_overflow(self, query: str) -> tuple[int, int] | None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class LazyPrompter:
    """A Prompter that is loaded only when there is work left.

    ``build()`` loads it; ``request`` describes it cheaply (the options it is built from). When
    ``run`` finds every sample already done by a run with the same ``request`` and parameters,
    the model is never loaded.
    """

    build: Callable[[], BatchPrompter]
    request: dict[str, Any]


def default_workers() -> int:
    """Threads for decoding, overlay and encoding: one per core this process may use (its CPU
    affinity), at most 32. The local engine writes the files in as many threads again, which
    mostly wait for fsync.

    One per core, because more only take turns with the GIL: on two cores, with the writes in
    their own threads, the pipeline reached 0.73-0.79 of the bare decode/overlay/encode loop with
    two workers and 0.66 with four (``bench_batch.py --ceiling``; docs/performance-gpu.md).

    >>> import os
    >>> default_workers() == min(32, len(os.sched_getaffinity(0)))
    True
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on macOS and Windows
        cores = os.cpu_count() or 1
    return max(1, min(32, cores))


@dataclass(frozen=True)
class RunSettings:
    """How a batch run goes: every option of :func:`~api_prompt.batch.run` but the source, the
    folder and the prompter (see there). :meth:`checked` refuses bad values with a one-line
    ConfigError and fills the defaults.

    >>> RunSettings(batch_size=8, image_format="JPEG").checked().output
    OutputSpec(format='jpg', jpeg_quality=95)
    >>> RunSettings(num_shards=2, shard_index=2).checked()
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: shard index must be in 0..1 for 2 shards, got 2
    """

    batch_size: int = 16
    workers: int | None = None
    limit: int | None = None
    num_shards: int = 1
    shard_index: int = 0
    overwrite: bool = False
    image_format: str = "auto"
    jpeg_quality: int = 95
    allow_partial: bool = False
    tsv_name: str | None = None
    output_format: str | None = None
    keep_original: bool = False
    engine: str = "local"
    address: str | None = None
    num_gpus: float | None = None
    progress: bool = True
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    def checked(self) -> RunSettings:
        """These settings, checked, with ``workers`` filled in and the image format normalised."""
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"shard index must be in 0..{self.num_shards - 1} for {self.num_shards} shards, "
                f"got {self.shard_index}"
            )
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be 0 or more, got {self.limit}")
        if self.image_format.lower() not in IMAGE_FORMATS:
            raise ConfigError(
                f"unknown image format {self.image_format!r}; choose auto, png or jpg"
            )
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"JPEG quality must be in 1..100, got {self.jpeg_quality}")
        if self.engine not in ENGINES:
            raise ConfigError(
                f"unknown engine {self.engine!r}; choose one of: {', '.join(ENGINES)}"
            )
        workers = self.workers if self.workers is not None else default_workers()
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        image_format = self.image_format.lower()
        return replace(
            self, workers=workers, image_format="jpg" if image_format == "jpeg" else image_format
        )

    @property
    def output(self) -> OutputSpec:
        """How the images are encoded."""
        return OutputSpec(self.image_format, self.jpeg_quality)

    @property
    def share(self) -> Share:
        """Which samples of the input this run does."""
        return Share(self.limit, self.num_shards, self.shard_index)

    @property
    def worker_count(self) -> int:
        """``workers`` (after :meth:`checked`, never None)."""
        return self.workers if self.workers is not None else default_workers()


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
        permanent, transient: the failed samples by kind (see :mod:`.records`).
        skipped: samples already done by an earlier run.
        seconds: wall time of the processing loop.
        errors: ``(id, message)`` of the first failed samples.
        failed_total: samples of the share whose latest record is an error (also earlier runs').
        exported: the prompted table or dataset written (any output format), if any.
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
    exported: Path | None = None
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

    def add(self, records: Iterable[ManifestRecord]) -> None:
        """Count finished records."""
        for record in records:
            if record["status"] == "ok":
                self.ok += 1
                continue
            self.error += 1
            if record.get("error_kind") == "permanent":
                self.permanent += 1
            else:
                self.transient += 1
            if len(self.errors) < MAX_LISTED_ERRORS:
                self.errors.append((record["id"], record["error"]))

    def __str__(self) -> str:
        return (
            f"{self.ok} ok, {self.error} failed, {self.skipped} skipped (already done) in "
            f"{self.seconds:.1f} s ({self.rate:.1f} samples/s) -> {self.out_dir}"
        )
