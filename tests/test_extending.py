"""Extending api-prompt: each extension point takes a toy, defined in one place here and registered
once, and the command line uses it with no other change (docs/extending.md shows the same toys).

One section per extension point, each with its toy, its registration fixture (the registry is
restored afterwards) and its tests. The toy backend lives in tests/test_registry.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SMALL_CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"
SCENE = ROOT / "docs" / "images" / "scene.png"


def invoke(*args: str):
    """The CLI in this process: (exit code, stdout, stderr)."""
    from api_prompt.cli.app import app

    done = CliRunner().invoke(app, [str(arg) for arg in args], catch_exceptions=False, env={"COLUMNS": "200"})
    return done.exit_code, done.stdout, done.stderr


# --------------------------------------------------------------------------------------------
# A benchmark: one scorer function, one register_benchmark call


from api_prompt.evaluation import BENCHMARKS, Benchmark, register_benchmark  # noqa: E402
from api_prompt.evaluation.metrics import mean_score_table  # noqa: E402

TOY_COLOURS = ("red", "green", "blue")


def toy_colour_score(answer: str, sample) -> float:
    """1 when the letter answered names the sample's colour among its ``colours``."""
    letter = answer.strip()[:1].upper()
    picked = dict(zip("ABC", sample["colours"])).get(letter)
    return float(picked == sample["colour"])


def toy_colour_prompt(question: str, fields) -> str:
    options = [f"{letter}. a {colour} square" for letter, colour in zip("ABC", fields["colours"])]
    return "\n".join([f"Question: {question.strip()}", "Options:", *options])


TOY_BENCHMARK = Benchmark(
    "toy-colour", toy_colour_score, prompt=toy_colour_prompt, table=mean_score_table("hits"),
    primary="hits", data_options={"question_column": "ask"}, help="toy-colour (which colour is the square)",
)


@pytest.fixture
def toy_benchmark():
    register_benchmark(TOY_BENCHMARK)
    yield TOY_BENCHMARK
    BENCHMARKS.pop(TOY_BENCHMARK.name, None)


def _toy_colour_data(folder: Path) -> Path:
    import json

    rows = []
    for i in range(6):
        colour = TOY_COLOURS[i % 3]
        image = Image.new("RGB", (64, 64), (128, 128, 128))
        image.paste({"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}[colour], (16, 16, 48, 48))
        image.save(folder / f"square{i}.png")
        colours = list(TOY_COLOURS[i % 3:] + TOY_COLOURS[:i % 3])[::-1]   # the right one in any place
        rows.append({"id": f"q{i}", "image": f"square{i}.png", "ask": "What colour is the square?",
                     "colours": colours, "colour": colour})
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def test_eval_scores_a_registered_benchmark_through_the_cli(toy_benchmark, tmp_path: Path) -> None:
    import json

    data = _toy_colour_data(tmp_path)
    code, stdout, stderr = invoke("eval", data, "--benchmark", "toy-color", "--target", "openai:m",
                                  "--out", tmp_path / "typo")
    assert code != 0 and "choose one of: pope," in stderr and "toy-colour" in stderr   # the registry's names
    out = tmp_path / "run"
    code, stdout, stderr = invoke(
        "eval", data, "--benchmark", "toy-colour", "--target", f"clip-zeroshot:{SMALL_CLIP}", "--out", out,
        "--conditions", "original,api", "--model", SMALL_CLIP, "--device", "cpu", "--quiet")
    assert code == 0, stderr
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    rows = {row["id"]: row for row in map(json.loads, data.read_text().splitlines())}
    assert len(predictions) == 12 and all(p["error"] is None for p in predictions)  # the toy's prompt was asked
    assert all(p["score"] == toy_colour_score(p["answer"], rows[p["id"]]) for p in predictions)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "toy-colour" and summary["settings"]["data"]["question_column"] == "ask"
    for condition in ("original", "api"):
        scores = [p["score"] for p in predictions if p["condition"] == condition]
        assert summary["conditions"][condition]["metrics"] == {"hits": sum(scores) / len(scores)}
    assert "hits" in summary["delta"] and (out / "chart.png").exists()

    BENCHMARKS.pop("toy-colour")     # unregistered: the CLI no longer takes it, in one line
    code, stdout, stderr = invoke("eval", data, "--benchmark", "toy-colour", "--target", "openai:m",
                                  "--out", tmp_path / "again")
    assert code != 0 and "unknown benchmark 'toy-colour'" in stderr and not (tmp_path / "again").exists()
