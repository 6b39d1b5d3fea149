"""Official scorers, metrics and paired statistics, against results computed by hand."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from api_prompt.errors import ConfigError
from api_prompt.evaluation import score
from api_prompt.evaluation.benchmarks import build_table
from api_prompt.evaluation.normalize import normalize_answer
from api_prompt.evaluation.scoring import infer_option, mme_answer, pope_answer, vqa_accuracy
from api_prompt.evaluation.stats import (
    bootstrap_conditions,
    mcnemar_p,
    paired_bootstrap,
    percentile_interval,
)

# -- POPE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes.", "yes"),
        ("no, there is not", "no"),  # comma dropped, then the word "no"
        ("No.", "no"),
        ("There is not a dog in the image.", "no"),
        ("NO", "yes"),  # POPE only knows "No", "no" and "not"
        ("Not at all", "yes"),  # "Not" (capital) is not one of them either
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("", "yes"),
        ("nothing", "yes"),  # whole words only
    ],
)
def test_pope_parsing_follows_the_official_rules(answer, parsed):
    assert pope_answer(answer) == parsed


def test_pope_metrics_equal_the_hand_computed_confusion_matrix():
    labels = ["yes", "no", "yes", "no", "yes"]
    answers = ["Yes.", "no, there is not", "No", "Yes", ""]  # read: yes no no yes yes
    samples = [{"answer": label} for label in labels]
    metrics = build_table("pope", samples, {"original": answers}).point("original")
    # TP = 2 (items 0, 4), FP = 1 (item 3), TN = 1 (item 1), FN = 1 (item 2)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["yes_ratio"] == pytest.approx(3 / 5)
    assert [score("pope", a, s) for a, s in zip(answers, samples)] == [1, 1, 0, 0, 1]


# -- MME -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, parsed",
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("YES", "yes"),
        ("no, there is not", "no"),
        ("Not really", "no"),
        ("None", "no"),
        ("I think so", "other"),
        ("", "other"),
        ("The answer is yes", "other"),  # only the first four characters are searched
        ("n", "no"),
        ("Y", "yes"),
        ("y.", "yes"),
        ("x", "other"),  # single characters
        (" No", "no"),
        ("...yes", "yes"),  # stripped, full stops removed first
    ],
)
def test_mme_parsing_follows_the_official_rules(answer, parsed):
    assert mme_answer(answer) == parsed


def test_mme_acc_acc_plus_and_totals_equal_the_hand_computed_scores():
    rows = [  # (category, image, truth, answer)
        ("existence", "1.png", "Yes", "Yes."),  # right
        ("existence", "1.png", "No", "no, there is not"),  # right -> image 1 both right
        ("existence", "2.png", "Yes", "Not really"),  # wrong (read "no")
        ("existence", "2.png", "No", ""),  # wrong (read "other")
        ("code_reasoning", "3.png", "Yes", "YES"),  # right
        ("code_reasoning", "3.png", "No", "Yes"),  # wrong
    ]
    samples = [{"category": c, "image_path": i, "answer": t} for c, i, t, _ in rows]
    metrics = build_table("mme", samples, {"original": [r[3] for r in rows]}).point("original")
    assert metrics["existence/acc"] == pytest.approx(50.0)  # 2 of 4 questions
    assert metrics["existence/acc_plus"] == pytest.approx(50.0)  # 1 of 2 images
    assert metrics["code_reasoning/acc"] == pytest.approx(50.0)
    assert metrics["code_reasoning/acc_plus"] == pytest.approx(0.0)
    assert metrics["perception"] == pytest.approx(100.0)  # existence: 50 + 50
    assert metrics["cognition"] == pytest.approx(50.0)  # code_reasoning: 50 + 0


def test_mme_without_the_shared_image_column_is_a_clear_error():
    with pytest.raises(ConfigError, match="image_path"):
        build_table("mme", [{"category": "count", "answer": "Yes"}], {"original": ["yes"]})


# -- VQA -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, normalised",
    [
        ("Two", "2"),
        ("a dog", "dog"),
        ("The dog's bone?", "dog 's bone"),
        ("dont", "don't"),
        ("yes.", "yes"),
        ("3.5", "3.5"),
        ("black-and-white", "black and white"),
        ("1,000", "1000"),
        ("  an apple\n", "apple"),
    ],
)
def test_vqa_normalisation(answer, normalised):
    assert normalize_answer(answer) == normalised


def test_vqa_accuracy_is_the_mean_over_leave_one_out_subsets():
    humans = ["2", "2", "2"] + ["3"] * 7
    # leaving out a "2": 2 other humans said 2 -> 2/3; leaving out a "3": 3 said 2 -> 1
    assert vqa_accuracy("two", humans) == pytest.approx((3 * 2 / 3 + 7 * 1) / 10)
    assert vqa_accuracy("a dog", ["dog"] * 10) == 1.0
    assert vqa_accuracy("dog", ["dog"] + ["cat"] * 9) == pytest.approx(9 * (1 / 3) / 10)
    assert vqa_accuracy("", ["dog"] * 10) == 0.0
    assert (
        score("textvqa", "Two.", {"answers": "['two', 'two', '2', '2']"}) == 1.0
    )  # VLMEvalKit text
    assert (
        score("vqav2", "2", {"answers": [{"answer": "two", "answer_id": i} for i in range(10)]})
        == 1.0
    )


def test_gqa_is_exact_match_ignoring_case_and_punctuation_only():
    assert score("gqa", "Yes.", {"answer": "yes"}) == 1.0
    assert score("gqa", "  left-hand\n", {"answer": "lefthand"}) == 1.0
    assert score("gqa", "The table", {"answer": "table"}) == 0.0  # no article removal
    assert score("gqa", "two", {"answer": "2"}) == 0.0  # no number words
    assert score("gqa", "tables", {"answer": "table"}) == 0.0
    assert score("gqa", "", {"answer": "table"}) == 0.0


def test_vqav2_does_not_normalise_like_textvqa():
    humans = ["red white"] * 2 + ["redwhite"] * 8
    assert score("vqav2", "red,white", {"answers": humans}) == pytest.approx(0.6)
    assert score("textvqa", "red,white", {"answers": humans}) == 1.0
    # dict answers that are equal leave each other out together (lmms-eval compares the dicts)
    same = [{"answer": "dog"}] * 4
    assert score("vqav2", "dog", {"answers": same}) == 0.0
    assert (
        score("vqav2", "dog", {"answers": [{"answer": "dog", "answer_id": i} for i in range(4)]})
        == 1.0
    )


# -- multiple choice -----------------------------------------------------------------------------

OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}


@pytest.mark.parametrize(
    "answer, option",
    [
        ("(B) red", "B"),  # a letter wins over an option's text
        ("The answer is C", "C"),
        ("C is right, as the picture shows", None),  # the letter must be among the last four words
        ("Failed to obtain answer via API: C", None),  # an API failure: no letter is read
        ("C.", "C"),
        ("green", "C"),  # no letter: the one option text it contains
        ("It is green or blue", None),  # two option texts: none
        ("A or B", None),  # two letters, and no option text
        ("", None),
        ("Cannot determine the answer", "Z"),
    ],
)
def test_option_extraction_follows_vlmevalkit(answer, option):
    assert infer_option(answer, OPTIONS) == option


def test_mcq_accuracy_and_circular_accuracy():
    # question 1 in three circular variants (index 1, 1000001, 2000001), question 2 in two
    rows = [
        (1, "A", "A"),
        (1000001, "B", "(B)"),
        (2000001, "C", "C"),
        (2, "D", "D"),
        (1000002, "A", "B"),
    ]
    samples = [{"index": i, "answer": t, **OPTIONS} for i, t, _ in rows]
    table = build_table("mcq", samples, {"original": [r[2] for r in rows]})
    metrics = table.point("original")
    assert metrics["accuracy"] == pytest.approx(4 / 5)
    assert metrics["circular_accuracy"] == pytest.approx(1 / 2)


def test_categories_get_their_own_metrics():
    samples = [{"answer": "A", "category": c, **OPTIONS} for c in ["x", "x", "y"]]
    metrics = build_table("mcq", samples, {"original": ["A", "B", "A"]}).point("original")
    assert metrics["x/accuracy"] == 0.5 and metrics["y/accuracy"] == 1.0
    assert "circular_accuracy" not in metrics


def test_missing_ground_truth_and_unknown_benchmark_are_clear_errors():
    with pytest.raises(ConfigError, match="'answer'"):
        score("pope", "yes", {"question": "Is there a dog?"})
    with pytest.raises(ConfigError, match="option columns"):
        score("mcq", "A", {"answer": "A"})
    with pytest.raises(ConfigError, match="unknown benchmark 'mmbench'; choose one of: pope, mme,"):
        score("mmbench", "A", {"answer": "A"})
    with pytest.raises(ConfigError, match="mmvet is scored by a judge model"):
        score("mmvet", "A", {"answer": "A"})


# -- paired statistics ---------------------------------------------------------------------------


def _direct_mcnemar(a, b):
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2**n)


@pytest.mark.parametrize("seed", range(4))
def test_mcnemar_equals_the_direct_binomial_sum(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(60) < 0.5
    b = np.where(rng.random(60) < 0.3, ~a, a)
    assert mcnemar_p(a, b) == pytest.approx(_direct_mcnemar(a, b), rel=1e-9)
    assert mcnemar_p([1, 1, 0], [1, 1, 0]) == 1.0
    # 2 vs 8 discordant pairs: 2 * (C(10,0) + C(10,1) + C(10,2)) / 2**10
    assert mcnemar_p([1] * 2 + [0] * 8, [0] * 2 + [1] * 8) == pytest.approx(112 / 1024)


def _direct_bootstrap(a, b, metric, n_resamples, seed):
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(a), len(a))
        deltas.append(metric(b[pick].sum(axis=0)) - metric(a[pick].sum(axis=0)))
    return np.percentile(deltas, [2.5, 97.5])


@pytest.mark.parametrize("kind", ["binary", "continuous"])
def test_paired_bootstrap_matches_a_direct_resampling_loop(kind):
    rng = np.random.default_rng(1)
    n = 300
    if kind == "binary":  # few distinct units: counts of distinct rows are drawn
        a = (rng.random(n) < 0.6).astype(float)
        b = np.where(rng.random(n) < 0.25, 1 - a, a)
    else:  # many distinct units: the units are drawn
        a, b = rng.random(n), rng.random(n) + 0.05
    units_a, units_b = np.stack([a, np.ones(n)], 1), np.stack([b, np.ones(n)], 1)
    mean = lambda sums: sums[..., 0] / sums[..., 1]  # noqa: E731
    value, (lo, hi) = paired_bootstrap(units_a, units_b, mean, n_resamples=4000, seed=3)
    direct_lo, direct_hi = _direct_bootstrap(units_a, units_b, mean, 4000, seed=11)
    assert value == pytest.approx(b.mean() - a.mean())
    spread = direct_hi - direct_lo
    assert lo == pytest.approx(direct_lo, abs=0.08 * spread)
    assert hi == pytest.approx(direct_hi, abs=0.08 * spread)
    # fixed seed: the same interval every time
    assert paired_bootstrap(units_a, units_b, mean, n_resamples=4000, seed=3)[1] == (lo, hi)


# The bootstrap before its per-distinct-row counting (api-prompt 0.x, stats.py as of b26b161), kept
# as the reference: the faster one must give the same numbers, bit for bit, for the same seed.


def _reference_weights(n_units, n_resamples, seed):
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, 8_000_000 // max(n_units, 1))
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        draws = rng.integers(0, n_units, size=(rows, n_units))
        draws += (np.arange(rows) * n_units)[:, None]
        yield np.bincount(draws.ravel(), minlength=rows * n_units).reshape(rows, n_units)
        done += rows


def _reference_resamples(units, n_resamples, seed):
    n_units = len(units)
    units = np.ascontiguousarray(units)
    projection = units @ np.random.default_rng(12345).random(units.shape[1])
    _, first, inverse, counts = np.unique(
        projection, return_index=True, return_inverse=True, return_counts=True
    )
    if not np.array_equal(units[first][inverse.ravel()], units):
        as_bytes = units.view(np.dtype((np.void, units.dtype.itemsize * units.shape[1]))).ravel()
        _, first, counts = np.unique(as_bytes, return_index=True, return_counts=True)
    distinct = units[first]
    if len(distinct) * 8 > n_units:
        return units, _reference_weights(n_units, n_resamples, seed)
    rng = np.random.default_rng(seed)
    return distinct, [rng.multinomial(n_units, counts / n_units, size=n_resamples)]


def _reference_bootstrap(units, metric, baseline, n_resamples, seed, level=0.95):
    as_dict = lambda values: values if isinstance(values, dict) else {None: values}  # noqa: E731
    names = list(units)
    arrays = [np.asarray(units[name], dtype=float) for name in names]
    n_units, k = arrays[0].shape
    with np.errstate(divide="ignore", invalid="ignore"):
        points = {name: as_dict(metric(a.sum(axis=0))) for name, a in zip(names, arrays)}
        draws = {name: {m: [] for m in points[name]} for name in names}
        rows, chunks = _reference_resamples(np.hstack(arrays), n_resamples, seed)
        for weights in chunks:
            sums = weights.astype(float) @ rows
            for position, name in enumerate(names):
                for m, values in as_dict(
                    metric(sums[:, position * k : (position + 1) * k])
                ).items():
                    draws[name][m].append(np.broadcast_to(values, (len(weights),)))
    samples = {name: {m: np.concatenate(v) for m, v in per.items()} for name, per in draws.items()}
    intervals = {
        name: {m: percentile_interval(v, level) for m, v in per.items()}
        for name, per in samples.items()
    }

    def difference(a, b):
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


def _judged_units(benchmark, n, seed, low=1, high=4):
    """Judge grades as lmms-eval's aggregations see them, in two conditions."""
    rng = np.random.default_rng(seed)
    if benchmark == "llava-bench":
        samples = [
            {"category": ("conv", "detail", "complex")[i % 3], "gpt_answer": "r"} for i in range(n)
        ]
        grades = {
            c: rng.integers(low, high + 1, size=(n, 2)).astype(float) / (2 if c == "api" else 1)
            for c in ("original", "api")
        }  # halves too: "8,7.5" is a review's score
    else:
        samples = [{"capability": ("rec", "rec,ocr", "math,spat")[i % 3]} for i in range(n)]
        grades = {c: rng.integers(0, 11, size=n) / 10 for c in ("original", "api")}
    return build_table(benchmark, samples, {c: g.tolist() for c, g in grades.items()})


@pytest.mark.parametrize(
    "case", ["llava-bench", "llava-bench-wide", "mmvet", "pope", "continuous", "tiny"]
)
def test_bootstrap_equals_the_previous_implementation_bit_for_bit(case):
    from api_prompt.evaluation import stats

    rng = np.random.default_rng(7)
    if case == "llava-bench":  # many distinct rows, all sums exact: counted per distinct row
        table = _judged_units("llava-bench", 3000, seed=1)
        units, metric = table.units, table.metric
    elif case == "llava-bench-wide":  # grades 1-10: as many distinct rows as units, the units drawn
        table = _judged_units("llava-bench", 3000, seed=2, high=10)
        units, metric = table.units, table.metric
    elif case == "mmvet":  # tenths are not exact in binary: the units drawn
        table = _judged_units("mmvet", 2000, seed=3)
        units, metric = table.units, table.metric
    elif case == "pope":  # few distinct rows: multinomial counts
        samples = [{"answer": "yes" if i % 3 else "no"} for i in range(500)]
        table = build_table(
            "pope",
            samples,
            {
                c: [("Yes", "No")[int(x)] for x in rng.random(500) < 0.4]
                for c in ("original", "api", "crop")
            },
        )
        units, metric = table.units, table.metric
    elif case == "continuous":
        units = {c: np.stack([rng.random(400), np.ones(400)], 1) for c in ("original", "api")}
        metric = lambda sums: sums[..., 0] / sums[..., 1]  # noqa: E731
    else:
        units = {c: np.array([[1.0, 1.0]]) for c in ("original", "api")}
        metric = lambda sums: {"mean": sums[..., 0] / sums[..., 1]}  # noqa: E731
    for seed in (0, 5):
        new = stats.bootstrap_conditions(
            units, metric, baseline="original", n_resamples=700, seed=seed
        )
        old = _reference_bootstrap(units, metric, "original", 700, seed)
        assert repr(new) == repr(old)
    if case == "llava-bench":  # the case the per-distinct-row counting is for
        stacked = np.hstack(list(units.values()))
        distinct = len(np.unique(stacked, axis=0))
        assert len(stacked) / 8 < distinct <= len(stacked) / 2 and stats._sums_are_exact(stacked)


def test_bootstrap_intervals_of_each_condition_and_of_the_delta():
    samples = [{"answer": "yes" if i % 2 else "no"} for i in range(200)]
    original = ["yes"] * 200  # accuracy 0.5
    api = [s["answer"] for s in samples[:150]] + ["yes"] * 50  # accuracy 0.875
    table = build_table("pope", samples, {"original": original, "api": api})
    result = bootstrap_conditions(table.units, table.metric, baseline="original")
    value, (lo, hi) = result["delta"]["api"]["accuracy"]
    assert value == pytest.approx(0.375) and lo < 0.375 < hi and lo > 0.25
    low, high = result["intervals"]["api"]["accuracy"]
    assert low < 0.875 < high
