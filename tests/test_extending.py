"""Extending api-prompt: each extension point takes a toy, defined in one place here and registered
once, and the command line uses it with no other change (docs/extending.md shows the same toys).

One section per extension point, each with its toy, its registration fixture (the registry is
restored afterwards) and its tests. The toy backend lives in tests/test_registry.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SMALL_CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"
SCENE = ROOT / "docs" / "images" / "scene.png"


def invoke(*args: str):
    """The CLI in this process: (exit code, stdout, stderr)."""
    from api_prompt.cli.app import app

    done = CliRunner().invoke(
        app, [str(arg) for arg in args], catch_exceptions=False, env={"COLUMNS": "200"}
    )
    return done.exit_code, done.stdout, done.stderr


# --------------------------------------------------------------------------------------------
# A target kind: one class, one register_target call


from api_prompt.targets import BaseTarget, TargetOption, TargetSpec, register_target  # noqa: E402
from api_prompt.targets.base import TARGETS  # noqa: E402


class ToyTarget(BaseTarget):
    """Answers with what it was shown: its name, then each image's size, ``times`` times."""

    def __init__(
        self, name: str, *, times: int = 1, shout: bool = False, repeat_question: bool = False
    ) -> None:
        self.name, self.times, self.shout, self.repeat_question = (
            name,
            times,
            shout,
            repeat_question,
        )

    def answer(self, images, questions, **generation):
        answers = []
        for image_list, question in zip(images, questions):
            sizes = " ".join(f"{image.width}x{image.height}" for image in image_list)
            text = " | ".join([f"{self.name}: {sizes}"] * self.times)
            text = f"{text} <{question}>" if self.repeat_question else text
            answers.append(text.upper() if self.shout else text)
        return answers


TOY_TARGET = TargetSpec(
    "toy",
    f"{__name__}:ToyTarget",
    "<name>: says the sizes of the images it was shown",
    options=(
        TargetOption("times", int, 1, "how often to say it"),
        TargetOption("shout", bool, False, "in capitals"),
        TargetOption("repeat_question", bool, False, "say the question it was asked too"),
    ),
)


@pytest.fixture
def toy_target():
    saved = dict(TARGETS)
    register_target(TOY_TARGET)
    yield TOY_TARGET
    TARGETS.clear()
    TARGETS.update(saved)


def test_ask_takes_a_registered_target_kind_and_its_typed_options(toy_target) -> None:
    code, stdout, stderr = invoke(
        "ask",
        SCENE,
        "what is here?",
        "--target",
        "toy:echo",
        "--no-api",
        "-T",
        "times=2",
        "-T",
        "shout=yes",
        "-q",
    )
    assert code == 0, stderr
    width, height = Image.open(SCENE).size
    assert stdout.strip() == f"ECHO: {width}X{height} | ECHO: {width}X{height}"


def test_the_target_kind_reaches_ask_help_and_its_mistakes_are_one_line(toy_target) -> None:
    _, help_text, _ = invoke("ask", "--help")
    help_text = " ".join(help_text.split())
    assert "toy:<name>: says the sizes of the images it was shown" in help_text
    assert "toy: times, shout, repeat_question" in help_text
    for args, words in [
        (["-T", "times=many"], "the toy target's option 'times' must be an integer, got 'many'"),
        (
            ["-T", "loud=1"],
            "the toy target takes no option 'loud'; it takes times, shout, repeat_question",
        ),
        (
            ["--base-url", "http://127.0.0.1:9/v1"],
            "--base-url only applies to --target openai:<model>",
        ),
    ]:
        code, _, stderr = invoke("ask", SCENE, "q", "--target", "toy:echo", "--no-api", *args)
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and words in lines[0], stderr


@pytest.mark.slow
def test_a_style_with_two_images_reaches_the_registered_target(toy_target) -> None:
    code, stdout, stderr = invoke(
        "ask",
        SCENE,
        "a red square",
        "--target",
        "toy:echo",
        "-m",
        SMALL_CLIP,
        "--device",
        "cpu",
        "--style",
        "crop",
        "-S",
        "crop_size=64",
        "-S",
        "zoom=48",
        "-q",
    )
    assert code == 0, stderr
    width, height = Image.open(SCENE).size
    assert stdout.strip() == f"echo: {width}x{height} 48x48"  # the original, then the zoomed crop


def _eval_answers(folder: Path) -> dict[str, str]:
    import json

    lines = (folder / "predictions.jsonl").read_text().splitlines()
    return {record["condition"]: record["answer"] for record in map(json.loads, lines)}


@pytest.mark.slow
def test_eval_takes_the_target_kind_styles_as_conditions_and_their_options(
    toy_target, tmp_path: Path
) -> None:
    import json

    data = tmp_path / "data.jsonl"
    data.write_text(
        json.dumps({"id": "a", "image": str(SCENE), "question": "What is red?", "answer": "square"})
        + "\n"
    )
    common = [
        data,
        "--benchmark",
        "gqa",
        "--target",
        "toy:echo",
        "-T",
        "repeat_question=true",
        "-q",
    ]
    code, _, stderr = invoke(
        "eval",
        *common,
        "--out",
        tmp_path / "styles",
        "--conditions",
        "original,crop",
        "-S",
        "crop_size=64",
        "-S",
        "zoom=48",
        "-m",
        SMALL_CLIP,
        "--device",
        "cpu",
    )
    assert code == 0, stderr
    width, height = Image.open(SCENE).size
    answers = _eval_answers(tmp_path / "styles")
    instruction = "Answer the question using a single word or phrase."
    assert answers == {
        "original": f"echo: {width}x{height} <What is red?\n{instruction}>",
        "crop": f"echo: {width}x{height} 48x48 <What is red?\n{instruction}>",
    }

    code, _, stderr = invoke(
        "eval", *common, "--out", tmp_path / "bare", "--conditions", "original", "--bare-question"
    )
    assert code == 0, stderr
    assert _eval_answers(tmp_path / "bare") == {
        "original": f"echo: {width}x{height} <What is red?>"
    }
    summary = json.loads((tmp_path / "bare" / "summary.json").read_text())
    assert summary["settings"]["bare_question"] is True


# --------------------------------------------------------------------------------------------
# A recipe: one function, one register_recipe call


def _inverted_class_map(psi_cls, *, coe: float, kernel_size: int):
    """The class-token map alone, turned upside down: high where CLIP looked least."""
    from api_prompt.maps import minmax

    return minmax(psi_cls, invert=True)


@pytest.fixture
def toy_recipe():
    from api_prompt.maps import RECIPES, Recipe, register_recipe

    saved = dict(RECIPES)
    recipe = register_recipe(
        Recipe("toy-inverted", ("psi_cls",), _inverted_class_map, "the class-token map, inverted")
    )
    yield recipe
    RECIPES.clear()
    RECIPES.update(saved)


@pytest.mark.slow
def test_prompt_takes_a_registered_recipe(toy_recipe, tmp_path: Path) -> None:
    from api_prompt import Prompter

    out = tmp_path / "toy.png"
    code, _, stderr = invoke(
        SCENE,
        "a red square",
        "-m",
        SMALL_CLIP,
        "--device",
        "cpu",
        "--recipe",
        "toy-inverted",
        "-o",
        out,
        "-q",
    )
    assert code == 0, stderr
    prompter = Prompter(model=SMALL_CLIP, device="cpu", recipe="toy-inverted")
    expected = prompter(SCENE, "a red square")
    assert expected.map.recipe == "toy-inverted"
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(expected.image))
    default = Prompter(model=SMALL_CLIP, device="cpu")(SCENE, "a red square").image
    assert not np.array_equal(
        np.asarray(default), np.asarray(expected.image)
    )  # the recipe mattered


def test_an_unknown_recipe_is_one_line_naming_the_registered_ones(toy_recipe) -> None:
    from api_prompt.maps import RECIPES

    code, _, stderr = invoke(SCENE, "q", "-m", SMALL_CLIP, "--device", "cpu", "--recipe", "nope")
    assert code == 2 and "toy-inverted" in RECIPES
    assert stderr.strip() == f"error: unknown recipe 'nope'; choose one of: {', '.join(RECIPES)}"


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
    "toy-colour",
    toy_colour_score,
    prompt=toy_colour_prompt,
    table=mean_score_table("hits"),
    primary="hits",
    data_options={"question_column": "ask"},
    help="toy-colour (which colour is the square)",
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
        image.paste(
            {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}[colour],
            (16, 16, 48, 48),
        )
        image.save(folder / f"square{i}.png")
        colours = list(TOY_COLOURS[i % 3 :] + TOY_COLOURS[: i % 3])[
            ::-1
        ]  # the right one in any place
        rows.append(
            {
                "id": f"q{i}",
                "image": f"square{i}.png",
                "ask": "What colour is the square?",
                "colours": colours,
                "colour": colour,
            }
        )
    data = folder / "toy.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.mark.slow
def test_eval_scores_a_registered_benchmark_through_the_cli(toy_benchmark, tmp_path: Path) -> None:
    import json

    data = _toy_colour_data(tmp_path)
    code, stdout, stderr = invoke(
        "eval", data, "--benchmark", "toy-color", "--target", "openai:m", "--out", tmp_path / "typo"
    )
    assert (
        code != 0 and "choose one of: pope," in stderr and "toy-colour" in stderr
    )  # the registry's names
    out = tmp_path / "run"
    code, stdout, stderr = invoke(
        "eval",
        data,
        "--benchmark",
        "toy-colour",
        "--target",
        f"clip-zeroshot:{SMALL_CLIP}",
        "--out",
        out,
        "--conditions",
        "original,api",
        "--model",
        SMALL_CLIP,
        "--device",
        "cpu",
        "--quiet",
    )
    assert code == 0, stderr
    predictions = [
        json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()
    ]
    rows = {row["id"]: row for row in map(json.loads, data.read_text().splitlines())}
    assert len(predictions) == 12 and all(
        p["error"] is None for p in predictions
    )  # the toy's prompt was asked
    assert all(p["score"] == toy_colour_score(p["answer"], rows[p["id"]]) for p in predictions)
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["benchmark"] == "toy-colour"
        and summary["settings"]["data"]["question_column"] == "ask"
    )
    for condition in ("original", "api"):
        scores = [p["score"] for p in predictions if p["condition"] == condition]
        assert summary["conditions"][condition]["metrics"] == {"hits": sum(scores) / len(scores)}
    assert "hits" in summary["delta"] and (out / "chart.png").exists()

    BENCHMARKS.pop("toy-colour")  # unregistered: the CLI no longer takes it, in one line
    code, stdout, stderr = invoke(
        "eval",
        data,
        "--benchmark",
        "toy-colour",
        "--target",
        "openai:m",
        "--out",
        tmp_path / "again",
    )
    assert (
        code != 0
        and "unknown benchmark 'toy-colour'" in stderr
        and not (tmp_path / "again").exists()
    )
