"""The prompt-style comparison on synthshapes-mcq and its small-object variant, as fixed in
benchmarks/synthshapes/README.md ("Prompt styles on synthshapes-mcq") before it was run.

The same ``evaluate`` call as ``api-prompt eval DATA --benchmark synthshapes-mcq
--conditions original,overlay,crop,blur,box --target clip-zeroshot:local-dir:assets/synthshapes-clip
-m synthshapes --style-option crop_size=64 --out OUT`` (docs/styles.md), from Python. From the repository root::

    python -m benchmarks.synthshapes.mcq --out data/synthshapes-mcq
    python -m benchmarks.synthshapes.mcq --variant small --out data/synthshapes-mcq-small
    python benchmarks/synthshapes/results/styles/run.py data/synthshapes-mcq/synthshapes_mcq.jsonl \\
        benchmarks/synthshapes/results/styles/default
    python benchmarks/synthshapes/results/styles/run.py data/synthshapes-mcq-small/synthshapes_mcq_small.jsonl \\
        benchmarks/synthshapes/results/styles/small
    python benchmarks/synthshapes/results/styles/run.py chart docs/images/styles-synthshapes.png

``boxes`` counts how often the small variant's crop box holds the object asked about.
``chart`` draws both runs' accuracy (into PATH and ``chart.png`` here) per condition (95% paired-bootstrap intervals) side by side,
and prints the comparison table from their ``summary.json``.
"""

import json
import sys
import time
from pathlib import Path

from api_prompt import Prompter
from api_prompt.evaluation import evaluate

CONDITIONS = "original,overlay,crop,blur,box"
TARGET = "clip-zeroshot:local-dir:assets/synthshapes-clip"
CROP_SIZE = 64  # the target's input side (fixed in the design before measuring)


def main(data: str, out: str) -> None:
    prompter = Prompter(model="synthshapes", device="cpu", style_options={"crop_size": CROP_SIZE})
    start = time.monotonic()
    summary = evaluate(
        data,
        "synthshapes-mcq",
        TARGET,
        out,
        conditions=CONDITIONS,
        prompter=prompter,
        batch_size=16,
        progress=lambda done, total: print(
            f"{done}/{total} {time.monotonic() - start:.0f}s", flush=True
        ),
    )
    for name, condition in summary["conditions"].items():
        print(name, condition["metrics"]["accuracy"], condition["ci95"]["accuracy"])


HERE = Path(__file__).resolve().parent
RUNS = {
    "synthshapes-mcq (64 px)": HERE / "default",
    "small-object variant (160 px)": HERE / "small",
}


def chart(path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {
        "original": "#9aa5b1",
        "overlay": "#d9480f",
        "crop": "#1971c2",
        "blur": "#2f9e44",
        "box": "#ae3ec9",
    }
    figure, axes = plt.subplots(1, len(RUNS), figsize=(7.2, 2.8), sharey=True)
    for ax, (title, folder) in zip(axes, RUNS.items()):
        summary = json.loads((folder / "summary.json").read_text())
        names = list(summary["conditions"])
        for x, name in enumerate(names):
            data = summary["conditions"][name]
            value, (lo, hi) = data["metrics"]["accuracy"], data["ci95"]["accuracy"]
            ax.bar(x, value, 0.7, yerr=[[value - lo], [hi - value]], capsize=3, color=colours[name])
            ax.text(x, hi + 0.015, f"{value:.2f}", ha="center", fontsize=7)
        ax.axhline(7 / 24, color="black", lw=0.6, ls=":")  # chance: 1/4 (colour) and 1/3 (shape)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{title}, n={summary['statistics']['scored']}", fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("accuracy (95% CI)", fontsize=8)
    axes[0].set_ylim(0, 1.08)
    figure.tight_layout()
    for where in (path, HERE / "chart.png"):
        figure.savefig(where, dpi=100)
    plt.close(figure)
    print(table())


def table() -> str:
    """Markdown: every condition's accuracy, then every difference with its interval and p."""
    summaries = {
        title: json.loads((folder / "summary.json").read_text()) for title, folder in RUNS.items()
    }
    titles = list(summaries)
    lines = ["| | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    first = summaries[titles[0]]
    for name in first["conditions"]:
        cells = []
        for title in titles:
            data = summaries[title]["conditions"][name]
            lo, hi = data["ci95"]["accuracy"]
            cells.append(f"{data['metrics']['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| `{name}` accuracy | " + " | ".join(cells) + " |")
    for pair in first["comparisons"]:
        cells = []
        for title in titles:
            delta = summaries[title]["comparisons"][pair]["accuracy"]
            lo, hi = delta["ci95"]
            cells.append(f"{delta['value']:+.3f} [{lo:+.3f}, {hi:+.3f}], p {delta['p_value']:.2g}")
        lines.append(f"| {pair.replace(' - ', ' − ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def boxes(n: int = 600) -> None:
    """How often the small variant's crop box holds the whole object asked about, by template,
    and the crop condition's accuracy when it does and when it does not."""
    sys.path.insert(0, str(HERE.parents[3]))  # the repository root, for benchmarks.*
    from api_prompt.evaluation.data import EvalSample, auxiliary_query
    from benchmarks.synthshapes.mcq import make_question

    prompter = Prompter(model="synthshapes", device="cpu", style_options={"crop_size": CROP_SIZE})
    crop = prompter.style_named("crop")
    records = [
        json.loads(line) for line in (HERE / "small" / "predictions.jsonl").read_text().splitlines()
    ]
    right = {r["id"]: r["score"] for r in records if r["condition"] == "crop"}
    counts: dict[tuple[str, bool], list[float]] = {}
    for index in range(n):
        row, scene = make_question(index, "small")
        if row["category"] == "colour":
            shape = row["question"].removeprefix("What colour is the ").removesuffix("?")
            (asked,) = [o for o in scene.objects if o.shape == shape]
        else:
            colour = row["question"].removeprefix("What shape is the ").removesuffix(" object?")
            (asked,) = [o for o in scene.objects if o.color == colour]
        query = auxiliary_query(
            "synthshapes-mcq", EvalSample(index, row["id"], None, row["question"], row)
        )
        amap = prompter.attribute([scene.image], [query])[0]
        x0, y0, x1, y1 = crop.box(scene.image, amap)
        inside = (
            x0 <= asked.box[0] and y0 <= asked.box[1] and asked.box[2] <= x1 and asked.box[3] <= y1
        )
        counts.setdefault((row["category"], inside), []).append(right[row["id"]])
    for category in ("colour", "shape"):
        total = sum(len(counts.get((category, k), [])) for k in (True, False))
        for inside in (True, False):
            scores = counts.get((category, inside), [])
            accuracy = sum(scores) / len(scores) if scores else float("nan")
            print(
                f"{category}: object {'inside' if inside else 'not inside'} the crop box "
                f"{len(scores)}/{total}, crop accuracy {accuracy:.3f}"
            )


if __name__ == "__main__":
    if sys.argv[1:2] == ["chart"]:
        chart(sys.argv[2])
    elif sys.argv[1:2] == ["boxes"]:
        boxes()
    else:
        main(*sys.argv[1:])
