"""Evaluation: does attention prompting help a model on a benchmark?

- :func:`score` scores one answer as the benchmark's official evaluation does;
- :data:`BENCHMARKS` holds every benchmark as a :class:`Benchmark` record (scorer, prompts,
  metrics, judge); :func:`register_benchmark` adds one;
- :func:`evaluate` asks a target on every sample with the original and the prompted image,
  scores both, and writes predictions, a summary with paired statistics, a report and a chart.

>>> from api_prompt.evaluation import score
>>> score("pope", "No, there is not.", {"answer": "no"})
1.0
"""

from __future__ import annotations

import importlib

from .benchmarks import BENCHMARKS, Benchmark, get_benchmark, register_benchmark, score

_LAZY = {
    "evaluate": "api_prompt.evaluation.runner",
    "summarize": "api_prompt.evaluation.report",
}

__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "get_benchmark",
    "register_benchmark",
    "score",
    "evaluate",
    "summarize",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'api_prompt.evaluation' has no attribute {name!r}")
