"""The micro-batcher: images from requests that arrive together are attributed together.

Each request hands its (image, query) pairs to :meth:`MicroBatcher.prompt` and waits. One worker
collects queued pairs until it holds ``max_batch`` of them or the oldest has waited
``max_wait_ms`` (or, given an ``arriving`` hint, until no other request is on its way: a lone
request never waits for company that is not coming), runs the batch function once (in a worker thread, so the event loop keeps
serving), and hands every request its own images back, in order. While a batch runs, new pairs
queue up and form the next batch. The queue is bounded: when it is full, :class:`QueueFull`
says how long to wait (the proxy answers 429 with ``Retry-After``); a request with more images
than the whole queue holds gets ValueError, since waiting would never help. A request that is
cancelled (its client went away) takes its pairs out of the queue at once.

>>> import asyncio
>>> async def demo():
...     batcher = MicroBatcher(lambda images, queries: [f"{i}:{q}" for i, q in zip(images, queries)],
...                            max_batch=4, max_wait_ms=5)
...     await batcher.start()
...     answers = await asyncio.gather(batcher.prompt(["a"], ["x"]), batcher.prompt(["b", "c"], ["y", "z"]))
...     await batcher.stop()
...     return answers, batcher.batch_sizes
>>> asyncio.run(demo())
([['a:x'], ['b:y', 'c:z']], [3])
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MicroBatcher", "QueueFull"]

logger = logging.getLogger(__name__)

BatchFunction = Callable[[list[Any], list[str]], Sequence[Any]]


class QueueFull(Exception):
    """The queue holds ``max_queue`` images already; ``retry_after`` is a fair wait in seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the attribution queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Job:
    image: Any
    query: str
    group: int  # the request it belongs to
    future: asyncio.Future
    queued_at: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Batches concurrent ``(image, query)`` pairs through one function.

    Args:
        run_batch: ``run_batch(images, queries) -> results`` (one per image, in order), called
            in a single worker thread, one batch at a time. The proxy passes the prompter's
            ``batch`` and keeps the prompted images.
        max_batch: most pairs per call.
        max_wait_ms: how long the oldest queued pair waits for others before its batch runs.
        max_queue: most pairs waiting at once (not counting the batch being run).
        arriving: optional ``() -> int``, how many requests are on their way to :meth:`prompt`
            (received, still decoding); while it is 0 a batch does not wait for more.
        alone: optional ``() -> bool``, whether the batch's request is the only one in flight.
            Then, once batches are known to be quick (their running average at most
            ``inline_under_ms``), the batch runs on the event loop's own thread: nothing else
            needs the loop meanwhile, and the thread hand-off would only add latency (several
            milliseconds on a loaded machine). Slow models always run in the worker thread.
        inline_under_ms: see ``alone``.
    """

    def __init__(
        self,
        run_batch: BatchFunction,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 10.0,
        max_queue: int = 256,
        arriving: Callable[[], int] | None = None,
        alone: Callable[[], bool] | None = None,
        inline_under_ms: float = 50.0,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000
        self.max_queue = int(max_queue)
        self.arriving = arriving
        self.alone = alone
        self.inline_under = float(inline_under_ms) / 1000
        self.batches = 0  # calls of run_batch so far
        self._recent_sizes: deque[int] = deque(maxlen=10_000)
        self._queue: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._groups = 0
        self._batch_seconds = 0.0  # running average, for Retry-After

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the most recent batches (up to 10,000), oldest first."""
        return list(self._recent_sizes)

    @property
    def queued(self) -> int:
        """Pairs waiting for a batch."""
        return len(self._queue)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="api-prompt-batch")
        self._worker = asyncio.create_task(self._work())

    async def stop(self) -> None:
        """Finish every queued pair, then stop the worker."""
        self._stopping = True
        if self._arrived is not None:
            self._arrived.set()
        if self._worker is not None:
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def prompt(self, images: Sequence[Any], queries: Sequence[str]) -> list[Any]:
        """The results for one request's pairs (all queued at once, or none: QueueFull)."""
        if self._worker is None or self._stopping:
            raise RuntimeError("the batcher is not running")
        if len(images) > self.max_queue:
            raise ValueError(
                f"{len(images)} images can never be queued together: the queue holds at most "
                f"{self.max_queue}"
            )
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFull(self._retry_after())
        loop = asyncio.get_running_loop()
        self._groups += 1
        jobs = [
            _Job(image, query, self._groups, loop.create_future())
            for image, query in zip(images, queries)
        ]
        self._queue.extend(jobs)
        assert self._arrived is not None  # made with the worker, which runs while accepting
        self._arrived.set()
        try:
            return list(await asyncio.gather(*(job.future for job in jobs)))
        except asyncio.CancelledError:  # the client went away: drop its queued pairs now
            for job in jobs:
                job.future.cancel()
            self._queue = deque(job for job in self._queue if not job.future.cancelled())
            raise

    def wake(self) -> None:
        """Re-check ``arriving`` now (a request on its way gave up before reaching the queue)."""
        if self._arrived is not None:
            self._arrived.set()

    def _retry_after(self) -> int:
        batches_ahead = len(self._queue) / self.max_batch + 1
        return max(1, math.ceil(batches_ahead * max(self._batch_seconds, self.max_wait)))

    async def _work(self) -> None:
        assert self._arrived is not None  # made before the worker starts
        while True:
            while not self._queue:
                if self._stopping:
                    return
                self._arrived.clear()
                await self._arrived.wait()
            # Wait for company: until the batch is full or the oldest pair has waited enough.
            deadline = self._queue[0].queued_at + self.max_wait
            while len(self._queue) < self.max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.arriving is not None and self.arriving() == 0):
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch: list[_Job] = []
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                if not job.future.done():  # skip pairs whose request was cancelled
                    batch.append(job)
            if batch:
                await self._run(batch)

    def _runs_inline(self) -> bool:
        return (
            self.alone is not None
            and self.batches > 0
            and self._batch_seconds <= self.inline_under
            and self.alone()
        )

    async def _run(self, batch: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        images, queries = [job.image for job in batch], [job.query for job in batch]
        try:
            if self._runs_inline():
                results = self.run_batch(images, queries)
            else:
                results = await loop.run_in_executor(
                    self._executor, self.run_batch, images, queries
                )
            if len(results) != len(batch):
                raise RuntimeError(
                    f"the batch function returned {len(results)} results for {len(batch)} inputs"
                )
        except Exception as exc:
            if len({job.group for job in batch}) > 1:
                # One request's bad input must not fail the others: run each request alone.
                for group in dict.fromkeys(job.group for job in batch):
                    await self._run([job for job in batch if job.group == group])
                return
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        finally:
            elapsed = time.monotonic() - started
            self._batch_seconds = (
                elapsed if not self.batches else 0.8 * self._batch_seconds + 0.2 * elapsed
            )
        self.batches += 1
        self._recent_sizes.append(len(batch))
        for job, result in zip(batch, results):
            if not job.future.done():
                job.future.set_result(result)
