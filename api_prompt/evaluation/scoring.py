"""Per-sample scoring as each benchmark's official evaluation does it, benchmark by benchmark.

Long because: one short truth/score pair per official scorer (POPE, MME, VQAv2, TextVQA, GQA,
multiple choice), each next to the official rule it reproduces.

Each benchmark has a *truth* function (the sample's ground truth, read once and checked: a
ConfigError when it is missing) and a *score* function ``(answer, truth) -> float``; its record
in :mod:`~api_prompt.evaluation.benchmarks` names them, and
:func:`~api_prompt.evaluation.benchmarks.score` calls them. Every rule below is the official
scorer's, quirks included, and the tests call the official code itself on the same answers
(``tests/test_official_scorers.py``; versions and quirks in ``docs/scoring.md``):

``pope``
    LLaVA's ``eval_pope.py``: the first sentence (text before the first ``.``), commas dropped,
    split on spaces; *no* when one of the words is exactly ``No``, ``no`` or ``not``, anything
    else (the empty answer included) is *yes*. Labels other than ``no`` are *yes*.
``mme``
    lmms-eval's ``parse_pred_ans``: lower-cased, stripped, full stops removed; ``yes``/``no``
    stand as they are, a single character ``y``/``n`` is yes/no (any other single character is
    *other*); otherwise the first four characters are searched for ``yes``, then ``no``; else
    *other* (always wrong).
``textvqa``
    lmms-eval's TextVQA ``process_results``: the answer and the human answers normalised by
    :func:`~api_prompt.evaluation.normalize.normalize_answer`; for each human answer left out in
    turn, ``min(#other humans who gave the answer / 3, 1)``; the mean of those.
``vqav2``
    lmms-eval's VQAv2 ``process_results``: the same accuracy, but normalised by
    :func:`~api_prompt.evaluation.normalize.normalize_vqav2_answer` (no lower-casing before the
    punctuation rules, commas are punctuation); a human answer given as a dict is left out
    together with every *equal* dict (they differ by ``answer_id`` in the real data).
``gqa``
    lmms-eval's ``exact_match`` as ``gqa.yaml`` configures it: the answer stripped, then answer
    and ground truth lower-cased and without punctuation (:func:`exact_match_text`); no article
    or number-word rules.
``mcq``, ``synthshapes-mcq``
    VLMEvalKit's ``can_infer`` (exact matching, no judge model): punctuation ``.()[],:;!*#{}``
    becomes spaces; a known refusal is ``Z``; when exactly one option letter is a word of the
    answer and its first occurrence is among the last four words, that option; no letter but a
    word ``Z``: ``Z``; otherwise, unless the answer is longer than twice the options' total
    length, the one option text the lower-cased answer contains; else nothing, scored as ``Z``.

>>> from api_prompt.evaluation import score
>>> score("pope", "No, there is not.", {"answer": "no"})
1.0
>>> score("mme", "Yes.", {"answer": "No"})
0.0
>>> score("vqav2", "two", {"answers": ["2"] * 10})
1.0
>>> score("mcq", "The answer is C", {"answer": "C", "A": "red", "B": "blue", "C": "green"})
1.0
"""

from __future__ import annotations

import ast
import json
import math
import string
from collections.abc import Mapping
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ..errors import ConfigError
from .normalize import exact_match_text, normalize_answer, normalize_vqav2_answer

__all__ = [
    "pope_answer",
    "mme_answer",
    "vqa_accuracy",
    "vqa_humans",
    "vqa_score",
    "options_of",
    "choices_of",
    "infer_option",
    "ground_truth_answers",
    "gqa_match",
    "pope_label",
    "pope_score",
    "mme_label",
    "mme_score",
    "textvqa_truth",
    "vqav2_truth",
    "textvqa_score",
    "vqav2_score",
    "gqa_truth",
    "gqa_score",
    "mcq_truth",
    "mcq_score",
    "mcq_pick",
]

_LETTERS = frozenset(string.ascii_uppercase)
_OPTION_PUNCTUATION = str.maketrans({mark: " " for mark in ".()[],:;!*#{}"})
# Answers VLMEvalKit reads as a refusal ("Z", never a right answer).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
# An answer holding this is an API failure to VLMEvalKit: no letter is read from it.
_API_FAILURE = "Failed to obtain answer via API"


def pope_answer(answer: str) -> str:
    """``"yes"`` or ``"no"`` as the POPE evaluation reads ``answer``.

    >>> [pope_answer(a) for a in ["Yes.", "no, there is not", "NO", "There is not a dog.", ""]]
    ['yes', 'no', 'yes', 'no', 'yes']
    """
    text = str(answer)
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def pope_label(sample: Mapping[str, Any]) -> str:
    """The sample's label as POPE reads it: ``no`` is no, anything else is yes."""
    return "no" if str(_required(sample, "answer", "pope")).strip().lower() == "no" else "yes"


def mme_answer(answer: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` as lmms-eval's MME ``parse_pred_ans`` reads ``answer``.

    >>> [mme_answer(a) for a in ["Yes.", "no, there is not", "Not sure", "I think so", "", "N", "y."]]
    ['yes', 'no', 'no', 'other', 'other', 'no', 'yes']
    """
    text = str(answer).lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    if len(text) == 1:
        return {"y": "yes", "n": "no"}.get(text, "other")
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_label(sample: Mapping[str, Any]) -> str:
    """The ground truth of an MME sample, ``yes`` or ``no`` (lower-cased, stripped, no full stops)."""
    truth = str(_required(sample, "answer", "mme")).lower().strip().replace(".", "")
    if truth not in ("yes", "no"):
        raise ConfigError(f"an MME answer is Yes or No, not {sample.get('answer')!r}")
    return truth


def ground_truth_answers(sample: Mapping[str, Any]) -> list[str]:
    """The human answers of a VQA sample as a list of strings.

    ``answers`` may be a list of strings, a list of ``{"answer": ...}`` dicts (VQAv2), or the
    text of a list (VLMEvalKit TSVs store ``"['a', 'b']"`` in ``answer``); a plain string is one
    answer.
    """
    return [
        item
        if type(item) is str
        else str(item.get("answer", ""))
        if isinstance(item, dict)
        else str(item)
        for item in _raw_answers(sample)
    ]


def _raw_answers(sample: Mapping[str, Any]) -> list:
    value = sample.get("answers")
    if value is None:
        value = sample.get("answer")
    if value is None:
        raise ConfigError("a VQA sample needs 'answers' (the human answers) or 'answer'")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                try:
                    value = ast.literal_eval(text)
                except (ValueError, SyntaxError):
                    value = [text]
        else:
            value = [text]
    if hasattr(value, "tolist"):  # numpy / pyarrow arrays
        value = value.tolist()
    return list(value)


def vqa_humans(benchmark: str, sample: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """The normalised human answers of a VQA sample and who each one is.

    Two human answers with the same identity leave each other out together when one is left
    out. For ``vqav2`` a dict answer is identified by its whole content (lmms-eval compares the
    dicts); every other answer is its own.
    """
    if benchmark == "textvqa":
        humans = [normalize_answer(h) for h in ground_truth_answers(sample)]
        return humans, list(range(len(humans)))
    raw = _raw_answers(sample)
    humans = [
        normalize_vqav2_answer(str(item.get("answer", "")) if isinstance(item, dict) else str(item))
        for item in raw
    ]
    identities: list[Any] = list(range(len(raw)))
    dicts = [position for position, item in enumerate(raw) if isinstance(item, dict)]
    if len(dicts) > 1 and not _distinct_ids([raw[position].get("answer_id") for position in dicts]):
        for position in dicts:  # dicts without distinct answer_ids may be equal: compare them whole
            identities[position] = (humans[position], _rest_of(raw[position]))
    return humans, identities


def _distinct_ids(ids: list) -> bool:
    try:
        return None not in ids and len(set(ids)) == len(ids)
    except TypeError:
        return False


def _rest_of(item: dict) -> Any:
    """What, besides the answer, makes an answer dict equal to another (as ``==`` compares dicts)."""
    rest = [(key, value) for key, value in item.items() if key != "answer"]
    try:
        return frozenset(rest)
    except TypeError:  # an unhashable value (a list): compared by its text
        return tuple(sorted((str(key), repr(value)) for key, value in rest))


def vqa_score(prediction: str, humans: list[str], identities: list[Any]) -> float:
    """The VQA accuracy of an already normalised ``prediction`` (see :func:`vqa_humans`).

    The mean is exact, as lmms-eval's ``statistics.mean`` computes it.
    """
    if not humans:
        raise ConfigError("a VQA sample has no human answers")
    matches = humans.count(prediction)
    if len(set(identities)) == len(identities):  # the common case: each human is their own
        return _leave_one_out_mean(len(humans), matches)
    else:
        others = tuple(
            sorted(
                matches
                - sum(1 for h, who in zip(humans, identities) if who == me and h == prediction)
                for me in identities
            )
        )
    return _mean_of_thirds(others)


@lru_cache(maxsize=4096)
def _leave_one_out_mean(n_humans: int, matches: int) -> float:
    """The accuracy when ``matches`` of ``n_humans`` distinct humans gave the prediction."""
    return _mean_of_thirds((matches - 1,) * matches + (matches,) * (n_humans - matches))


@lru_cache(maxsize=4096)
def _mean_of_thirds(others: tuple[int, ...]) -> float:
    """``statistics.mean(min(1, float(n) / 3) for n in others)``, without its cost."""
    total = sum(Fraction(min(1, float(n) / 3)) for n in others)
    return float(total / len(others))


def vqa_accuracy(answer: str, human_answers: list[str], benchmark: str = "textvqa") -> float:
    """The VQA accuracy of ``answer`` against the human answers (see the module docstring).

    >>> vqa_accuracy("Two", ["2", "2", "2", "two", "3", "3", "3", "3", "3", "3"])
    1.0
    >>> round(vqa_accuracy("2", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]), 4)
    0.6
    >>> humans = ["red white"] * 2 + ["redwhite"] * 8
    >>> vqa_accuracy("red,white", humans, benchmark="vqav2"), vqa_accuracy("red,white", humans)
    (0.6, 1.0)
    """
    humans, identities = vqa_humans(benchmark, {"answers": list(human_answers)})
    normalise = normalize_answer if benchmark == "textvqa" else normalize_vqav2_answer
    return vqa_score(normalise(answer), humans, identities)


def gqa_match(answer: str, truth: Any) -> bool:
    """lmms-eval's ``exact_match`` with ``ignore_case`` and ``ignore_punctuation`` (GQA).

    >>> gqa_match(" Table. ", "table"), gqa_match("the table", "table"), gqa_match("Two", "2")
    (True, False, False)
    """
    return exact_match_text(str(answer).strip()) == exact_match_text(str(truth))


def options_of(sample: Mapping[str, Any]) -> dict[str, str]:
    """The options of a multiple-choice sample: columns ``A``..``Z`` that hold a value."""
    options = {}
    for letter in sorted(key for key in sample if len(key) == 1 and key in _LETTERS):
        value = sample[letter]
        if value is None or (isinstance(value, float) and value != value):  # None / NaN
            continue
        text = str(value)
        if text.strip():
            options[letter] = text
    return options


def choices_of(sample: Mapping[str, Any]) -> dict[str, str]:
    """The options as VLMEvalKit's scorer sees them: every column ``A``..``Z`` that is not missing.

    Unlike :func:`options_of`, an empty or blank text is an option here (VLMEvalKit keeps it).
    """
    letters = [key for key in sample if key in _LETTERS]
    letters.sort()
    return {
        letter: value if type(value) is str else str(value)
        for letter in letters
        if not _missing(value := sample[letter])
    }


def _missing(value: Any) -> bool:
    if type(value) is str:
        return False
    if value is None:
        return True
    try:
        return bool(math.isnan(value))
    except (TypeError, ValueError):
        return False


def infer_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The option letter ``answer`` picks by VLMEvalKit's ``can_infer``, ``"Z"`` for a refusal, or None.

    >>> options = {"A": "red", "B": "blue", "C": "green"}
    >>> [infer_option(a, options) for a in ["(B) red", "The answer is C", "green.", "A or B", ""]]
    ['B', 'C', 'C', None, None]
    >>> infer_option("C is the answer, as the picture clearly shows", options)  # C too early
    """
    text = str(answer)
    return _option_letter(text, options) or _option_text(text, options)


def _option_letter(text: str, options: Mapping[str, str]) -> str | None:
    if text in options:  # the common answer, just the letter (what the rules below give it)
        return text
    if _API_FAILURE in text:
        return None
    if any(refusal in text for refusal in _REFUSALS):
        return "Z"
    words = text.translate(_OPTION_PUNCTUATION).split()
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        # only when the letter's first occurrence is among the last four words
        return letters[0] if words.index(letters[0]) > len(words) - 5 else None
    if not letters and "Z" in words:
        return "Z"
    return None


def _option_text(text: str, options: Mapping[str, str]) -> str | None:
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(str(option)) for option in options.values()):
        return None
    found = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return found[0] if len(found) == 1 else None


def mcq_pick(answer: str, options: Mapping[str, str]) -> str:
    """The option VLMEvalKit's exact matching scores: :func:`infer_option`, or ``Z`` when none."""
    return infer_option(answer, options) or "Z"


# ------------------------------------------------------------------------------------------------
# Truth and score per benchmark: ``truth(sample)`` once per sample, ``score(answer, truth)``


def pope_score(answer: str, label: str) -> float:
    """1.0 when POPE reads ``answer`` as ``label`` (:func:`pope_label`)."""
    return float(pope_answer(answer) == label)


def mme_score(answer: str, label: str) -> float:
    """1.0 when MME reads ``answer`` as ``label`` (:func:`mme_label`)."""
    return float(mme_answer(answer) == label)


def textvqa_truth(sample: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """The normalised human answers of a TextVQA sample (see :func:`vqa_humans`)."""
    return vqa_humans("textvqa", sample)


def vqav2_truth(sample: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """The normalised human answers of a VQAv2 sample (see :func:`vqa_humans`)."""
    return vqa_humans("vqav2", sample)


def textvqa_score(answer: str, humans: tuple[list[str], list[Any]]) -> float:
    """TextVQA's accuracy of ``answer`` against :func:`textvqa_truth`."""
    return vqa_score(normalize_answer(answer), *humans)


def vqav2_score(answer: str, humans: tuple[list[str], list[Any]]) -> float:
    """VQAv2's accuracy of ``answer`` against :func:`vqav2_truth`."""
    return vqa_score(normalize_vqav2_answer(answer), *humans)


def gqa_truth(sample: Mapping[str, Any]) -> Any:
    """The ground truth of a GQA sample."""
    return _required(sample, "answer", "gqa")


def gqa_score(answer: str, truth: Any) -> float:
    """1.0 when :func:`gqa_match` holds."""
    return float(gqa_match(answer, truth))


def mcq_truth(
    sample: Mapping[str, Any], benchmark: str = "mcq"
) -> tuple[tuple[tuple[str, str], ...], str]:
    """``(options as VLMEvalKit sees them, the right letter)`` of a multiple-choice sample."""
    truth = str(_required(sample, "answer", benchmark)).strip()
    options = choices_of(sample)
    if not options_of(sample):
        raise ConfigError("a multiple-choice sample needs option columns A, B, ...")
    return tuple(options.items()), truth


def mcq_score(answer: str, truth: tuple[tuple[tuple[str, str], ...], str]) -> float:
    """1.0 when VLMEvalKit's exact matching picks the right option (:func:`mcq_truth`)."""
    options, letter = truth
    return float(_cached_pick(answer, options) == letter)


@lru_cache(maxsize=65536)
def _cached_pick(answer: str, options: tuple[tuple[str, str], ...]) -> str:
    # answers repeat (letters), and so do option lists
    return mcq_pick(answer, dict(options))


def _required(sample: Mapping[str, Any], field: str, benchmark: str) -> Any:
    value = sample.get(field)
    if value is None:
        raise ConfigError(f"a {benchmark} sample needs the field {field!r} (the ground truth)")
    return value
