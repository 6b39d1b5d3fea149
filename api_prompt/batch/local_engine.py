"""``engine="local"``: the batch run's stages overlapped in threads of this process.

The main thread reads samples and runs the model one batch at a time; a thread pool decodes the
images of the next batches meanwhile (prefetch) and, once a batch has its maps, applies the
overlay and encodes every image while the model works on the next batch. Pillow, numpy and torch
release the GIL for the heavy parts, so the threads run in parallel with the model. The files are
written by a second pool, whose threads mostly wait for fsync: a worker of the first never waits
for the disk, so one per core keeps the cores busy (more would only take turns with the GIL).
Records are appended to the manifest in input order, each once its files are durable.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from .encoding import OutputSpec
from .job import BatchPrompter, Summary
from .progress import Progress
from .records import Attributed, Item, ManifestRecord
from .selection import Share, batches
from .sources import Source
from .stages import Stages
from .store import OutputDir

__all__ = ["Job"]

# A sample on its way to the manifest: its record, or the encoding task that gives its record or
# the write task that will.
Pending = ManifestRecord | Future[ManifestRecord | Future[ManifestRecord]]


class Job(Stages):
    """One run's pipeline: its share of the samples, what is done already, the stages, and
    (:meth:`run`) the local engine's loop. The Ray engine takes its :meth:`batches`."""

    def __init__(
        self,
        source: Source,
        out: OutputDir,
        prompter: BatchPrompter | None,
        *,
        batch_size: int,
        workers: int,
        share: Share,
        done: set[str],
        output: OutputSpec,
    ) -> None:
        super().__init__(source, out, prompter, output)
        self.batch_size, self.workers, self.share, self.done = batch_size, workers, share, done
        self.prefetch = 2  # batches decoded ahead of the model
        self.max_pending = 2 * batch_size + 2 * workers  # samples waiting to be written

    def items(self) -> Iterator[Item]:
        """This run's share of the samples, named."""
        return self.share.items(self.source)

    def all_done(self) -> bool:
        """Whether every sample of the share is done already (one pass over the source)."""
        return all(item.name in self.done for item in self.items())

    def batches(self, summary: Summary) -> Iterator[list[Item]]:
        """Consecutive batches of the share; batches already done entirely are skipped."""

        def skipped(count: int) -> None:
            summary.skipped += count

        return batches(self.items(), self.batch_size, self.done, skipped)

    def run(self, summary: Summary, bar: Progress) -> None:
        """Process every pending batch, appending records to the manifest as they finish."""
        pending: deque[Pending] = deque()  # records in input order
        lookahead: deque[list[Item]] = deque()
        started = time.perf_counter()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="api-prompt-batch")
        writers = ThreadPoolExecutor(self.workers, thread_name_prefix="api-prompt-write")

        def finish(attributed: Attributed) -> ManifestRecord | Future[ManifestRecord]:
            encoded = self.encode(attributed)
            return (
                encoded
                if isinstance(encoded, dict)
                else writers.submit(self.store, attributed, encoded)
            )

        def flush(block: bool) -> None:
            """Write finished records from the head of ``pending`` (all of them when ``block``).

            A record leaves ``pending`` only once it is in hand, so when a write fails the
            records before it are still appended (here) and the failed one is not.
            """
            ready = []
            try:
                while pending and (block or settled(pending[0]) or len(pending) > self.max_pending):
                    ready.append(record_of(pending[0]))
                    pending.popleft()
            finally:
                self.out.append(ready)
                summary.add(ready)
                bar.update(len(ready))

        def decode(item: Item) -> Item:
            if self.problem(item.sample) is None:
                item.decoded = pool.submit(self.decode, item)
            return item

        def decoded(item: Item) -> list:
            assert item.decoded is not None  # load() asks only for items without a problem
            return item.decoded.result()

        pending_batches = self.batches(summary)
        try:
            while True:
                while (
                    len(lookahead) < self.prefetch
                    and (batch := next(pending_batches, None)) is not None
                ):
                    lookahead.append([decode(item) for item in batch])
                if not lookahead:
                    break
                batch = lookahead.popleft()
                loaded = [self.load(item, decoded) for item in batch]
                for item, result in zip(
                    batch, self.attribute_items(batch, loaded)
                ):  # in input order
                    if item.name in self.done:
                        summary.skipped += 1
                    elif isinstance(result, Attributed):
                        pending.append(pool.submit(finish, result))
                    else:
                        pending.append(result.record())
                flush(block=False)
            flush(block=True)
        finally:
            for batch in lookahead:
                for item in batch:
                    if item.decoded is not None:
                        item.decoded.cancel()
            pool.shutdown(wait=True, cancel_futures=True)  # first: its tasks submit writes
            writers.shutdown(wait=True, cancel_futures=True)
            # keep what finished before an interruption
            kept = [record_of(head) for head in pending if settled(head, cleanly=True)]
            self.out.append(kept)
            summary.add(kept)
            bar.update(len(kept))
            pending.clear()
            summary.seconds = time.perf_counter() - started


def settled(head: Pending, cleanly: bool = False) -> bool:
    """Whether ``head``'s record (or its error) is there without waiting; ``cleanly``: its record,
    not an error or a cancellation."""
    current: Any = head
    while isinstance(current, Future):
        if not current.done():
            return False
        if current.cancelled() or current.exception() is not None:
            return not cleanly
        current = current.result()
    return True


def record_of(head: Pending) -> ManifestRecord:
    """``head``'s record, waiting for it (raising what its tasks raised)."""
    current: Any = head
    while isinstance(current, Future):
        current = current.result()
    return cast(ManifestRecord, current)
