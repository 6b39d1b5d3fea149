"""Benchmark data: samples with *every* column, and the texts each benchmark asks.

The readers of :mod:`api_prompt.batch.sources` (VLMEvalKit TSV, JSON Lines, CSV, parquet, saved
``datasets`` folders) keep only plain columns, since a batch run only needs the question. A
benchmark also needs its ground truth, which can be a list (the ten VQA answers) or a dict, so
this module opens them with ``keep_columns="all"``: every column except the image.

The texts a target and the auxiliary model get are each benchmark's
(:mod:`~api_prompt.evaluation.benchmarks`); :func:`target_prompt` and :func:`auxiliary_query`
look them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..batch import sources as _sources
from ..errors import ConfigError
from .benchmarks import SHORT_ANSWER, get_benchmark

__all__ = ["EvalSample", "read_samples", "target_prompt", "auxiliary_query", "SHORT_ANSWER"]


@dataclass
class EvalSample:
    """One benchmark sample: ``fields`` holds every column but the image (ground truth included)."""

    index: int
    id: str
    image: Any
    question: str
    fields: dict[str, Any]
    error: str | None = None


def target_prompt(benchmark: str, sample: EvalSample, *, bare: bool = False) -> str:
    """The text the target model is asked: the benchmark's prompt, or with ``bare`` the question
    exactly as the data has it (no answer-format instruction, no options)."""
    if bare:
        return sample.question
    return get_benchmark(benchmark).prompt(sample.question, sample.fields)


def auxiliary_query(benchmark: str, sample: EvalSample) -> str:
    """The text the auxiliary model attributes: the question without answer-format instructions."""
    return get_benchmark(benchmark).query(sample.question, sample.fields)


def open_benchmark_source(data: Any, **options: Any):
    """A batch :class:`~api_prompt.batch.sources.Source` that keeps every column; ``options`` as
    for :func:`~api_prompt.batch.sources.open_source`."""
    return _sources.open_source(data, keep_columns="all", **options)


def read_samples(
    data: Any, *, limit: int | None = None, id_column: str | None = None, **options: Any
):
    """``(source, samples)``: the first ``limit`` samples of ``data`` (all when None), images
    not decoded. Without ``id_column``, ``question_id`` is the id when the data has one (the
    lmms-eval layout), else the reader's default (``index`` in a TSV, ``id``, else the row number).
    """
    source = open_benchmark_source(data, id_column=id_column, **options)
    if (
        id_column is None
        and source.columns
        and "question_id" in source.columns
        and source.id_column not in source.columns
    ):
        source = open_benchmark_source(data, id_column="question_id", **options)
    samples: list[EvalSample] = []
    for sample in source:
        if limit is not None and len(samples) >= limit:
            break
        fields = dict(sample.extra)
        if source.id_column not in fields and sample.id is not None:
            fields.setdefault(source.id_column, sample.id)
        fields.pop(source.question_column, None)
        if sample.question is not None:
            fields["question"] = sample.question
        error = sample.error
        if error is None and not (sample.question or "").strip():
            error = f"the row has no {source.question_column!r} text"
        samples.append(
            EvalSample(sample.index, sample.id, sample.image, sample.question or "", fields, error)
        )
    ids = [sample.id for sample in samples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(
            f"the id {duplicate!r} appears more than once in {source.name}; name a column of unique "
            "ids with --id-column"
        )
    return source, samples
