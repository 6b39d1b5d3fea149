"""The judge-scored benchmarks, MM-Vet and LLaVA-Bench (in the wild), as lmms-eval 0.7 scores them.

Each benchmark is one :class:`JudgedBenchmark` record: what it needs in the data, the judge's
prompt, the rule that asks the judge and reads its reply, and the metrics. The texts and rules
are those of lmms-eval 0.7's ``tasks/mmvet/utils.py`` and ``tasks/llava-in-the-wild/utils.py``
(with ``rule.json``); the tests send lmms-eval's own ``process_results`` and ours to the same
scripted judge and require identical requests, and compare the metrics with lmms-eval's own
aggregation functions.

``mmvet``
    Data: ``question``, ``answer`` (``<AND>``/``<OR>`` in it are padded with spaces in the
    prompt), the capabilities (``capability`` in lmms-eval's layout, ``category`` in VLMEvalKit's
    ``MMVet.tsv``: ``"rec,ocr"``). The judge completes a few-shot table with a correctness score;
    the reply's text before the first space must parse as a number in [0, 1]. Rule: asked at
    temperature 0 (``max_tokens`` 128); an unparsable reply raises the temperature by 0.5 and asks
    once more, *discarding* that reply, then asks again at the new temperature; at temperature 2
    the sample scores 0. A number outside [0, 1] is asked again at the same temperature
    (lmms-eval repeats this without end; here :data:`MAX_OUT_OF_RANGE` times, then a judge
    error). An empty reply is asked again up to three times in all, then scores 0.
    Metrics (percent): ``score`` (the mean grade) and ``<capability>/score`` for each of
    ``rec ocr know gen spat math`` present (a capability counts when its name is a substring of
    the sample's capability text, as in lmms-eval).
``llava-bench``
    Data: ``question``, the reference answer (``gpt_answer`` in lmms-eval's layout, ``gpt4_ans``
    in VLMEvalKit's ``LLaVABench.tsv``), ``caption`` (the context; a list is joined by newlines),
    ``category`` (``conv``, ``detail``, ``complex``). The judge reviews the reference
    (assistant 1) and the answer (assistant 2) and writes their two scores on its first line
    (``max_tokens`` 1024, temperature 0). The first two numbers of that line, after ``,`` and
    ``;`` become spaces, are the scores; otherwise ``[-1, -1]``, which lmms-eval keeps in the
    means. No retry on an unparsable review. Metrics: ``relative_score`` and
    ``<category>/relative_score``: the two means rounded to 3 decimals, then
    ``round(answer / reference * 100, 1)``.

In ``predictions.jsonl`` each answer's ``score`` is its MM-Vet grade, or its LLaVA-Bench score
(assistant 2's, ``-1`` when the review was unreadable); ``judge`` holds every grading's result.

Where lmms-eval turns a judge it could not reach into a grade of 0 (MM-Vet) or ``[-1, -1]``
(LLaVA-Bench), this project records a judge error on the sample instead, as for a failed target
call, so an outage is never averaged into the score (``--retry-errors`` grades it again).
lmms-eval also sleeps 5 s before its MM-Vet retries; this client backs off only on HTTP 429/5xx.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, TargetError
from .metrics import MetricTable

__all__ = [
    "JudgedBenchmark",
    "JUDGED",
    "MMVET_PROMPT",
    "MMVET_CAPABILITIES",
    "LLAVA_BENCH_RULES",
    "MAX_OUT_OF_RANGE",
    "mmvet_prompt",
    "mmvet_rule",
    "llava_bench_prompt",
    "llava_bench_rule",
    "parse_llava_scores",
    "mmvet_table",
    "llava_bench_table",
    "judge_variation",
]

Ask = Callable[[float], Awaitable[str]]

# ------------------------------------------------------------------------------------------------
# MM-Vet

MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.
gpt_query_prompt | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""
#: MM-Vet's six capabilities, in lmms-eval's order.
MMVET_CAPABILITIES = ("rec", "ocr", "know", "gen", "spat", "math")
MMVET_MAX_TOKENS = 128
#: How often a reply outside [0, 1] is asked again at one temperature before it is a judge error.
MAX_OUT_OF_RANGE = 5
_MMVET_PATIENCE = 3  # calls per temperature while the reply is empty


def mmvet_capabilities(sample: Mapping[str, Any]) -> str:
    """The sample's capability text (``"rec,ocr"``); a list is joined with commas."""
    value = sample.get("capability", sample.get("category"))
    if value is None:
        raise ConfigError(
            "an MM-Vet sample needs its capabilities: a 'capability' (lmms-eval) or "
            "'category' (VLMEvalKit) column such as 'rec,ocr'"
        )
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def mmvet_prompt(sample: Mapping[str, Any], answer: str) -> str:
    """The judge's prompt for one MM-Vet answer.

    >>> mmvet_prompt({"question": "What is 2+3?", "answer": "5<OR>five"}, "It is 5.").splitlines()[-1]
    'What is 2+3? | 5 <OR> five | It is 5. |'
    """
    truth = str(_required(sample, "answer", "MM-Vet"))
    truth = truth.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return f"{MMVET_PROMPT}\n{sample.get('question')} | {truth} | {answer} |"


async def mmvet_rule(ask: Ask) -> float:
    """MM-Vet's grade (see the module docstring for the rule), asking through ``ask``."""
    temperature, out_of_range = 0.0, 0
    while True:
        reply = await _patiently(ask, temperature)
        if not reply:
            return 0.0
        try:
            grade = float(reply.split(" ")[0].strip())
        except ValueError:
            temperature += 0.5
            await _patiently(ask, temperature)  # lmms-eval asks here and discards the reply
            if temperature >= 2:
                return 0.0
            continue
        if 0.0 <= grade <= 1.0:
            return grade
        out_of_range += 1
        if out_of_range >= MAX_OUT_OF_RANGE:
            raise TargetError(
                f"the judge graded outside 0..1 {out_of_range} times ({reply[:40]!r})"
            )


async def _patiently(ask: Ask, temperature: float) -> str:
    """lmms-eval's ``get_chat_response``: an empty reply is asked again, three calls in all."""
    for _ in range(_MMVET_PATIENCE):
        reply = (await ask(temperature)).strip()
        if reply:
            return reply
    return ""


def mmvet_table(
    samples: Sequence[Mapping[str, Any]], grades: Mapping[str, Sequence[float]]
) -> MetricTable:
    """Units are samples: the grade, one, and per capability present the grade and one."""
    texts = [mmvet_capabilities(s) for s in samples]
    present = [cap for cap in MMVET_CAPABILITIES if any(cap in text for text in texts)]
    has = np.array([[cap in text for cap in present] for text in texts], dtype=float).reshape(
        len(samples), len(present)
    )
    units, scores = {}, {}
    for condition, values in grades.items():
        score = np.asarray(values, dtype=float).reshape(len(samples))
        scores[condition] = score
        columns = [score, np.ones(len(samples))]
        for j in range(len(present)):
            columns += [score * has[:, j], has[:, j]]
        units[condition] = np.stack(columns, axis=1)

    def finish(sums):
        values = {"score": sums[..., 0] / sums[..., 1] * 100}
        for j, cap in enumerate(present):
            total, count = sums[..., 2 + 2 * j], sums[..., 3 + 2 * j]
            values[f"{cap}/score"] = np.where(
                count > 0, total / np.where(count > 0, count, 1) * 100, 0.0
            )
        return values

    return MetricTable(units, finish, scores, {})


# ------------------------------------------------------------------------------------------------
# LLaVA-Bench (in the wild)

#: The reviewer's instructions for the three categories: the ``llava_bench_*`` entries of
#: lmms-eval 0.7's ``tasks/llava-in-the-wild/rule.json`` (one text for all three).
LLAVA_BENCH_SYSTEM = (
    "We would like to request your feedback on the performance of two AI assistants in response to the user question displayed above. The user asks the question on observing an image. For your reference, the visual content in the image is represented with a few sentences describing the image. \n"
    "Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates better overall performance.\n"
    "Please first output a single line containing only two values indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a space.\n"
    "In the subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the order in which the responses were presented does not affect your judgment."
)
LLAVA_BENCH_RULES: dict[str, dict[str, str]] = {
    f"llava_bench_{category}": {"role": "Assistant", "prompt": LLAVA_BENCH_SYSTEM}
    for category in ("conv", "detail", "complex")
}
LLAVA_BENCH_MAX_TOKENS = 1024
LLAVA_BENCH_CATEGORIES = ("conv", "detail", "complex")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _reference(sample: Mapping[str, Any]) -> str:
    value = sample.get("gpt_answer", sample.get("gpt4_ans"))
    if value is None:
        raise ConfigError(
            "a LLaVA-Bench sample needs the reference answer: a 'gpt_answer' "
            "(lmms-eval) or 'gpt4_ans' (VLMEvalKit) column"
        )
    return str(value)


def llava_bench_prompt(sample: Mapping[str, Any], answer: str) -> str:
    """The judge's prompt for one LLaVA-Bench answer (the reference is assistant 1).

    >>> text = llava_bench_prompt({"question": "Q?", "gpt_answer": "R.", "caption": "C.", "category": "conv"}, "A.")
    >>> text.split("\\n\\n")[:3]
    ['[Context]\\nC.', '[Question]\\nQ?', '[Assistant 1]\\nR.']
    """
    captions = sample.get("caption", [])
    context = "\n".join(captions) if isinstance(captions, list) else captions
    rule = LLAVA_BENCH_RULES.get("llava_bench_" + str(sample.get("category", "")), {})
    prompt, role = rule.get("prompt", ""), rule.get("role", "user")
    return (
        f"[Context]\n{context}\n\n[Question]\n{sample.get('question', '')}\n\n"
        f"[{role} 1]\n{_reference(sample)}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n[System]\n{prompt}\n\n"
    )


def parse_llava_scores(review: str) -> list[float]:
    """The two scores on the review's first line, or ``[-1, -1]``.

    >>> parse_llava_scores("8 7\\nAssistant 1 ..."), parse_llava_scores("8,7.5"), parse_llava_scores("Eight")
    ([8.0, 7.0], [8.0, 7.5], [-1, -1])
    """
    lines = review.strip().split("\n")
    numbers = _NUMBER.findall(lines[0].replace(",", " ").replace(";", " "))
    return [float(numbers[0]), float(numbers[1])] if len(numbers) >= 2 else [-1, -1]


async def llava_bench_rule(ask: Ask) -> list[float]:
    """One call at temperature 0; the scores ``[reference, answer]``."""
    return parse_llava_scores(await ask(0.0))


def _round(value, digits: int):
    """Python's ``round`` on one number (the point estimate, as lmms-eval), numpy's on arrays."""
    if np.ndim(value) == 0:
        return round(float(value), digits)
    return np.round(value, digits)


def llava_bench_table(
    samples: Sequence[Mapping[str, Any]], grades: Mapping[str, Sequence[Sequence[float]]]
) -> MetricTable:
    """Units are samples: the reference's and the answer's score, one, and the same per category."""
    categories = [str(s.get("category", "")) for s in samples]
    present = list(dict.fromkeys(categories))
    position = {category: j for j, category in enumerate(present)}
    codes = np.array([position[c] for c in categories], dtype=np.int64)
    member = (codes[:, None] == np.arange(len(present))).astype(float)
    units, scores = {}, {}
    for condition, values in grades.items():
        pairs = np.asarray(values, dtype=float).reshape(len(samples), 2)
        scores[condition] = pairs[:, 1]
        columns = [pairs[:, 0], pairs[:, 1], np.ones(len(samples))]
        for j in range(len(present)):
            columns += [pairs[:, 0] * member[:, j], pairs[:, 1] * member[:, j], member[:, j]]
        units[condition] = np.stack(columns, axis=1)

    def relative(reference, answer, count):
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_reference, mean_answer = _round(reference / count, 3), _round(answer / count, 3)
            if np.ndim(mean_reference) == 0 and mean_reference == 0:
                return float("nan")
            return _round(np.divide(mean_answer, mean_reference) * 100, 1)

    def finish(sums):
        values = {"relative_score": relative(sums[..., 0], sums[..., 1], sums[..., 2])}
        for j, category in enumerate(present):
            values[f"{category}/relative_score"] = relative(
                *(sums[..., 3 + 3 * j + i] for i in range(3))
            )
        return values

    return MetricTable(units, finish, scores, {})


# ------------------------------------------------------------------------------------------------
# The records


@dataclass(frozen=True)
class JudgedBenchmark:
    """A judge-scored benchmark: ``check`` (raises ConfigError when a sample lacks what scoring
    needs), ``prompt(sample, answer)``, ``rule(ask)`` (the grade), ``max_tokens`` of the judge's
    reply, ``table(samples, grades)`` (the metrics), ``score(grade)`` (the per-sample score in
    predictions.jsonl) and the ``primary`` metric."""

    name: str
    check: Callable[[Mapping[str, Any]], Any]
    prompt: Callable[[Mapping[str, Any], str], str]
    rule: Callable[[Ask], Awaitable[Any]]
    max_tokens: int
    table: Callable[..., MetricTable]
    score: Callable[[Any], float]
    primary: str


def _required(sample: Mapping[str, Any], name: str, benchmark: str) -> Any:
    value = sample.get(name)
    if value is None:
        raise ConfigError(f"a {benchmark} sample needs the field {name!r} (the ground truth)")
    return value


def _check_mmvet(sample):
    _required(sample, "answer", "MM-Vet")
    mmvet_capabilities(sample)


def _check_llava_bench(sample):
    _reference(sample)
    if sample.get("category") is None:
        raise ConfigError("a LLaVA-Bench sample needs its 'category' (conv, detail or complex)")


JUDGED: dict[str, JudgedBenchmark] = {
    "mmvet": JudgedBenchmark(
        "mmvet",
        _check_mmvet,
        mmvet_prompt,
        mmvet_rule,
        MMVET_MAX_TOKENS,
        mmvet_table,
        float,
        "score",
    ),
    "llava-bench": JudgedBenchmark(
        "llava-bench",
        _check_llava_bench,
        llava_bench_prompt,
        llava_bench_rule,
        LLAVA_BENCH_MAX_TOKENS,
        llava_bench_table,
        lambda scores: float(scores[1]),
        "relative_score",
    ),
}


def judge_variation(
    benchmark: str | JudgedBenchmark,
    samples: Sequence[Mapping[str, Any]],
    grades: Sequence[Mapping[str, Sequence[Any]]],
    baseline: str = "original",
) -> dict[str, Any]:
    """The metrics of each judge repeat (``grades[r][condition][i]``), and per metric and
    condition (and for the difference from ``baseline``) the mean, standard deviation
    (``ddof=1``), min and max over the repeats. ``benchmark``: a record, or a name in :data:`JUDGED`."""
    record = JUDGED[benchmark] if isinstance(benchmark, str) else benchmark
    runs = []
    for repeat in grades:
        table = record.table(samples, repeat)
        points = {c: table.point(c) for c in repeat}
        if baseline in points:
            for condition in [c for c in points if c != baseline]:
                points[f"{condition} - {baseline}"] = {
                    name: points[condition][name] - points[baseline][name]
                    for name in points[baseline]
                }
        runs.append(points)
    spread: dict[str, dict[str, dict[str, float | None]]] = {}
    for key in runs[0] if runs else []:
        spread[key] = {}
        for name in runs[0][key]:
            values = np.array([run[key][name] for run in runs], dtype=float)
            finite = values[np.isfinite(values)]
            spread[key][name] = {
                "mean": float(finite.mean()) if finite.size else None,
                "std": float(finite.std(ddof=1)) if finite.size > 1 else None,
                "min": float(finite.min()) if finite.size else None,
                "max": float(finite.max()) if finite.size else None,
            }
    return {"repeats": len(runs), "per_repeat": runs, "spread": spread}
