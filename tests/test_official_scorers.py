"""Every scorer equals the official scoring code, called here on the same answers.

The oracles are the official functions themselves, installed from the package registry (see
``tests/official_code.py``): lmms-eval 0.7 for MME, TextVQA, VQAv2 and GQA; VLMEvalKit
(``ms-vlmeval``) for multiple choice and MMBench's circular evaluation; LLaVA's ``eval_pope.py``
(``llava-torch``) for POPE. For each benchmark: a hand-picked list of adversarial answers, and a
property test that draws at least 5,000 answers from a grammar of near misses (case, punctuation,
articles, number words, option letters in every position, "the answer is X", refusals, long
sentences, empty and odd characters). Metrics are compared with the official aggregation.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import random
import re
import string
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_prompt.evaluation import score
from api_prompt.evaluation.benchmarks import build_table
from api_prompt.evaluation.scoring import choices_of, mcq_pick, mme_answer, pope_answer
from official_code import llava_eval_pope, lmms_eval_module, vlmevalkit

#: Each property test: 200 examples of 25 to 40 answers each, so at least 5,000 answers.
EXAMPLES, PER_EXAMPLE = 200, (25, 40)
MIN_ANSWERS = EXAMPLES * PER_EXAMPLE[0]
PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the grammar of near misses ------------------------------------------------------------------
# Hypothesis draws one random generator per example (``st.randoms``), and the grammar below builds
# the example's answers from it: drawing each word through hypothesis cost about 15 ms an answer
# here, this costs microseconds. A failure names the answer itself.

CASES = (str, str.lower, str.upper, str.title, str.capitalize, str.swapcase)
MARKS = (
    "",
    "",
    "",
    "",
    ".",
    ",",
    "!",
    "?",
    "...",
    ":",
    ";",
    "(",
    ")",
    "[",
    "]",
    "*",
    "**",
    "#",
    "'",
    '"',
    "-",
    "/",
    "'s",
    "\n",
    "\t",
    " ",
    "  ",
)
ARTICLES = ("a", "an", "the", "A", "The")
NUMBERS = (
    "0",
    "1",
    "2",
    "3",
    "10",
    "11",
    "2.5",
    "1,000",
    "none",
    "zero",
    "one",
    "two",
    "three",
    "ten",
    "eleven",
    "Two",
    "2.0",
)
FILLER = (
    "I",
    "think",
    "it",
    "is",
    "there",
    "picture",
    "image",
    "in",
    "of",
    "clearly",
    "shows",
    "because",
    "answer",
    "option",
    "correct",
    "not",
    "no",
    "yes",
    "so",
    "and",
    "or",
    "maybe",
    "Z",
)
TEMPLATES = (
    "{}",
    "The answer is {}",
    "The answer is {}.",
    "Answer: {}",
    "answer is {}",
    "{}.",
    "({})",
    "I think {}",
    "{}, because the image shows it",
    "It is {} and not something else",
    "**{}**",
    "{}\n\nExplanation: the picture shows it clearly",
    "Based on the image, the answer is {}.",
)
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
    "I cannot answer that.",
    "Failed to obtain answer via API.",
    "I don't know",
)
ODD = (
    "",
    " ",
    "\n",
    ".",
    "İ",
    "İstanbul",
    "ß",
    "a\x00",
    "\x00",
    "\u00a0yes",
    "ｙｅｓ",
    "n't",
    "Y",
    "N",
)
LETTER_FORMS = ("{}", "({})", "{}.", "{})", "[{}]", "**{}**", "{}:", "Option {}", "{},")
RANDOM_TEXT = "abcnoyesABCDYNZ .,!?'-()\n\t0123456789" + "İßé中\u00a0\x00"


def decorated(rng, word: str) -> str:
    """A word with a case change and marks before and after it."""
    return rng.choice(MARKS) + rng.choice(CASES)(word) + rng.choice(MARKS)


def token(rng, core) -> str:
    pick = rng.random()
    if pick < 0.5:
        return rng.choice(core)
    if pick < 0.85:
        return rng.choice(FILLER + ARTICLES + NUMBERS)
    return "".join(rng.choice(RANDOM_TEXT) for _ in range(rng.randrange(7)))


def near_miss(rng, core) -> str:
    """One answer around the words in ``core`` (see the module docstring)."""
    kind = rng.randrange(7)
    if kind <= 1:
        return decorated(rng, rng.choice(core))
    if kind == 2:
        phrase = " ".join(decorated(rng, token(rng, core)) for _ in range(rng.randint(1, 6)))
        return rng.choice(TEMPLATES).format(phrase)
    if kind == 3:
        return f"{rng.choice(ARTICLES + NUMBERS)} {rng.choice(core)}"
    if kind == 4:  # long sentences
        return " ".join(decorated(rng, token(rng, core)) for _ in range(rng.randint(10, 40)))
    if kind == 5:
        return rng.choice(REFUSALS + ODD)
    return "".join(rng.choice(RANDOM_TEXT) for _ in range(rng.randrange(13)))


def letter_in_position(rng, letters) -> str:
    """An option letter, in one of its forms, at any position of a sentence."""
    words = [rng.choice(FILLER) for _ in range(rng.randrange(10))]
    words.insert(rng.randint(0, len(words)), rng.choice(LETTER_FORMS).format(rng.choice(letters)))
    return " ".join(words)


def batch_size(rng) -> int:
    return rng.randint(*PER_EXAMPLE)


def run_property(check):
    """Run a hypothesis test; it appends the answers it checked to a list; return how many."""
    seen: list[str] = []
    PROPERTY(given(st.randoms(use_true_random=True))(lambda rng: check(rng, seen)))()
    assert len(seen) >= MIN_ANSWERS
    return len(seen)


YES_NO = (
    "yes",
    "no",
    "Yes",
    "No",
    "not",
    "Not",
    "NO",
    "none",
    "nothing",
    "nope",
    "y",
    "n",
    "Y",
    "N",
)

# -- POPE: LLaVA's eval_pope.py ------------------------------------------------------------------


def official_pope(answers: list[str], labels: list[str]) -> tuple[list[str], dict[str, float]]:
    """LLaVA's ``eval_pope``: each answer as it reads it, and the metrics it prints."""
    eval_pope = llava_eval_pope().eval_pope
    with tempfile.TemporaryDirectory() as folder:
        label_file = Path(folder) / "labels.jsonl"
        label_file.write_text("".join(json.dumps({"label": label}) + "\n" for label in labels))
        records = [{"text": answer} for answer in answers]
        printed = io.StringIO()
        metrics: dict[str, float] = {}
        try:
            with contextlib.redirect_stdout(printed):
                eval_pope(records, str(label_file))
        except ZeroDivisionError:  # no "yes" said, or no "yes" label: LLaVA's script stops
            metrics = {}
        else:
            for name, key in [
                ("Accuracy", "accuracy"),
                ("Precision", "precision"),
                ("Recall", "recall"),
                ("F1 score", "f1"),
                ("Yes ratio", "yes_ratio"),
            ]:
                metrics[key] = float(
                    re.search(rf"^{name}: (.*)$", printed.getvalue(), re.M).group(1)
                )
    return [record["text"] for record in records], metrics


POPE_ADVERSARIAL = [
    "Yes",
    "No",
    "no",
    "NO",
    "No.",
    "Not",
    "not",
    "nope",
    "No, there is not.",
    "Yes. There is no cat.",
    "There is not a dog.",
    "There isn't a dog.",
    "no,",
    "No!",
    "Yes, no doubt",
    "",
    " ",
    "\nNo",
    "no\n",
    "NO.",
    "I do not know",
    "not sure",
    "Nothing",
    "no-one",
    "Yes.No",
    ".No",
    "No\tthere",
    "n",
    "y",
]


def test_pope_adversarial_answers_read_as_llava_reads_them():
    labels = ["yes", "no"] * (len(POPE_ADVERSARIAL) // 2 + 1)
    labels = labels[: len(POPE_ADVERSARIAL)]
    parsed, metrics = official_pope(POPE_ADVERSARIAL, labels)
    assert [pope_answer(answer) for answer in POPE_ADVERSARIAL] == parsed
    ours = build_table(
        "pope", [{"answer": label} for label in labels], {"original": POPE_ADVERSARIAL}
    ).point("original")
    assert {key: ours[key] for key in metrics} == metrics


@pytest.mark.slow
def test_pope_property():
    def check(rng, seen):
        answers = [near_miss(rng, YES_NO) for _ in range(batch_size(rng))]
        labels = [rng.choice(["yes", "no"]) for _ in answers]
        parsed, metrics = official_pope(answers, labels)
        assert [pope_answer(answer) for answer in answers] == parsed
        ours = build_table(
            "pope", [{"answer": label} for label in labels], {"original": answers}
        ).point("original")
        if metrics:
            assert {key: ours[key] for key in metrics} == metrics
        else:  # LLaVA's script divides by zero where a ratio is 0/0: here it is NaN
            assert math.isnan(ours["f1"])
        seen.extend(answers)

    run_property(check)


# -- MME: lmms-eval tasks/mme/utils.py -----------------------------------------------------------

MME_ADVERSARIAL = [
    "Yes",
    "yes",
    "YES",
    "Y",
    "y",
    "y.",
    "n",
    "N",
    "N.",
    "no",
    "No.",
    " no ",
    "Yes.",
    "...yes",
    "Not really",
    "None",
    "Nope",
    "I think so",
    "The answer is yes",
    "",
    " ",
    ".",
    "x",
    "1",
    "yes, it is",
    "noo",
    "Yeah",
    "ano",
    "n o",
    "no\n",
    "\nYes",
    "Y.E.S",
    "y e s",
    "ye s",
]


def test_mme_adversarial_answers_parse_as_lmms_eval_parses_them():
    parse_pred_ans = lmms_eval_module("tasks.mme.utils").parse_pred_ans
    assert [mme_answer(answer) for answer in MME_ADVERSARIAL] == [
        parse_pred_ans(a) for a in MME_ADVERSARIAL
    ]


def official_mme(docs, answers):
    """lmms-eval's process_results for each doc, then its aggregation per key and per category."""
    mme = lmms_eval_module("tasks.mme.utils")
    results = defaultdict(list)
    for doc, answer in zip(docs, answers):
        for key, value in mme.mme_process_results(dict(doc), [answer]).items():
            results[key].append(value)
    totals = {
        key.split("_")[1]: mme.mme_aggregate_results(values) for key, values in results.items()
    }
    by_category = defaultdict(list)
    for values in results.values():
        for value in values:
            by_category[value["category"]].append(value)
    categories = {
        category: mme.mme_aggregate_results(values) for category, values in by_category.items()
    }
    scores = [mme.mme_process_results(dict(doc), [answer]) for doc, answer in zip(docs, answers)]
    return totals, categories, [next(iter(s.values()))["score"] for s in scores]


def mme_docs(categories_and_images):
    docs = []
    for category, image in categories_and_images:
        for truth in ("Yes", "No"):
            docs.append(
                {
                    "question_id": f"{category}/{image}.png",
                    "category": category,
                    "answer": truth,
                    "question": "Is there a dog? Please answer yes or no.",
                }
            )
    return docs


def assert_mme_equal(docs, answers):
    totals, categories, scores = official_mme(docs, answers)
    samples = [
        {"image_path": doc["question_id"], "category": doc["category"], "answer": doc["answer"]}
        for doc in docs
    ]
    assert [score("mme", answer, sample) for answer, sample in zip(answers, samples)] == scores
    ours = build_table("mme", samples, {"original": answers}).point("original")
    for category, total in categories.items():
        assert ours[f"{category}/acc"] + ours[f"{category}/acc_plus"] == pytest.approx(
            total, abs=1e-9
        )
    for key, total in totals.items():
        assert ours[key] == pytest.approx(total, abs=1e-9)
    assert set(totals) == {key for key in ("perception", "cognition") if key in ours}


def test_mme_adversarial_scores_and_totals_equal_lmms_eval():
    # the case: single letters and capitals moved perception far from the official total
    pairs = [
        (category, image)
        for category in ("existence", "count", "OCR", "code_reasoning", "artwork")
        for image in range(3)
    ]
    docs = mme_docs(pairs)
    answers = [MME_ADVERSARIAL[i % len(MME_ADVERSARIAL)] for i in range(len(docs))]
    assert_mme_equal(docs, answers)
    # a category lmms-eval does not list counts as cognition there, and here
    assert_mme_equal(mme_docs([("landmark", 0), ("my_category", 0)]), ["Yes", "n", "Y", "no"])


@pytest.mark.slow
def test_mme_property():
    categories = ["existence", "count", "OCR", "code_reasoning", "text_translation", "celebrity"]
    images = [(category, image) for category in categories for image in range(5)]

    def check(rng, seen):
        docs = mme_docs(rng.sample(images, rng.randint(13, 20)))
        answers = [near_miss(rng, YES_NO) for _ in docs]
        parse_pred_ans = lmms_eval_module("tasks.mme.utils").parse_pred_ans
        assert [mme_answer(answer) for answer in answers] == [
            parse_pred_ans(answer) for answer in answers
        ]
        assert_mme_equal(docs, answers)
        seen.extend(answers)

    run_property(check)


# -- TextVQA and VQAv2: lmms-eval's process_results ----------------------------------------------

VQA_CORE = (
    "2",
    "two",
    "Two",
    "red",
    "red white",
    "red,white",
    "redwhite",
    "dog",
    "dog's",
    "dogs",
    "a dog",
    "the dog",
    "yes",
    "no",
    "don't",
    "dont",
    "1,000",
    "1000",
    "3.5",
    "black-and-white",
    "black and white",
    "t-shirt",
    "N/A",
    "none",
    "0",
    "it's",
    "its",
    "Dog's?",
    "10",
    "ten",
)
VQA_ADVERSARIAL = [
    "Two",
    "two.",
    "2",
    "a dog",
    "The dog's bone?",
    "dont",
    "yes.",
    "3.5",
    "black-and-white",
    "1,000",
    "  an apple\n",
    "red,white",
    "red, white",
    "Red/White",
    "N/A",
    "#1",
    "(a)",
    "dog's",
    "dogs'",
    "it's",
    "Its",
    "$5",
    "5$",
    "none",
    "None of them",
    "",
    " ",
    "\t\n",
    "Yes, it is",
    "t-shirt",
    "T shirt",
    "x=y",
    "e.g. dog",
    "1.5.2",
    "version 1.0.",
    "...",
]


def vqa_doc(benchmark, humans, ids=True):
    if benchmark == "textvqa":
        return {"question_id": 1, "answers": list(humans)}
    answers = [{"answer": h, **({"answer_id": i + 1} if ids else {})} for i, h in enumerate(humans)]
    return {"question_id": 1, "answers": answers}


def official_vqa(benchmark, doc, answer):
    if benchmark == "textvqa":
        process = lmms_eval_module("tasks.textvqa.utils").textvqa_process_results
    else:
        process = lmms_eval_module("tasks.vqav2.utils").vqav2_process_results
    return process(copy.deepcopy(doc), [answer])["exact_match"]  # process_results edits the doc


@pytest.mark.parametrize("benchmark", ["textvqa", "vqav2"])
def test_vqa_adversarial_answers_score_as_lmms_eval_scores_them(benchmark):
    human_sets = [
        ["2"] * 3 + ["two"] * 7,
        ["red white"] * 2 + ["redwhite"] * 8,
        ["dog"] + ["dog's"] * 9,
        ["black and white"] * 10,
        ["1000", "1,000", "N/A", "n/a"] * 2 + ["none", "0"],
        ["dog"],
    ]
    for humans in human_sets:
        for ids in (True, False):
            doc = vqa_doc(benchmark, humans, ids)
            for answer in VQA_ADVERSARIAL + humans:
                assert score(benchmark, answer, doc) == official_vqa(benchmark, doc, answer), (
                    humans,
                    answer,
                )


@pytest.mark.slow
@pytest.mark.parametrize("benchmark", ["textvqa", "vqav2"])
def test_vqa_property(benchmark):
    mean = lmms_eval_module("api.metrics").mean

    def human(rng):
        word = rng.choice(VQA_CORE)
        return decorated(rng, word) if rng.random() < 0.3 else word

    def check(rng, seen):
        answers = [near_miss(rng, VQA_CORE) for _ in range(batch_size(rng))]
        docs = [
            vqa_doc(benchmark, [human(rng) for _ in range(rng.randint(1, 10))], rng.random() < 0.7)
            for _ in answers
        ]
        official = [official_vqa(benchmark, doc, answer) for doc, answer in zip(docs, answers)]
        assert [score(benchmark, answer, doc) for answer, doc in zip(answers, docs)] == official
        table = build_table(benchmark, docs, {"original": answers})
        assert table.point("original")["vqa_accuracy"] == pytest.approx(
            mean(official), rel=1e-12, abs=1e-15
        )
        seen.extend(answers)

    run_property(check)


# -- GQA: lmms-eval's exact_match as gqa.yaml configures it --------------------------------------


@pytest.fixture(scope="module")
def gqa_task(tmp_path_factory):
    """A task with gqa.yaml's metric_list, run by lmms-eval's own ConfigurableTask.process_results
    (which strips the answer, then calls exact_match with the yaml's options); the data is local."""
    datasets = pytest.importorskip("datasets")
    import yaml

    tasks = lmms_eval_module("tasks")
    loader = type("FunctionTagLoader", (yaml.SafeLoader,), {})
    loader.add_constructor("!function", lambda self, node: self.construct_scalar(node))
    gqa_yaml = Path(tasks.__file__).parent / "gqa" / "gqa.yaml"
    gqa = yaml.load(gqa_yaml.read_text(), Loader=loader)
    folder = tmp_path_factory.mktemp("gqa")
    data = datasets.Dataset.from_dict({"question": ["Is it a table?"], "answer": ["table"]})
    datasets.DatasetDict({"testdev": data}).save_to_disk(str(folder / "data"))
    config = {
        "task": "gqa_api_prompt_oracle",
        "dataset_path": str(folder / "data"),
        "dataset_kwargs": {"load_from_disk": True},
        "test_split": "testdev",
        "output_type": gqa["output_type"],
        "doc_to_text": "question",
        "doc_to_target": gqa["doc_to_target"],
        "metric_list": gqa["metric_list"],
    }
    (folder / "tasks").mkdir()
    (folder / "tasks" / "gqa_oracle.yaml").write_text(yaml.safe_dump(config))
    manager = tasks.TaskManager(include_path=str(folder / "tasks"), include_defaults=False)
    task = tasks.get_task_dict(["gqa_api_prompt_oracle"], manager)["gqa_api_prompt_oracle"]
    assert gqa["metric_list"][0]["ignore_case"] and gqa["metric_list"][0]["ignore_punctuation"]
    return task


GQA_CORE = (
    "yes",
    "no",
    "left",
    "right",
    "table",
    "the table",
    "a dog",
    "dog",
    "two",
    "2",
    "t-shirt",
    "tshirt",
    "black and white",
    "İstanbul",
    "man's",
    "mans",
    "wood",
    "wooden",
)
GQA_ADVERSARIAL = [
    "table",
    "Table",
    "TABLE.",
    " table ",
    "the table",
    "a table",
    "tables",
    "Two",
    "2",
    "t-shirt",
    "T-Shirt",
    "tshirt",
    "t shirt",
    "İstanbul",
    "istanbul",
    "man's",
    "mans",
    "",
    " ",
    "\ntable\t",
    "table\x00",
    "ta.ble",
    "table!!!",
    "(table)",
    "yes",
    "Yes.",
    "no",
    "left",
    "Left side",
    "black-and-white",
    "black and white",
    "black & white",
]


def test_gqa_adversarial_answers_match_as_lmms_eval_matches_them(gqa_task):
    for truth in GQA_CORE:
        for answer in GQA_ADVERSARIAL:
            doc = {"question": "q", "answer": truth}
            official = gqa_task.process_results(doc, [answer])["exact_match"]
            assert score("gqa", answer, doc) == official, (truth, answer)


@pytest.mark.slow
def test_gqa_property(gqa_task):
    mean = lmms_eval_module("api.metrics").mean

    def check(rng, seen):
        answers = [near_miss(rng, GQA_CORE) for _ in range(batch_size(rng))]
        truths = [rng.choice(GQA_CORE) for _ in answers]
        docs = [
            {"question": "q", "answer": decorated(rng, t) if rng.random() < 0.3 else t}
            for t in truths
        ]
        official = [
            gqa_task.process_results(doc, [answer])["exact_match"]
            for doc, answer in zip(docs, answers)
        ]
        assert [score("gqa", answer, doc) for answer, doc in zip(answers, docs)] == official
        table = build_table("gqa", docs, {"original": answers})
        assert table.point("original")["accuracy"] == pytest.approx(
            mean(official), rel=1e-12, abs=1e-15
        )
        seen.extend(answers)

    run_property(check)


# -- multiple choice: VLMEvalKit's can_infer and its circular evaluation -------------------------

OPTION_TEXTS = (
    "red",
    "dark red",
    "blue",
    "green",
    "yellow",
    "a cat",
    "cat",
    "two",
    "2",
    3,
    "none of the above",
    "The left one",
    "A",
    "yes",
    "no",
    "B",
)
MCQ_OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
MCQ_ADVERSARIAL = [
    "A",
    "B",
    "C",
    "D",
    "E",
    "Z",
    "a",
    "(B) red",
    "B. blue",
    "The answer is C",
    "The answer is C.",
    "Answer: D",
    "C is the answer because the picture clearly shows it",
    "A or B",
    "A and then B",
    "I think it is A",
    "A, because it is red and bright",
    "It is not A; it is B",
    "green",
    "Green.",
    "It is green or blue",
    "dark green",
    "the red one",
    "",
    " ",
    "Cannot determine the answer",
    "Sorry, I can't help with images of people yet.",
    "Failed to obtain answer via API. C",
    "**B**",
    "[C]",
    "Option D",
    "A cat is on the mat, which is red",
    "None of them",
    "Z is right",
    "The correct option is (A) red, which matches the color of the car in the middle of the picture.",
    "red " * 20,
    "B\nExplanation: blue.",
    "I'm sorry, but without the image provided I cannot say. A",
    "E. none",
    "b",
    "A.B",
    "(A)(B)",
    "ABCD",
]


def vlmevalkit_pick(answer, sample):
    """The option VLMEvalKit's exact matching (no judge) picks, as ``extract_answer_from_item`` does."""
    vlmevalkit()
    from vlmeval.dataset.utils.multiple_choice import extract_answer_from_item

    return extract_answer_from_item(None, {**sample, "prediction": answer})["opt"]


def test_mcq_adversarial_answers_pick_what_vlmevalkit_picks(monkeypatch):
    monkeypatch.delenv("VERBOSE", raising=False)
    vlmevalkit()
    from vlmeval.utils.matching_util import can_infer

    sample = {"question": "Which color is the car?", "answer": "C", **MCQ_OPTIONS}
    for answer in MCQ_ADVERSARIAL:
        options = choices_of(sample)
        assert (mcq_pick(answer, options) or "Z") == (
            can_infer(answer, dict(MCQ_OPTIONS)) or "Z"
        ), answer
        assert mcq_pick(answer, options) == vlmevalkit_pick(answer, sample), answer
        assert score("mcq", answer, sample) == float(vlmevalkit_pick(answer, sample) == "C")


def mcq_sample(rng):
    n = rng.randint(2, 5)
    options = dict(zip(string.ascii_uppercase, [rng.choice(OPTION_TEXTS) for _ in range(n)]))
    if n < 5 and rng.random() < 0.5:
        options[string.ascii_uppercase[n]] = float("nan")  # an empty column read by pandas
    return {"question": "Which one?", "answer": rng.choice(string.ascii_uppercase[:n]), **options}


def mcq_answer(rng, sample):
    letters = string.ascii_uppercase[:6]
    texts = tuple(str(value) for key, value in sample.items() if len(key) == 1 and value == value)
    kind = rng.randrange(3)
    if kind == 0:
        return letter_in_position(rng, letters)
    if kind == 1:
        return near_miss(rng, tuple(letters) + texts)
    return rng.choice(TEMPLATES).format(rng.choice(texts))


@pytest.mark.slow
def test_mcq_property(monkeypatch):
    monkeypatch.delenv("VERBOSE", raising=False)

    def check(rng, seen):
        samples = [mcq_sample(rng) for _ in range(batch_size(rng))]
        pairs = [(mcq_answer(rng, sample), sample) for sample in samples]
        for answer, sample in pairs:
            official = vlmevalkit_pick(answer, sample)
            assert mcq_pick(answer, choices_of(sample)) == official, (answer, sample)
            assert score("mcq", answer, sample) == float(official == sample["answer"])
        samples, answers = [s for _, s in pairs], [a for a, _ in pairs]
        official_hits = [float(vlmevalkit_pick(a, s) == s["answer"]) for a, s in pairs]
        accuracy = build_table("synthshapes-mcq", samples, {"original": answers}).point("original")[
            "accuracy"
        ]
        assert accuracy == pytest.approx(sum(official_hits) / len(official_hits), rel=1e-12)
        seen.extend(answers)

    run_property(check)


def official_circular(rows, folder):
    """VLMEvalKit's ``mcq_circular_eval`` (exact matching) and ``report_acc`` on ``rows``."""
    import pandas

    vlmevalkit()
    from vlmeval.dataset.utils.multiple_choice import mcq_circular_eval, report_acc

    data = pandas.DataFrame(rows)
    meta = data[["index", "answer"]].copy()
    # it also leaves a copy of its table in /tmp/<YYYYmmddHHMMSS>.<PRED_FORMAT>: removed below
    before = set(Path("/tmp").glob("[0-9]*.tsv"))
    try:
        result = mcq_circular_eval(
            None, data.drop(columns=["answer"]), meta, 1, str(folder / "result.pkl"), "MMBench"
        )
    finally:
        for left in set(Path("/tmp").glob("[0-9]*.tsv")) - before:
            if re.fullmatch(r"\d{14}\.tsv", left.name):
                left.unlink(missing_ok=True)
    return report_acc(result)


def circular_rows(groups):
    rows = []
    for question, (variants, has_main, category, answers) in enumerate(groups):
        for variant in range(variants):
            if variant == 0 and not has_main:
                continue
            rows.append(
                {
                    "index": question + variant * 1_000_000,
                    "question": "Which one?",
                    "category": category,
                    "answer": "ABCD"[(question + variant) % 4],
                    "prediction": answers[variant],
                    **MCQ_OPTIONS,
                }
            )
    return rows


def assert_circular_equal(rows, monkeypatch, folder):
    monkeypatch.setenv("PRED_FORMAT", "tsv")
    official = official_circular(rows, folder).iloc[0]
    ours = build_table("mcq", rows, {"original": [row["prediction"] for row in rows]}).point(
        "original"
    )
    assert ours["circular_accuracy"] == pytest.approx(official["Overall"], rel=1e-12)
    categories = {row["category"] for row in rows}
    for category in categories & set(official.index):
        if len(categories) > 1:
            assert ours[f"{category}/circular_accuracy"] == pytest.approx(
                official[category], rel=1e-12
            )


def test_circular_accuracy_adversarial_equals_vlmevalkit(monkeypatch, tmp_path):
    groups = [
        (
            4,
            True,
            "x",
            ["A", "(B)", "C is the one I pick because of the colour", "D"],
        ),  # 3rd misread
        (4, True, "x", ["B", "C", "D", "A"]),  # all right
        (2, False, "y", ["C", "D"]),  # no main row: VLMEvalKit leaves the group out
        (3, True, "y", ["The answer is D", "A", "blue"]),
        (2, True, "y", ["A", "Cannot determine the answer"]),
    ]
    assert_circular_equal(circular_rows(groups), monkeypatch, tmp_path)


@pytest.mark.slow
def test_circular_accuracy_property(monkeypatch):
    def answer(rng):
        kind = rng.randrange(3)
        if kind == 0:
            return rng.choice("ABCD")
        if kind == 1:
            return letter_in_position(rng, "ABCD")
        return near_miss(rng, ("A", "B", "C", "D", "red", "blue", "green", "yellow"))

    def group(rng):
        return (
            rng.randint(1, 4),
            rng.random() < 0.8,
            rng.choice("xyz"),
            [answer(rng) for _ in range(4)],
        )

    @settings(PROPERTY, max_examples=60)
    @given(st.randoms(use_true_random=True))
    def check(rng):
        groups = [(2, True, "x", ["A", "B"])] + [group(rng) for _ in range(rng.randint(3, 10))]
        with tempfile.TemporaryDirectory() as folder:
            assert_circular_equal(circular_rows(groups), monkeypatch, Path(folder))

    check()


def test_property_grammar_reaches_every_form():
    """The grammar does produce the forms it promises (so the property tests cannot go soft)."""
    rng = random.Random(0)
    drawn = [near_miss(rng, YES_NO) for _ in range(2000)] + [
        letter_in_position(rng, "AB") for _ in range(200)
    ]
    text = "\n".join(drawn)
    for form in ["The answer is", "Cannot determine", "(A)", "**", "the ", "two", "İ"]:
        assert form in text, form
    assert any(len(answer.split()) >= 10 for answer in drawn)
    assert {"A", "B"} <= {answer.strip() for answer in drawn}
