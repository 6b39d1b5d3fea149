"""Per-sample scoring as each benchmark's official evaluation does it: ``score(benchmark, answer, sample)``.

Every rule below was re-derived from the benchmark's own evaluation script:

``pope``
    The POPE evaluation keeps the first sentence (text before the first ``.``), drops commas,
    splits on spaces, and reads *no* when one of the words is exactly ``No``, ``no`` or ``not``;
    anything else, the empty answer included, is *yes*. Labels other than ``no`` are *yes*.
``mme``
    MME's ``calculation.py`` lower-cases the answer; ``yes``/``no`` stand as they are, otherwise
    the first four characters are searched for ``yes``, then ``no``; anything else is *other*
    (always wrong).
``textvqa``, ``vqav2``
    The VQA accuracy: both the answer and the (usually ten) human answers are normalised
    (:func:`~api_prompt.evaluation.normalize.normalize_answer`); for each human answer left out
    in turn, ``min(#other humans who gave the answer / 3, 1)``; the mean of those.
``gqa``
    Exact match of the normalised answer with the normalised ground truth.
``mcq``, ``synthshapes-mcq``
    VLMEvalKit's rule-based option extraction (no judge model): punctuation ``.()[],:;!*#{}``
    becomes spaces; when exactly one option letter is a word of the answer, that option; else
    (no letter but a word ``Z``, or a known refusal: the refusal ``Z``), when exactly one option
    text occurs in the lower-cased answer, that option; else none (scored wrong, where
    VLMEvalKit would go on to ask a judge model).

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
import string
from typing import Any, Mapping

from ..errors import ConfigError
from .normalize import normalize_answer

__all__ = [
    "BENCHMARKS", "score", "pope_answer", "mme_answer", "vqa_accuracy", "vqa_accuracy_normalised",
    "options_of",
    "infer_option", "ground_truth_answers",
]

BENCHMARKS = ("pope", "mme", "textvqa", "vqav2", "gqa", "mcq", "synthshapes-mcq")

_LETTERS = frozenset(string.ascii_uppercase)
_OPTION_PUNCTUATION = str.maketrans({mark: " " for mark in ".()[],:;!*#{}"})
# Answers VLMEvalKit reads as a refusal ("Z", never a right answer).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.", "I can't process this file.",
    "I'm sorry, but without the image provided", "Cannot determine the answer",
)


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
    """``"yes"``, ``"no"`` or ``"other"`` as MME's calculation reads ``answer``.

    >>> [mme_answer(a) for a in ["Yes.", "no, there is not", "Not sure", "I think so", ""]]
    ['yes', 'no', 'no', 'other', 'other']
    """
    text = str(answer).lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def ground_truth_answers(sample: Mapping[str, Any]) -> list[str]:
    """The human answers of a VQA sample as a list of strings.

    ``answers`` may be a list of strings, a list of ``{"answer": ...}`` dicts (VQAv2), or the
    text of a list (VLMEvalKit TSVs store ``"['a', 'b']"`` in ``answer``); a plain string is one
    answer.
    """
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
    return [item if type(item) is str else str(item.get("answer", "")) if isinstance(item, dict)
            else str(item) for item in value]


def vqa_accuracy(answer: str, human_answers: list[str]) -> float:
    """The VQA accuracy of ``answer`` against the human answers (see the module docstring).

    With a single human answer it is exact match after normalisation.

    >>> vqa_accuracy("Two", ["2", "2", "2", "two", "3", "3", "3", "3", "3", "3"])
    1.0
    >>> round(vqa_accuracy("2", ["2", "2", "3", "3", "3", "3", "3", "3", "3", "3"]), 4)
    0.6
    """
    return vqa_accuracy_normalised(normalize_answer(answer), [normalize_answer(h) for h in human_answers])


def vqa_accuracy_normalised(prediction: str, humans: list[str]) -> float:
    """:func:`vqa_accuracy` on answers that are already normalised."""
    if not humans:
        raise ConfigError("a VQA sample has no human answers")
    if len(humans) == 1:
        return float(prediction == humans[0])
    matches = humans.count(prediction)
    # leaving out a human who gave the prediction leaves matches - 1 others; anyone else, matches
    left_out_match = matches * min(1.0, (matches - 1) / 3.0)
    left_out_other = (len(humans) - matches) * min(1.0, matches / 3.0)
    return (left_out_match + left_out_other) / len(humans)


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


def infer_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The option letter ``answer`` picks by VLMEvalKit's rules, ``"Z"`` for a refusal, or None.

    >>> options = {"A": "red", "B": "blue", "C": "green"}
    >>> [infer_option(a, options) for a in ["(B) red", "The answer is C", "green.", "A or B", ""]]
    ['B', 'C', 'C', None, None]
    """
    text = str(answer)
    words = text.translate(_OPTION_PUNCTUATION).split()
    if len(words) == 1 and words[0] in options:   # the common answer: just a letter
        return words[0]
    if any(refusal in text for refusal in _REFUSALS):
        return "Z"
    letters = [letter for letter in options if letter in words]
    if len(letters) == 1:
        return letters[0]
    if not letters and "Z" in words:
        return "Z"
    lowered = text.lower()
    found = [letter for letter, option in options.items() if str(option).lower() in lowered]
    return found[0] if len(found) == 1 else None


def score(benchmark: str, answer: str | None, sample: Mapping[str, Any]) -> float:
    """The official score of one ``answer`` to one ``sample`` of ``benchmark``.

    ``sample`` is a row of the benchmark's data (a dict): ``answer`` holds the ground truth
    (``answers`` the human answers for VQA; option columns ``A``, ``B``, ... for multiple
    choice). The score is 0 or 1, except for ``textvqa``/``vqav2`` (multiples of 0.1).
    """
    answer = "" if answer is None else str(answer)
    if benchmark == "pope":
        return float(pope_answer(answer) == pope_label(sample))
    if benchmark == "mme":
        truth = str(_required(sample, "answer", benchmark)).strip().lower()
        return float(mme_answer(answer) == truth)
    if benchmark in ("textvqa", "vqav2"):
        return vqa_accuracy(answer, ground_truth_answers(sample))
    if benchmark == "gqa":
        truth = str(_required(sample, "answer", benchmark))
        return float(normalize_answer(answer) == normalize_answer(truth))
    if benchmark in ("mcq", "synthshapes-mcq"):
        truth = str(_required(sample, "answer", benchmark)).strip()
        options = options_of(sample)
        if not options:
            raise ConfigError("a multiple-choice sample needs option columns A, B, ...")
        return float(infer_option(answer, options) == truth)
    raise ConfigError(f"unknown benchmark {benchmark!r}; choose one of: {', '.join(BENCHMARKS)}")


def _required(sample: Mapping[str, Any], field: str, benchmark: str) -> Any:
    value = sample.get(field)
    if value is None:
        raise ConfigError(f"a {benchmark} sample needs the field {field!r} (the ground truth)")
    return value
