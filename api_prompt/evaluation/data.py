"""Benchmark data: samples with *every* column, and the texts each benchmark asks.

The readers of :mod:`api_prompt.batch.sources` (VLMEvalKit TSV, JSON Lines, CSV, parquet, saved
``datasets`` folders) keep only plain columns, since a batch run only needs the question. A
benchmark also needs its ground truth, which can be a list (the ten VQA answers) or a dict, so
this module adapts those readers to keep every column except the image.

The text a target gets, per benchmark (the auxiliary model gets the bare question):

- ``mcq``, ``synthshapes-mcq``: VLMEvalKit's multiple-choice prompt: ``Hint: ...`` (when there is
  a hint), ``Question: ...``, ``Options:`` with one ``X. text`` line per option, and
  ``Please select the correct answer from the options above.``;
- ``textvqa``, ``vqav2``, ``gqa``: the question and ``Answer the question using a single word or
  phrase.`` (LLaVA-1.5's short-answer prompt);
- ``pope``, ``mme``: the question as the data has it (MME's ends in ``Please answer yes or no.``,
  which is left out of the auxiliary model's query);
- ``mmvet``, ``llava-bench``: the question as the data has it (lmms-eval's ``mmvet`` task
  prepends a step-by-step instruction by default; this does not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..batch import sources as _sources
from ..errors import ConfigError
from .scoring import options_of

__all__ = ["EvalSample", "read_samples", "target_prompt", "auxiliary_query", "SHORT_ANSWER"]

SHORT_ANSWER = "Answer the question using a single word or phrase."
_MME_SUFFIX = "Please answer yes or no."


@dataclass
class EvalSample:
    """One benchmark sample: ``fields`` holds every column but the image (ground truth included)."""

    index: int
    id: str
    image: Any
    question: str
    fields: dict[str, Any]
    error: str | None = None


def target_prompt(benchmark: str, sample: EvalSample) -> str:
    """The text the target model is asked (see the module docstring)."""
    question = sample.question.strip()
    if benchmark in ("mcq", "synthshapes-mcq"):
        lines = []
        hint = sample.fields.get("hint")
        if hint is not None and str(hint).strip() and str(hint).lower() != "nan":
            lines.append(f"Hint: {hint}")
        lines.append(f"Question: {question}")
        options = options_of(sample.fields)
        if options:
            lines.append("Options:")
            lines += [f"{letter}. {text}" for letter, text in options.items()]
            lines.append("Please select the correct answer from the options above.")
        return "\n".join(lines)
    if benchmark in ("textvqa", "vqav2", "gqa"):
        return f"{question}\n{SHORT_ANSWER}"
    return question


def auxiliary_query(benchmark: str, sample: EvalSample) -> str:
    """The text the auxiliary model attributes: the question without answer-format instructions."""
    question = sample.question.strip()
    if benchmark == "mme" and question.endswith(_MME_SUFFIX):
        question = question[: -len(_MME_SUFFIX)].strip() or question
    return question


# ------------------------------------------------------------------------------------------------
# Readers that keep every column


def _plain(value: Any) -> Any:
    """A JSON-able copy of a column value (arrays become lists), or None for binary data."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return items
    if isinstance(value, dict):
        if "bytes" in value:  # an image struct
            return None
        return {str(key): _plain(item) for key, item in value.items()}
    return None


class _KeepColumns:
    """Mixin: ``Sample.extra`` keeps lists and dicts too (the readers keep plain values only)."""

    def _sample(self, index: int, row: dict[str, Any]):
        sample = super()._sample(index, row)
        for key, value in row.items():
            if key in (self.id_column, self.image_column) or key in sample.extra:
                continue
            plain = _plain(value)
            if plain is not None:
                sample.extra[key] = plain
        return sample


class _JSONL(_KeepColumns, _sources.JSONLSource):
    pass


class _CSV(_KeepColumns, _sources.CSVSource):
    pass


class _TSV(_KeepColumns, _sources.TSVSource):
    pass


class _Parquet(_KeepColumns, _sources.ParquetSource):
    def __init__(self, path, **options):
        super().__init__(path, **options)
        self._read = list(self.columns)


class _HF(_KeepColumns, _sources.HFDatasetSource):
    def __init__(self, dataset, **options):
        import datasets

        super().__init__(dataset, **options)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[self.split]
        drop = [name for name, feature in dataset.features.items()
                if isinstance(feature, datasets.Image) and name != self.image_column]
        dataset = dataset.remove_columns(drop)
        if isinstance(dataset.features[self.image_column], datasets.Image):
            dataset = dataset.cast_column(self.image_column, datasets.Image(decode=False))
        self.dataset = dataset


_READERS = {"jsonl": _JSONL, "csv": _CSV, "tsv": _TSV, "parquet": _Parquet, "hf": _HF}


def open_benchmark_source(data: Any, **options: Any):
    """A batch :class:`~api_prompt.batch.sources.Source` that keeps every column; ``options`` as
    for :func:`~api_prompt.batch.sources.open_source`."""
    return _sources.open_source(data, readers=_READERS, **options)


def read_samples(data: Any, *, limit: int | None = None, id_column: str | None = None, **options: Any):
    """``(source, samples)``: the first ``limit`` samples of ``data`` (all when None), images
    not decoded. Without ``id_column``, ``question_id`` is the id when the data has one (the
    lmms-eval layout), else the reader's default (``index`` in a TSV, ``id``, else the row number).
    """
    source = open_benchmark_source(data, id_column=id_column, **options)
    if id_column is None and source.columns and "question_id" in source.columns \
            and source.id_column not in source.columns:
        source = open_benchmark_source(data, id_column="question_id", **options)
    samples = []
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
        samples.append(EvalSample(sample.index, sample.id, sample.image, sample.question or "",
                                  fields, error))
    ids = [sample.id for sample in samples]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(
            f"the id {duplicate!r} appears more than once in {source.name}; name a column of unique "
            "ids with --id-column"
        )
    return source, samples
