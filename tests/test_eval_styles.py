"""``evaluate`` with prompt styles as conditions: every style drawn from the same map of a
sample, each condition scored, and every two conditions compared on the same samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from api_prompt import Prompter
from api_prompt.errors import ConfigError
from api_prompt.evaluation import evaluate
from api_prompt.evaluation.data import auxiliary_query, read_samples, target_prompt
from api_prompt.evaluation.runner import check_conditions
from api_prompt.targets import create_target

REPO = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{REPO / 'assets' / 'synthshapes-clip'}"
STYLED = "original,overlay,crop,blur,box"


class CountingPrompter(Prompter):
    """A Prompter that counts how many images its model was run on."""

    images_attributed = 0

    def attribute(self, images, queries, **options):
        maps = super().attribute(images, queries, **options)
        CountingPrompter.images_attributed += len(maps)
        return maps


@pytest.fixture(scope="module")
def small_mcq(tmp_path_factory):
    from benchmarks.synthshapes.mcq import write_benchmark

    return write_benchmark(tmp_path_factory.mktemp("small"), 8, variant="small")


@pytest.mark.slow
def test_every_style_is_a_condition_made_from_one_map_per_sample(small_mcq, tmp_path):
    prompter = CountingPrompter(model=CLIP, device="cpu", style_options={"crop_size": 64})
    target = create_target(f"clip-zeroshot:{CLIP}", device="cpu")
    CountingPrompter.images_attributed = 0
    summary = evaluate(
        small_mcq,
        "synthshapes-mcq",
        target,
        tmp_path / "run",
        conditions=STYLED,
        prompter=prompter,
        batch_size=4,
    )
    assert CountingPrompter.images_attributed == 8  # one map per sample for four styles
    assert list(summary["conditions"]) == STYLED.split(",")

    # each condition's answers, made here independently: the map, the style, the target
    _, samples = read_samples(small_mcq)
    predictions = [
        json.loads(line)
        for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()
    ]
    recorded = {(p["id"], p["condition"]): p["answer"] for p in predictions}
    accuracy = {}
    for condition in STYLED.split(","):
        right = []
        for sample in samples:
            image = sample.load_image() if hasattr(sample, "load_image") else None
            from api_prompt.images import load_image

            image = load_image(small_mcq.parent / sample.image)
            if condition == "original":
                shown = image
            else:
                amap = prompter.attribute([image], [auxiliary_query("synthshapes-mcq", sample)])[0]
                made = prompter.style_named(condition).apply(image, amap)
                shown = made[0] if len(made) == 1 else made
            answer = target([shown], [target_prompt("synthshapes-mcq", sample)])[0]
            assert recorded[(sample.id, condition)] == answer, (sample.id, condition)
            right.append(answer == sample.fields["answer"])
        accuracy[condition] = float(np.mean(right))
        assert summary["conditions"][condition]["metrics"]["accuracy"] == pytest.approx(
            accuracy[condition]
        )

    pairs = summary["comparisons"]
    assert len(pairs) == 10  # every two of five conditions
    crop = pairs["crop - original"]["accuracy"]
    assert crop["value"] == pytest.approx(accuracy["crop"] - accuracy["original"])
    assert crop["ci95"][0] <= crop["value"] <= crop["ci95"][1] and 0 <= crop["p_value"] <= 1
    assert pairs["box - blur"]["accuracy"]["value"] == pytest.approx(
        accuracy["box"] - accuracy["blur"]
    )
    assert summary["delta"]["accuracy"]["value"] == pytest.approx(
        accuracy["overlay"] - accuracy["original"]
    )
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| crop - original | accuracy |" in report


@pytest.mark.slow
def test_api_stays_the_prompters_style_and_the_contract_keeps_its_shape(small_mcq, tmp_path):
    prompter = Prompter(model=CLIP, device="cpu")
    target = create_target(f"clip-zeroshot:{CLIP}", device="cpu")
    both = evaluate(
        small_mcq,
        "synthshapes-mcq",
        target,
        tmp_path / "both",
        conditions="original,api,overlay",
        prompter=prompter,
        batch_size=8,
    )
    assert both["conditions"]["api"]["metrics"] == both["conditions"]["overlay"]["metrics"]
    assert both["delta"]["accuracy"]["value"] == pytest.approx(
        both["conditions"]["api"]["metrics"]["accuracy"]
        - both["conditions"]["original"]["metrics"]["accuracy"]
    )
    two = evaluate(
        small_mcq, "synthshapes-mcq", target, tmp_path / "two", prompter=prompter, batch_size=8
    )
    assert "comparisons" not in two and set(two["conditions"]) == {"original", "api"}


@pytest.mark.slow
def test_a_resume_with_other_style_options_is_refused(small_mcq, tmp_path):
    target = create_target(f"clip-zeroshot:{CLIP}", device="cpu")
    run = tmp_path / "run"
    evaluate(
        small_mcq,
        "synthshapes-mcq",
        target,
        run,
        conditions="original,crop",
        limit=2,
        prompter=Prompter(model=CLIP, device="cpu", style_options={"crop_size": 64}),
    )
    recorded = json.loads((run / "eval_run.json").read_text())["parameters"]["settings"]["styles"]
    assert recorded == {"crop": {"style": "crop", **recorded["crop"], "crop_size": 64}}
    before = (run / "predictions.jsonl").read_bytes()
    with pytest.raises(ConfigError, match="different parameters"):
        evaluate(
            small_mcq,
            "synthshapes-mcq",
            target,
            run,
            conditions="original,crop",
            limit=2,
            prompter=Prompter(model=CLIP, device="cpu", style_options={"crop_size": 32}),
        )
    assert (run / "predictions.jsonl").read_bytes() == before  # the first run's answers kept


def test_condition_names_and_what_each_needs(small_mcq, tmp_path):
    assert check_conditions("box, Original,crop") == ("original", "crop", "box")
    with pytest.raises(ConfigError, match="choose from: original, api, overlay, crop, blur, box"):
        check_conditions("zoom")
    with pytest.raises(ConfigError, match="condition 'crop' needs a Prompter"):
        evaluate(
            small_mcq,
            "synthshapes-mcq",
            lambda image, question: "A",
            tmp_path / "never",
            conditions="original,crop",
            prompter=lambda image, query: image,
        )
    assert not (tmp_path / "never").exists()  # refused before anything is written


def _exact_mcnemar(a, b):
    """Two-sided exact McNemar from its definition: the discordant pairs as fair coin flips."""
    from math import comb

    only_a = sum(bool(x) and not y for x, y in zip(a, b))
    only_b = sum(bool(y) and not x for x, y in zip(a, b))
    n = only_a + only_b
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n)


def test_comparison_report_lists_every_pair_with_its_interval_and_p(tmp_path):
    """What a reader of a styles comparison gets (no model): every two conditions' difference,
    b − a, with its paired-bootstrap interval and exact McNemar p, in summary.json and in
    report.md, and one chart holding every condition."""
    from itertools import combinations

    from api_prompt.evaluation.report import summarize, write_chart, write_report

    rng = np.random.default_rng(3)
    n = 120
    samples = [
        {"answer": "ABC"[i % 3], "A": "a", "B": "b", "C": "c", "question": "q", "category": "x"}
        for i in range(n)
    ]
    chance = {"original": 0.5, "overlay": 0.45, "crop": 0.75, "blur": 0.5, "box": 0.3}
    right = {c: rng.random(n) < p for c, p in chance.items()}
    wrong = {"A": "B", "B": "C", "C": "A"}
    answers = {
        c: [s["answer"] if ok else wrong[s["answer"]] for s, ok in zip(samples, right[c])]
        for c in chance
    }
    errors = {c: [None] * n for c in chance}
    summary = summarize("synthshapes-mcq", samples, answers, errors, n_resamples=500, seed=1)

    pairs = summary["comparisons"]
    assert set(pairs) == {f"{b} - {a}" for a, b in combinations(chance, 2)}  # all 10, b after a
    for a, b in combinations(chance, 2):
        delta = pairs[f"{b} - {a}"]["accuracy"]
        assert delta["value"] == pytest.approx(right[b].mean() - right[a].mean())
        assert delta["ci95"][0] <= delta["value"] <= delta["ci95"][1]
        assert delta["p_value"] == pytest.approx(_exact_mcnemar(right[a], right[b]), rel=1e-9)
    crop = pairs["crop - original"]["accuracy"]
    assert crop["ci95"][0] > 0 and crop["p_value"] < 0.01  # a real gain is found as one
    assert summary["delta"]["accuracy"] == pairs["overlay - original"]["accuracy"]

    assert write_chart(summary, tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:4] == b"\x89PNG"
    write_report(summary, tmp_path / "report.md", chart="chart.png")
    report = (tmp_path / "report.md").read_text()
    for pair, per_metric in pairs.items():
        d = per_metric["accuracy"]
        line = f"| {pair} | accuracy | {d['value']:+.4f} | [{d['ci95'][0]:.4f}, {d['ci95'][1]:.4f}] | {d['p_value']:.3g} |"
        assert line in report, line
    assert "| accuracy | " + " | ".join(f"{right[c].mean():.4f}" for c in chance) in report
    assert "![synthshapes-mcq per condition](chart.png)" in report
