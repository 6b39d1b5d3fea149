"""Benchmarks as records: what each one reads, asks, scores and reports, in one place.

The evaluation runner, the report, the CLI (``--benchmark`` choices and help) and
:func:`score` read this table; none of them names a benchmark in code. A :class:`Benchmark`
holds:

- ``score(answer, truth) -> float``: the per-sample score, with ``truth(sample)`` the sample's
  ground truth read (and checked) once per sample (default: the sample itself);
- ``prompt(question, fields)``: the text the target is asked; ``query(question, fields)``: the
  text the auxiliary model attributes (default for both: the question, stripped);
- ``table(benchmark, samples, answers)``: the :class:`~api_prompt.evaluation.metrics.MetricTable`
  (default: the mean score, called ``accuracy``), and ``primary``, the metric a chart leads with;
- ``judge``: for a judge-scored benchmark, its
  :class:`~api_prompt.evaluation.judged.JudgedBenchmark` (prompt, grading rule, metrics);
- ``data_options``: defaults for the data reader (``question_column``, ``id_column``, ...), which
  the user's options override; ``help``: how the CLI describes it.

Adding a benchmark is one record and one scorer function:

>>> def exact(answer, sample):
...     return float(answer.strip().lower() == str(sample["answer"]).lower())
>>> toy = register_benchmark(Benchmark("toy-exact", exact, help="exact match"))
>>> score("toy-exact", " Red", {"answer": "red"})
1.0
>>> build_table("toy-exact", [{"answer": "red"}, {"answer": "blue"}],
...             {"original": ["red", "red"]}).point("original")
{'accuracy': 0.5}
>>> del BENCHMARKS["toy-exact"]
>>> list(BENCHMARKS)
['pope', 'mme', 'textvqa', 'vqav2', 'gqa', 'mcq', 'synthshapes-mcq', 'mmvet', 'llava-bench']

The texts a target gets (the auxiliary model gets the question without answer-format
instructions; ``evaluate(..., bare_question=True)`` asks the target the question exactly as the
data has it instead):

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..errors import ConfigError
from . import scoring
from .judged import JUDGED, JudgedBenchmark
from .metrics import MetricTable, mean_score_table, mme_table, pope_table

__all__ = [
    "Benchmark",
    "BENCHMARKS",
    "register_benchmark",
    "get_benchmark",
    "score",
    "build_table",
    "SHORT_ANSWER",
]

SHORT_ANSWER = "Answer the question using a single word or phrase."
_MME_SUFFIX = "Please answer yes or no."


def question_only(question: str, fields: Mapping[str, Any]) -> str:
    """The question as the data has it, stripped."""
    return question.strip()


def short_answer_prompt(question: str, fields: Mapping[str, Any]) -> str:
    """The question and LLaVA-1.5's short-answer instruction."""
    return f"{question.strip()}\n{SHORT_ANSWER}"


def multiple_choice_prompt(question: str, fields: Mapping[str, Any]) -> str:
    """VLMEvalKit's multiple-choice prompt (hint, question, options, instruction)."""
    lines = []
    hint = fields.get("hint")
    if hint is not None and str(hint).strip() and str(hint).lower() != "nan":
        lines.append(f"Hint: {hint}")
    lines.append(f"Question: {question.strip()}")
    options = scoring.options_of(fields)
    if options:
        lines.append("Options:")
        lines += [f"{letter}. {text}" for letter, text in options.items()]
        lines.append("Please select the correct answer from the options above.")
    return "\n".join(lines)


def mme_query(question: str, fields: Mapping[str, Any]) -> str:
    """MME's question without its closing ``Please answer yes or no.``."""
    question = question.strip()
    if question.endswith(_MME_SUFFIX):
        question = question[: -len(_MME_SUFFIX)].strip() or question
    return question


def _the_sample(sample: Mapping[str, Any]) -> Mapping[str, Any]:
    return sample


def _judged_table(benchmark: Benchmark, samples, grades) -> MetricTable:
    return benchmark.judge_record().table(samples, grades)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: how it is scored, asked and reported (see the module docstring).

    ``score`` is None for a judge-scored benchmark (its ``judge`` grades the answers).
    """

    name: str
    score: Callable[[str, Any], float] | None
    truth: Callable[[Mapping[str, Any]], Any] = _the_sample
    prompt: Callable[[str, Mapping[str, Any]], str] = question_only
    query: Callable[[str, Mapping[str, Any]], str] = question_only
    table: Callable[..., MetricTable] = field(default=mean_score_table("accuracy"))
    primary: str = "accuracy"
    judge: JudgedBenchmark | None = None
    data_options: Mapping[str, Any] = field(default_factory=dict)
    help: str = ""

    def check(self, sample: Mapping[str, Any]) -> None:
        """ConfigError when ``sample`` lacks what scoring it needs (its ground truth)."""
        if self.judge is not None:
            self.judge.check(sample)
        else:
            self.score_one("", sample)

    def judge_record(self) -> JudgedBenchmark:
        """The judge's record (prompt, rule, metrics); ConfigError for a benchmark scored by rule."""
        if self.judge is None:
            raise ConfigError(f"{self.name} is scored by rule, not by a judge model")
        return self.judge

    def score_one(self, answer: str | None, sample: Mapping[str, Any]) -> float:
        """The score of one answer to one sample (None counts as the empty answer)."""
        if self.score is None:
            raise ConfigError(f"{self.name} is scored by a judge model, not by rule")
        return self.score("" if answer is None else str(answer), self.truth(sample))

    def scores(
        self, samples: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[str | None]]
    ) -> dict[str, np.ndarray]:
        """Every answer's score (``answers[condition][i]`` for ``samples[i]``); each sample's
        ground truth is read once for all conditions."""
        if self.score is None:
            raise ConfigError(f"{self.name} is scored by a judge model, not by rule")
        truths = [self.truth(sample) for sample in samples]
        return {
            c: np.array(
                [self.score("" if a is None else str(a), t) for a, t in zip(values, truths)],
                dtype=float,
            )
            for c, values in answers.items()
        }

    def reader_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The data reader's options: this benchmark's defaults, overridden by ``given`` (None
        values in ``given`` leave the default)."""
        options = dict(self.data_options)
        options.update(
            (key, value) for key, value in given.items() if value is not None or key not in options
        )
        return options


#: Every benchmark by name, in registration order.
BENCHMARKS: dict[str, Benchmark] = {}


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add ``benchmark`` under its name (replacing one of the same name); returns it."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark takes a Benchmark, got {type(benchmark).__name__}")
    if (benchmark.score is None) == (benchmark.judge is None):
        raise TypeError(f"benchmark {benchmark.name!r} needs either a score function or a judge")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called ``name``, or a ConfigError that lists the registered ones."""
    try:
        return BENCHMARKS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}"
        ) from None


def score(benchmark: str, answer: str | None, sample: Mapping[str, Any]) -> float:
    """The official score of one ``answer`` to one ``sample`` of ``benchmark``.

    ``sample`` is a row of the benchmark's data (a dict): ``answer`` holds the ground truth
    (``answers`` the human answers for VQA; option columns ``A``, ``B``, ... for multiple
    choice). The score is 0 or 1, except for ``textvqa``/``vqav2`` (multiples of 1/30).

    >>> score("pope", "No, there is not.", {"answer": "no"})
    1.0
    """
    return get_benchmark(benchmark).score_one(answer, sample)


def build_table(
    benchmark: str, samples: Sequence[Mapping[str, Any]], answers: Mapping[str, Sequence[Any]]
) -> MetricTable:
    """Score ``answers[condition][i]`` against ``samples[i]`` and lay out the units (for a
    judge-scored benchmark ``answers`` holds the judge's grades).

    >>> table = build_table("pope", [{"answer": "yes"}, {"answer": "no"}], {"original": ["Yes", "Yes"]})
    >>> table.point("original")["accuracy"]
    0.5
    """
    record = get_benchmark(benchmark)
    for condition, values in answers.items():
        if len(values) != len(samples):
            raise ValueError(f"{condition}: {len(values)} answers for {len(samples)} samples")
    return record.table(record, samples, answers)


# ------------------------------------------------------------------------------------------------
# The built-in benchmarks

_ACCURACY = mean_score_table("accuracy")
_VQA = mean_score_table("vqa_accuracy", proportion=False)
_CIRCULAR = mean_score_table("accuracy", circular=True)

for _record in (
    Benchmark("pope", scoring.pope_score, scoring.pope_label, table=pope_table, help="pope"),
    Benchmark(
        "mme",
        scoring.mme_score,
        scoring.mme_label,
        query=mme_query,
        table=mme_table,
        primary="acc",
        help="mme",
    ),
    Benchmark(
        "textvqa",
        scoring.textvqa_score,
        scoring.textvqa_truth,
        short_answer_prompt,
        table=_VQA,
        primary="vqa_accuracy",
        help="textvqa",
    ),
    Benchmark(
        "vqav2",
        scoring.vqav2_score,
        scoring.vqav2_truth,
        short_answer_prompt,
        table=_VQA,
        primary="vqa_accuracy",
        help="vqav2",
    ),
    Benchmark(
        "gqa",
        scoring.gqa_score,
        scoring.gqa_truth,
        short_answer_prompt,
        table=_ACCURACY,
        help="gqa",
    ),
    Benchmark(
        "mcq",
        scoring.mcq_score,
        partial(scoring.mcq_truth, benchmark="mcq"),
        multiple_choice_prompt,
        table=_CIRCULAR,
        help="mcq (MMBench, SEED-Bench, ScienceQA, MMMU multiple choice)",
    ),
    Benchmark(
        "synthshapes-mcq",
        scoring.mcq_score,
        partial(scoring.mcq_truth, benchmark="synthshapes-mcq"),
        multiple_choice_prompt,
        table=_CIRCULAR,
        help="synthshapes-mcq",
    ),
    Benchmark(
        "mmvet",
        None,
        judge=JUDGED["mmvet"],
        table=_judged_table,
        primary=JUDGED["mmvet"].primary,
        help="mmvet",
    ),
    Benchmark(
        "llava-bench",
        None,
        judge=JUDGED["llava-bench"],
        table=_judged_table,
        primary=JUDGED["llava-bench"].primary,
        help="llava-bench (in the wild)",
    ),
):
    register_benchmark(_record)
del _record
