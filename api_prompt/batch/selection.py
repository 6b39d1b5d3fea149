"""Which samples a batch run does, named, in batches: ``limit``, sharding and resume.

Sample ``i`` (0-based position in the input, counted before ``limit``) belongs to shard
``i % num_shards``. Names count every sample of the input, all shards, so the same input always
gives the same names. Batches are formed from consecutive samples of the share, before anything
is skipped, so a resumed run feeds the model exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from .records import Item
from .sources import Sample, Source, is_multi_image
from .store import Namer

__all__ = ["Share", "named_samples", "batches"]


@dataclass(frozen=True)
class Share:
    """The samples of one run: the first ``limit`` of the input (all when None), those of shard
    ``shard_index`` of ``num_shards``.

    >>> share = Share(limit=10, num_shards=3, shard_index=1)
    >>> [i for i in range(12) if share.contains(i)]
    [1, 4, 7]
    """

    limit: int | None = None
    num_shards: int = 1
    shard_index: int = 0

    def contains(self, index: Any) -> bool:
        """Whether the sample at ``index`` (a manifest's ``index``, so anything) is in the share."""
        return (
            isinstance(index, int)
            and (self.limit is None or index < self.limit)
            and index % self.num_shards == self.shard_index
        )

    def size(self, source: Source) -> int | None:
        """How many samples the share holds, when the source can tell cheaply (else None)."""
        count = source.count()
        if count is None:
            return (
                None
                if self.limit is None
                else len(range(self.shard_index, self.limit, self.num_shards))
            )
        end = count if self.limit is None else min(count, self.limit)
        return len(range(self.shard_index, end, self.num_shards))

    def items(self, source: Source) -> Iterator[Item]:
        """The share's samples, named, in input order."""
        for sample, name in named_samples(source, self.limit):
            if self.contains(sample.index):
                yield Item(sample, name)


def named_samples(source: Source, limit: int | None) -> Iterator[tuple[Sample, str]]:
    """Every sample up to ``limit`` with its file name stem (names count every sample, all shards)."""
    namer = Namer()
    for sample in source:
        if limit is not None and sample.index >= limit:
            return
        yield sample, namer(sample.id, len(sample.image) if is_multi_image(sample) else 0)


def batches(
    items: Iterator[Item], size: int, done: Collection[str], skipped: Callable[[int], None]
) -> Iterator[list[Item]]:
    """Consecutive batches of ``size`` items; a batch whose items are all ``done`` is left out
    (``skipped`` is told how many items it held)."""
    while batch := list(islice(items, size)):
        if all(item.name in done for item in batch):
            skipped(len(batch))
            continue
        yield batch
