"""``evaluate`` and ``api-prompt eval``: outputs, failed calls, data formats, resuming after kill -9."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from api_prompt.errors import ConfigError
from api_prompt.evaluation import evaluate

REPO = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{REPO / 'assets' / 'synthshapes-clip'}"


def _executable() -> str | None:
    beside_python = Path(sys.executable).with_name("api-prompt")
    return str(beside_python) if beside_python.exists() else shutil.which("api-prompt")


EXECUTABLE = _executable()
needs_executable = pytest.mark.skipif(
    EXECUTABLE is None, reason="api-prompt is not installed (pip install -e .)"
)


def _pope_data(folder: Path, n: int = 12) -> Path:
    """n bright/dark images; the label says yes for bright ones."""
    rows = []
    for i in range(n):
        level = 200 if i % 2 else 40
        Image.new("RGB", (8, 8), (level, level, level)).save(folder / f"{i}.png")
        rows.append(
            {
                "id": f"q{i}",
                "image": f"{i}.png",
                "question": "Is it bright?",
                "answer": "yes" if i % 2 else "no",
                "category": "odd" if i % 3 else "third",
            }
        )
    path = folder / "pope.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bright(image, question):
    return "Yes." if image.getpixel((0, 0))[0] > 128 else "No, it is not."


def invert(image, query):
    return ImageOps.invert(image)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_outputs_follow_the_evaluation_contract(tmp_path):
    data = _pope_data(tmp_path)
    summary = evaluate(data, "pope", bright, tmp_path / "out", prompter=invert, batch_size=5)
    lines = _lines(tmp_path / "out" / "predictions.jsonl")
    assert len(lines) == 24
    assert {tuple(sorted(k for k in line if k != "index")) for line in lines} == {
        ("answer", "condition", "error", "id", "score")
    }
    assert {(row["id"], row["condition"]) for row in lines} == {
        (f"q{i}", c) for i in range(12) for c in ("original", "api")
    }
    # the bright-detector is always right on the original and always wrong on the inverted image
    assert summary["conditions"]["original"]["metrics"]["accuracy"] == 1.0
    assert summary["conditions"]["api"]["metrics"]["accuracy"] == 0.0
    delta = summary["delta"]["accuracy"]
    assert delta["value"] == -1.0 and delta["ci95"] == [-1.0, -1.0]
    assert delta["p_value"] == pytest.approx(2 / 2**12)  # 12 discordant pairs, all one way
    assert summary["delta"]["f1"]["p_value"] is None
    assert "odd/accuracy" in summary["conditions"]["api"]["metrics"]
    stored = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert stored == json.loads(json.dumps(summary))
    assert set(stored) >= {"benchmark", "target", "settings", "conditions", "delta"}
    assert (tmp_path / "out" / "chart.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "| accuracy | 1.0000 | 0.0000 | -1.0000 |" in report and "chart.png" in report


@pytest.mark.slow
def test_a_failed_target_call_is_an_error_left_out_of_both_conditions(tmp_path):
    data = _pope_data(tmp_path)
    seen = []

    def flaky(image, question):
        seen.append(image.getpixel((0, 0)))
        if image.getpixel((0, 0))[0] == 255 - 200:  # the inverted bright images fail
            raise RuntimeError("HTTP 500 from the server")
        return bright(image, question)

    summary = evaluate(data, "pope", flaky, tmp_path / "out", prompter=invert, batch_size=4)
    lines = _lines(tmp_path / "out" / "predictions.jsonl")
    failed = [row for row in lines if row["error"]]
    assert len(failed) == 6 and all(
        row["condition"] == "api" and "HTTP 500" in row["error"] for row in failed
    )
    assert all(row["score"] is None and row["answer"] is None for row in failed)
    assert (
        summary["conditions"]["api"]["errors"] == 6
        and summary["conditions"]["original"]["errors"] == 0
    )
    assert summary["conditions"]["original"]["n"] == summary["conditions"]["api"]["n"] == 6
    # only the dark images are left in both conditions: the original answers them all right
    assert summary["conditions"]["original"]["metrics"]["accuracy"] == 1.0


def test_condition_subsets_and_bad_arguments(tmp_path):
    data = _pope_data(tmp_path)
    summary = evaluate(data, "pope", bright, tmp_path / "a", conditions="original")
    assert list(summary["conditions"]) == ["original"] and summary["delta"] == {}
    with pytest.raises(ConfigError, match="unknown condition 'prompted'"):
        evaluate(data, "pope", bright, tmp_path / "b", conditions="original,prompted")
    with pytest.raises(ConfigError, match="unknown benchmark"):
        evaluate(data, "nope", bright, tmp_path / "c")
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for row in rows:
        row.pop("answer")
    (tmp_path / "noanswer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ConfigError, match="needs the field 'answer'"):
        evaluate(tmp_path / "noanswer.jsonl", "gqa", bright, tmp_path / "d")
    assert not (tmp_path / "d").exists()  # refused before any output or model


def test_a_changed_parameter_is_refused_on_resume(tmp_path):
    data = _pope_data(tmp_path)
    evaluate(data, "pope", bright, tmp_path / "out", prompter=invert, limit=4)
    with pytest.raises(ConfigError, match="different parameters"):
        evaluate(data, "pope", bright, tmp_path / "out", prompter=invert, limit=6)
    summary = evaluate(
        data, "pope", bright, tmp_path / "out", prompter=invert, limit=6, overwrite=True
    )
    assert summary["conditions"]["api"]["n"] == 6


def test_the_evaluation_folder_follows_the_batch_folder_rules(tmp_path):
    """One run folder (api_prompt.runs) for batch and eval: a folder an evaluation did not write is
    refused and left as it was; a second run at the same time is refused; a resumed run deletes
    the temporary files a killed one left and cuts its half-written last line."""
    from api_prompt.runs import lock_folder

    data = _pope_data(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/draft.txt").write_text("")
    with pytest.raises(ConfigError, match="not empty and holds no eval_run.json"):
        evaluate(data, "pope", bright, tmp_path / "notes", prompter=invert, overwrite=True)
    assert (tmp_path / "notes/draft.txt").exists()

    out = tmp_path / "out"
    whole = evaluate(data, "pope", bright, out, prompter=invert, limit=4)
    held = lock_folder(out, "test")
    try:
        with pytest.raises(ConfigError, match="another evaluation is writing to"):
            evaluate(data, "pope", bright, out, prompter=invert, limit=4)
    finally:
        held.close()
    lines = (out / "predictions.jsonl").read_text().splitlines(keepends=True)
    (out / "predictions.jsonl").write_text("".join(lines[:-1]) + lines[-1][:20])  # killed mid-line
    (out / ".eval_run.json.tmp").write_text("{")  # and mid-write
    resumed = evaluate(data, "pope", bright, out, prompter=invert, limit=4)
    assert not (out / ".eval_run.json.tmp").exists()
    assert _lines(out / "predictions.jsonl")[-1] == json.loads(lines[-1])
    assert resumed == whole


def test_a_stopped_run_resumes_to_the_same_summary(tmp_path):
    data = _pope_data(tmp_path, n=20)
    whole = evaluate(data, "pope", bright, tmp_path / "whole", prompter=invert, batch_size=3)
    calls = []

    def stops(image, question):
        calls.append(1)
        if len(calls) > 7:
            raise KeyboardInterrupt
        return bright(image, question)

    with pytest.raises(KeyboardInterrupt):
        evaluate(
            data, "pope", stops, tmp_path / "part", prompter=invert, batch_size=3, target_name="t"
        )
    partial = _lines(tmp_path / "part" / "predictions.jsonl")
    assert 0 < len(partial) < 40
    resumed = evaluate(
        data, "pope", bright, tmp_path / "part", prompter=invert, batch_size=3, target_name="t"
    )
    assert len(_lines(tmp_path / "part" / "predictions.jsonl")) == 40
    assert resumed["conditions"] == whole["conditions"] and resumed["delta"] == whole["delta"]


# -- data formats --------------------------------------------------------------------------------


def _png_b64(colour) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_vlmevalkit_tsv_with_circular_variants(tmp_path):
    red, blue = _png_b64((230, 20, 20)), _png_b64((20, 20, 230))
    header = ["index", "image", "question", "A", "B", "C", "answer", "category"]
    rows = [  # question 1 in two circular variants (the options rotate), question 2 once
        [1, red, "Which colour?", "red", "blue", "green", "A", "colour"],
        [
            1000001,
            "1",
            "Which colour?",
            "blue",
            "green",
            "red",
            "C",
            "colour",
        ],  # image by reference
        [2, blue, "Which colour?", "red", "blue", "green", "B", "colour"],
    ]
    path = tmp_path / "MMBench.tsv"
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))

    def says_red(image, question):
        return "The answer is A" if "A. red" in question else "red"

    summary = evaluate(path, "mcq", says_red, tmp_path / "out", conditions="original")
    metrics = summary["conditions"]["original"]["metrics"]
    # rows 1 and 1000001 right ("A", then "red" -> C), row 2 wrong: accuracy 2/3, circular 1/2
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["circular_accuracy"] == pytest.approx(1 / 2)


@pytest.mark.slow
def test_lmms_eval_layout_dataset_folder_and_parquet(tmp_path):
    datasets = pytest.importorskip(
        "datasets", reason="pip install '.[datasets]' to read datasets folders"
    )
    images = [Image.new("RGB", (8, 8), (i * 40, 0, 0)) for i in range(4)]
    table = {
        "question_id": [10, 11, 12, 13],
        "question": ["What number?"] * 4,
        "image": images,
        "answers": [["two"] * 10, ["2"] * 3 + ["3"] * 7, ["a dog"] * 10, ["cat"] * 10],
    }
    features = datasets.Features(
        {
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
            "answers": datasets.Sequence(datasets.Value("string")),
        }
    )
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.save_to_disk(str(tmp_path / "textvqa"))
    dataset.to_parquet(str(tmp_path / "textvqa.parquet"))
    replies = {0: "2", 40: "two", 80: "Dog.", 120: "cats"}
    target = lambda image, question: replies[image.getpixel((0, 0))[0]]  # noqa: E731
    for data in (tmp_path / "textvqa", tmp_path / "textvqa.parquet"):
        summary = evaluate(
            data, "textvqa", target, tmp_path / f"out-{data.suffix or 'hf'}", conditions="original"
        )
        # "two" vs three 2s and seven 3s: leaving out a 2 -> 2/3, leaving out a 3 -> 1
        expected = (1 + (3 * 2 / 3 + 7 * 1) / 10 + 1 + 0) / 4
        assert summary["conditions"]["original"]["metrics"]["vqa_accuracy"] == pytest.approx(
            expected
        )
        ids = [
            row["id"]
            for row in _lines(tmp_path / f"out-{data.suffix or 'hf'}" / "predictions.jsonl")
        ]
        assert ids == ["10", "11", "12", "13"]  # question_id is the id in the lmms-eval layout


# -- the command line -----------------------------------------------------------------------------


def _synthshapes(folder: Path, n: int) -> Path:
    from benchmarks.synthshapes.mcq import write_benchmark

    return write_benchmark(folder, n)


def _eval_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        EXECUTABLE,
        "eval",
        str(data),
        "--benchmark",
        "synthshapes-mcq",
        "--target",
        f"clip-zeroshot:{CLIP}",
        "--model",
        CLIP,
        "--device",
        "cpu",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@needs_executable
@pytest.mark.installed
@pytest.mark.slow
def test_cli_resumes_after_kill_9_to_the_same_summary(tmp_path):
    import torch

    from api_prompt import Prompter
    from api_prompt.targets import create_target

    data = _synthshapes(tmp_path / "data", 60)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses run (OMP_NUM_THREADS=1)
    try:
        whole = evaluate(
            data,
            "synthshapes-mcq",
            create_target(f"clip-zeroshot:{CLIP}", device="cpu"),
            tmp_path / "whole",
            prompter=Prompter(model=CLIP, device="cpu", batch_size=4),
            batch_size=4,
            generation={"max_new_tokens": 64},
        )
    finally:
        torch.set_num_threads(threads)

    out = tmp_path / "killed"
    process = subprocess.Popen(
        _eval_command(data, out, "--batch-size", "4"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    predictions = out / "predictions.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if predictions.exists() and predictions.read_bytes().count(b"\n") >= 16:
            break
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    written = predictions.read_bytes().count(b"\n")
    assert 16 <= written < 120, "the run was not stopped in the middle"
    assert not (out / "summary.json").exists()

    resumed = subprocess.run(
        _eval_command(data, out, "--batch-size", "4"),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    lines = _lines(predictions)
    assert len({(row["id"], row["condition"]) for row in lines}) == 120
    first = json.loads(json.dumps(whole))
    second = json.loads((out / "summary.json").read_text())
    assert second["conditions"] == first["conditions"] and second["delta"] == first["delta"]
    assert second["conditions"]["api"]["n"] == 60 and second["conditions"]["api"]["errors"] == 0


@pytest.mark.parametrize(
    "args, words, installed",
    [
        (["--benchmark", "mmvet"], ["mmvet", "--judge"], False),  # judge-scored: needs --judge
        (["--benchmark", "pope", "--conditions", "original,prompted"], ["prompted"], False),
        (["--benchmark", "pope", "--target", "nope:x"], ["unknown target"], True),
        (["--benchmark", "gqa"], ["answer"], True),  # the data has no ground truth
    ],
)
def test_cli_bad_input_is_one_error_line(tmp_path, args, words, installed):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"id": 1, "image": "a.png", "question": "q"}) + "\n"
    )
    command = [
        "eval",
        str(tmp_path / "d.jsonl"),
        "--out",
        str(tmp_path / "out"),
        "--target",
        "openai:gpt-4o-mini",
        *args,
    ]
    if installed:
        if EXECUTABLE is None:
            pytest.skip("api-prompt is not installed (pip install -e .)")
        result = subprocess.run(
            [EXECUTABLE, *command], capture_output=True, text=True, env=_env(), timeout=300
        )
        code, stderr = result.returncode, result.stderr
    else:
        from typer.testing import CliRunner

        from api_prompt.cli.app import app

        result = CliRunner().invoke(app, command)
        code, stderr = result.exit_code, result.stderr
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert not (tmp_path / "out").exists()  # refused before writing or loading anything


@pytest.mark.slow
def test_clip_zeroshot_target_picks_the_closest_option_caption():
    from api_prompt.errors import TargetError
    from api_prompt.evaluation.data import EvalSample, target_prompt
    from api_prompt.targets import create_target
    from api_prompt.targets.clip_zeroshot import parse_options
    from benchmarks.synthshapes.mcq import make_question

    target = create_target(f"clip-zeroshot:{CLIP}", device="cpu")
    rows, scenes = zip(*(make_question(i) for i in range(8)))
    questions = [
        target_prompt("synthshapes-mcq", EvalSample(i, r["id"], None, r["question"], r))
        for i, r in enumerate(rows)
    ]
    assert parse_options(questions[0]) == {k: rows[0][k] for k in "ABCD"}
    answers = target([s.image for s in scenes], questions)
    assert all(a in "ABCD" for a in answers)
    assert (
        sum(a == r["answer"] for a, r in zip(answers, rows)) >= 6
    )  # the small CLIP is good at this
    with pytest.raises(TargetError, match="multiple choice only"):
        target([scenes[0].image], ["What colour is the circle?"])


def test_bare_question_asks_the_question_as_the_data_has_it_and_a_resume_must_agree(tmp_path):
    """``bare_question``: no answer-format instruction and no options reach the target; the choice
    is part of the run's parameters, and a default run records nothing (earlier runs resume)."""
    rows = []
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(
            {
                "id": f"q{i}",
                "image": f"{i}.png",
                "question": f" What is shown {i}? ",
                "answer": "A",
                "A": "red",
                "B": "blue",
            }
        )
    data = tmp_path / "mcq.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked = []

    def target(image, question):
        asked.append(question)
        return "red"

    summary = evaluate(
        data, "mcq", target, tmp_path / "bare", conditions=["original"], bare_question=True
    )
    assert asked == [r["question"] for r in rows]  # exactly, whitespace and all
    assert summary["settings"]["bare_question"] is True
    assert (
        summary["conditions"]["original"]["metrics"]["accuracy"] == 1.0
    )  # "red" is option A's text
    stored = json.loads((tmp_path / "bare" / "eval_run.json").read_text())
    assert stored["parameters"]["settings"]["bare_question"] is True
    with pytest.raises(ConfigError, match="bare_question"):
        evaluate(data, "mcq", target, tmp_path / "bare", conditions=["original"])

    asked.clear()
    summary = evaluate(data, "mcq", target, tmp_path / "default", conditions=["original"])
    assert "bare_question" not in summary["settings"]
    assert (
        asked[0] == "Question: What is shown 0?\nOptions:\nA. red\nB. blue\n"
        "Please select the correct answer from the options above."
    )
