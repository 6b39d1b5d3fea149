"""Paired statistics for comparing two conditions on the same samples (numpy and scipy only).

- :func:`resample_weights`: the paired bootstrap's resamples, as counts per unit;
- :func:`paired_bootstrap`: the interval of ``metric(B) - metric(A)`` for any metric computed
  from per-unit sums (accuracy, F1, MME's scores, ...), both conditions on the same resamples;
- :func:`mcnemar_p`: the exact McNemar test for 0/1 scores.

>>> import numpy as np
>>> a = np.array([1, 0, 1, 1, 0, 0, 1, 0] * 10, dtype=float)
>>> b = np.array([1, 1, 1, 1, 0, 1, 1, 0] * 10, dtype=float)
>>> mcnemar_p(a, b)          # 20 discordant pairs, all favouring b
1.9073486328125e-06
>>> lo, hi = paired_bootstrap(a[:, None], b[:, None], lambda s: s[..., 0] / len(a))[1]
>>> bool(lo > 0 and hi < 0.5)
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

__all__ = [
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "resample_weights",
    "paired_bootstrap",
    "bootstrap_conditions",
    "mcnemar_p",
    "percentile_interval",
]

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
# Units x resamples handled per step: bounds memory (8 bytes each) whatever the data size.
_CELLS_PER_CHUNK = 8_000_000


def resample_weights(
    n_units: int,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> Iterator[np.ndarray]:
    """Bootstrap resamples as count matrices, in chunks of rows.

    Each row is one resample: how often each of the ``n_units`` units was drawn when drawing
    ``n_units`` times with replacement. Rows come in chunks (arrays of shape ``(rows, n_units)``)
    so that memory stays bounded; the sequence depends only on ``n_units``, ``n_resamples``
    and ``seed``.

    >>> w = np.vstack(list(resample_weights(5, 3, seed=1)))
    >>> w.shape, w.sum(axis=1).tolist()
    ((3, 5), [5, 5, 5])
    """
    for draws in _draws(n_units, n_resamples, seed):
        rows = len(draws)
        draws += (np.arange(rows) * n_units)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n_units).reshape(rows, n_units)


def _draws(n_units: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The units each resample draws, ``(rows, n_units)`` per chunk (rows bound memory); the
    sequence depends on ``n_units``, ``n_resamples`` and ``seed`` only."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CELLS_PER_CHUNK // max(n_units, 1))
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        yield rng.integers(0, n_units, size=(rows, n_units))
        done += rows


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` percentile interval of ``values`` (NaNs ignored)."""
    tail = (1.0 - level) / 2 * 100
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    units_a: np.ndarray,
    units_b: np.ndarray,
    metric: Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
):
    """The difference ``metric(B) - metric(A)`` and its paired bootstrap interval.

    Args:
        units_a, units_b: ``(n_units, k)`` arrays: per unit (a sample, or a group of samples
            scored together), the ``k`` numbers the metric is computed from, for conditions A
            and B. Row ``i`` of both is the same unit.
        metric: maps sums over units, an array ``(..., k)``, to the metric, an array ``(...)``,
            or to a dict of such arrays (several metrics from one set of resamples). It is
            called once on the plain sums and once per chunk of resamples.
    Returns:
        ``(difference, (low, high))``, or a dict of them when ``metric`` returns a dict.
    """
    result = bootstrap_conditions(
        {"a": units_a, "b": units_b},
        metric,
        baseline="a",
        n_resamples=n_resamples,
        seed=seed,
        level=level,
    )
    delta = result["delta"]["b"]
    return (
        delta
        if isinstance(metric(np.asarray(units_a, dtype=float)[:1].sum(axis=0)), dict)
        else delta[None]
    )


def bootstrap_conditions(
    units: dict[str, np.ndarray],
    metric: Callable[[np.ndarray], np.ndarray | dict[str, np.ndarray]],
    *,
    baseline: str,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> dict:
    """One paired bootstrap for several conditions: each one's interval, and each one's
    difference from ``baseline`` with its interval, all from the same resamples of the units.

    Returns ``{"intervals": {condition: {metric: (low, high)}},
    "delta": {condition: {metric: (difference, (low, high))}},
    "pairs": {(a, b): {metric: (difference b − a, (low, high))}}}`` (``delta`` has every
    condition but the baseline; ``pairs`` every two conditions, in the order given). A metric
    returning a bare array is reported under the key ``None``.
    """
    names = list(units)
    arrays = [np.asarray(units[name], dtype=float) for name in names]
    if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 2:
        raise ValueError("every condition needs the same (n_units, k) shape")
    if baseline not in units:
        raise ValueError(f"baseline {baseline!r} is not one of the conditions")
    n_units, k = arrays[0].shape
    with np.errstate(divide="ignore", invalid="ignore"):
        points = {name: _as_dict(metric(a.sum(axis=0))) for name, a in zip(names, arrays)}
        stacked = np.hstack(arrays)
        draws: dict[str, dict[str, list[np.ndarray]]] = {
            name: {m: [] for m in points[name]} for name in names
        }
        if n_units:
            for sums in _resampled_sums(stacked, n_resamples, seed):
                for position, name in enumerate(names):
                    for m, values in _as_dict(
                        metric(sums[:, position * k : (position + 1) * k])
                    ).items():
                        draws[name][m].append(np.broadcast_to(values, (len(sums),)))
    samples = {
        name: {m: np.concatenate(v) if v else np.array([]) for m, v in per.items()}
        for name, per in draws.items()
    }
    intervals = {
        name: {m: percentile_interval(v, level) for m, v in per.items()}
        for name, per in samples.items()
    }

    def difference(a: str, b: str) -> dict:
        return {
            m: (
                float(points[b][m] - points[a][m]),
                percentile_interval(samples[b][m] - samples[a][m], level),
            )
            for m in points[b]
            if m in points[a]
        }

    delta = {name: difference(baseline, name) for name in names if name != baseline}
    pairs = {(a, b): difference(a, b) for i, a in enumerate(names) for b in names[i + 1 :]}
    return {"intervals": intervals, "delta": delta, "pairs": pairs}


def _resampled_sums(units: np.ndarray, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The column sums of the bootstrap resamples of ``units``, ``(rows, k)`` per chunk.

    Resampling ``n`` units with replacement only matters through how often each *distinct* row
    is drawn. Benchmark units take few distinct values (0/1 scores, a category):

    - with very few distinct rows, their counts are drawn as multinomial(n, row frequencies),
      exactly the bootstrap distribution at a tiny fraction of the cost;
    - with more (judge grades 1-10 in two conditions: thousands), the units are drawn one by
      one as in :func:`resample_weights`, but counted per distinct row (a gather and a small
      count) instead of per unit, when every sum is exact in floating point (the values are
      multiples of a power of two, small enough), so the sums equal the per-unit sums bit for bit;
    - otherwise the per-unit counts of :func:`resample_weights` are multiplied by the units.
    """
    n_units = len(units)
    units = np.ascontiguousarray(units)
    # Rows are grouped by a random projection (fast: one number per row), then the grouping is
    # checked exactly; on the (improbable) collision the rows themselves are compared.
    projection = units @ np.random.default_rng(12345).random(units.shape[1])
    _, first, inverse, counts = np.unique(
        projection, return_index=True, return_inverse=True, return_counts=True
    )
    inverse = inverse.ravel()
    if not np.array_equal(units[first][inverse], units):
        as_bytes = units.view(np.dtype((np.void, units.dtype.itemsize * units.shape[1]))).ravel()
        _, first, inverse, counts = np.unique(
            as_bytes, return_index=True, return_inverse=True, return_counts=True
        )
        inverse = inverse.ravel()
    distinct = units[first]
    if len(distinct) * 8 <= n_units:
        rng = np.random.default_rng(seed)
        yield rng.multinomial(n_units, counts / n_units, size=n_resamples).astype(float) @ distinct
    elif len(distinct) * 2 <= n_units and _sums_are_exact(units) and n_units < 2**32:
        n_groups = len(distinct)
        group = inverse.astype(np.int32)
        for draws in _draws(n_units, n_resamples, seed):
            drawn = np.take(group, draws)
            tally = np.empty((len(draws), n_groups))
            for row, groups in enumerate(drawn):  # one row's counts stay in the cache
                tally[row] = np.bincount(groups, minlength=n_groups)
            yield tally @ distinct
    else:
        for weights in resample_weights(n_units, n_resamples, seed):
            yield weights.astype(float) @ units


def _sums_are_exact(units: np.ndarray) -> bool:
    """Whether every sum of ``n`` of the rows (with repeats) is exact in float64, in any order.

    True when all values are multiples of ``2**-p`` for a small ``p`` and ``n * max|value| *
    2**p < 2**53``: then every partial sum is a representable multiple of ``2**-p``, so no
    addition rounds and the order of the additions cannot change the result.
    """
    if units.size == 0 or not np.all(np.isfinite(units)):
        return False
    largest = float(np.max(np.abs(units)))
    for power in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16):
        scaled = units * float(2**power)  # exact: a power of two only moves the exponent
        if np.array_equal(scaled, np.round(scaled)):
            return len(units) * largest * 2.0**power < 2.0**53
    return False


def _as_dict(values) -> dict:
    return values if isinstance(values, dict) else {None: values}


def mcnemar_p(scores_a: np.ndarray, scores_b: np.ndarray) -> float:
    """Exact (binomial) two-sided McNemar p-value for paired 0/1 scores.

    Only discordant pairs count: ``b`` samples right under A only, ``c`` right under B only;
    the p-value is the two-sided binomial test of ``min(b, c)`` in ``b + c`` draws at 1/2
    (1.0 when there are no discordant pairs).
    """
    from scipy.stats import binomtest

    a = np.asarray(scores_a) > 0.5
    b = np.asarray(scores_b) > 0.5
    only_a = int(np.count_nonzero(a & ~b))
    only_b = int(np.count_nonzero(b & ~a))
    if only_a + only_b == 0:
        return 1.0
    return float(binomtest(min(only_a, only_b), only_a + only_b, 0.5).pvalue)
