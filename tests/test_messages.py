"""What the command line says, and how soon: advice in the words of where it is read, mistakes
refused before any model library is imported, help that teaches.

The fail-fast checks run the command in a fresh Python process and report which model libraries
that process had imported when it exited: a check that needs no model must leave torch,
open_clip and transformers unimported (importing them is what made a typo cost 30 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
SMALL_CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"
SCENE = ROOT / "docs" / "images" / "scene.png"
HEAVY = ("torch", "open_clip", "transformers")

#: Runs the CLI in-process in a fresh interpreter, then prints the heavy modules it imported.
_PROBE = """
import sys
from api_prompt.cli.app import main
sys.argv[0] = "api-prompt"
try:
    main()
finally:
    print("IMPORTED", [name for name in {heavy!r} if name in sys.modules], file=sys.stderr)
"""


def run_fresh(*args: str, cwd: Path, env: dict | None = None) -> tuple[int, str, list[str]]:
    """(exit code, the stderr lines before the probe's, the heavy modules imported)."""
    done = subprocess.run(
        [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    lines = done.stderr.strip().splitlines()
    imported = eval(lines[-1].removeprefix("IMPORTED "))  # our own print of a list of str
    return done.returncode, "\n".join(lines[:-1]), imported


def invoke(*args: str):
    from cli.app import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    shutil.copyfile(SCENE, tmp_path / "scene.png")
    return tmp_path


# --------------------------------------------------------------------------------------------
# Fail fast: refused before torch, open_clip or transformers is imported


FAST_REFUSALS = [
    pytest.param(
        ["missing.png", "a red square"], ["missing.png", "no such file"], id="missing-image"
    ),
    pytest.param(
        ["https://example.com/a.jpg", "q"],
        ["https://example.com/a.jpg", "is a URL", "download it first"],
        id="url",
    ),
    pytest.param(["scene.png", "q", "--device", "gpu"], ["unknown device 'gpu'"], id="device"),
    pytest.param(["scene.png", "q", "--dtype", "fp8"], ["unknown dtype"], id="dtype"),
    pytest.param(
        ["scene.png", "q", "-m", "local-dir:/no/such/folder"],
        ["'/no/such/folder' does not exist", "--model local-dir:FOLDER"],
        id="missing-local-dir",
    ),
    pytest.param(
        ["scene.png", "q", "--pretrained", "/no/such/weights.pt"],
        ["does not exist"],
        id="missing-checkpoint",
    ),
    pytest.param(["scene.png", "q", "-k", "4"], ["kernel"], id="even-kernel"),
    pytest.param(["scene.png", "q", "--backend", "nope"], ["unknown backend"], id="backend"),
    pytest.param(
        ["ask", "scene.png", "Which shape?", "--target", f"clip-zeroshot:{SMALL_CLIP}"],
        ["multiple choice only", "A. text"],
        id="ask-clip-zeroshot-without-options",
    ),
    pytest.param(
        ["ask", "scene.png", "q", "--target", "nope:model"], ["nope"], id="ask-target-kind"
    ),
    pytest.param(["batch", "missing.jsonl", "--out", "out"], ["missing.jsonl"], id="batch-input"),
    pytest.param(
        ["scene.png", "q", "--backend", "llava", "-m", "synthshapes"],
        ["built-in", "--backend clip"],
        id="builtin-model-on-a-decoder-backend",
    ),
    pytest.param(
        ["scene.png", "q", "--style", "zoom"],
        ["unknown style 'zoom'", "overlay, crop, blur, box"],
        id="style",
    ),
    pytest.param(
        ["scene.png", "q", "--style", "crop", "-S", "crop_size=big"],
        ["the crop style's option 'crop_size' must be an integer, got 'big'"],
        id="style-option-type",
    ),
    pytest.param(
        ["scene.png", "q", "--style", "crop", "-S", "one_image=both"],
        ["unknown one_image 'both'"],
        id="style-option-value",
    ),
    pytest.param(
        ["batch", "missing.jsonl", "--out", "out", "--style", "blur", "-S", "zoom=2"],
        ["no style in use takes the option 'zoom'", "blur: blur"],
        id="batch-style-option-of-another-style",
    ),
    pytest.param(
        ["ask", "scene.png", "q", "--target", "openai:m", "-T", "max_concurrency=many"],
        ["the openai target's option 'max_concurrency' must be an integer"],
        id="ask-target-option",
    ),
    pytest.param(
        [
            "eval",
            "missing.jsonl",
            "--benchmark",
            "gqa",
            "--target",
            "openai:m",
            "--out",
            "out",
            "--conditions",
            "original,crop",
            "-S",
            "width=3",
        ],
        ["no style in use takes the option 'width'", "crop: crop_size, zoom, one_image"],
        id="eval-style-option-of-no-condition",
    ),
    pytest.param(
        ["eval", "missing.jsonl", "--benchmark", "nope", "--target", "openai:m", "--out", "out"],
        ["unknown benchmark 'nope'", "pope"],
        id="eval-benchmark",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize("args, words", FAST_REFUSALS)
def test_mistakes_are_refused_before_any_model_library_loads(
    workdir: Path, args: list[str], words: list[str]
) -> None:
    code, stderr, imported = run_fresh(*args, cwd=workdir)
    line = one_error_line(stderr)
    assert code == 2
    for word in words:
        assert word in line, (word, line)
    assert imported == [], f"imported {imported} before refusing"
    assert sorted(path.name for path in workdir.iterdir()) == ["scene.png"]  # nothing written


@pytest.mark.slow
def test_a_folder_given_as_model_gets_command_line_advice(workdir: Path) -> None:
    folder = workdir / "my-model"
    folder.mkdir()
    code, stderr, imported = run_fresh("scene.png", "q", "-m", str(folder), cwd=workdir)
    line = one_error_line(stderr)
    assert code == 2 and imported == []
    assert f"--model local-dir:{folder}" in line
    assert "model=" not in line


def test_the_same_mistake_in_python_gets_python_advice(tmp_path: Path) -> None:
    from api_prompt.errors import ConfigError
    from api_prompt.hub import check_model_name

    with pytest.raises(ConfigError, match=r"load it with model='local-dir:"):
        check_model_name(str(tmp_path), open_clip=True)
    from api_prompt.attribution.clip.loading import resolve_name  # the loader says the same

    with pytest.raises(ConfigError, match=r"load it with model='local-dir:"):
        resolve_name(str(tmp_path), None)


def test_python_advice_is_said_as_options() -> None:
    from cli.common import for_command_line

    options = {"model": "--model", "pretrained": "--pretrained", "image_root": "--image-root"}
    said = for_command_line(
        "use model='hf-hub:org/repo' or model='ViT-B-16', pretrained='/p/w x.pt'; image_root=FOLDER; "
        "HF_HUB_OFFLINE=1; a=b",
        options,
    )
    assert said == (
        "use --model hf-hub:org/repo or --model ViT-B-16, --pretrained '/p/w x.pt'; --image-root FOLDER; "
        "HF_HUB_OFFLINE=1; a=b"
    )


@pytest.mark.slow
def test_offline_advice_on_the_command_line_names_options(workdir: Path) -> None:
    """The default model's weights are not on this machine: the offline message, in CLI words."""
    code, stderr, _ = run_fresh(
        "scene.png", "a red square", "-q", cwd=workdir, env={"HF_HUB_OFFLINE": "1"}
    )
    line = one_error_line(stderr)
    assert code == 2
    assert "HF_HUB_OFFLINE" in line and "--model local-dir:" in line and "model='" not in line


@pytest.mark.slow
def test_batch_rerun_with_other_parameters_is_refused_before_the_model_loads(workdir: Path) -> None:
    (workdir / "questions.jsonl").write_text(
        json.dumps({"id": "a", "image": "scene.png", "question": "a red square"}) + "\n"
    )
    first = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from api_prompt.cli.app import main; sys.argv[0]='api-prompt'; main()",
            "batch",
            "questions.jsonl",
            "--out",
            "done",
            "-m",
            SMALL_CLIP,
            "--device",
            "cpu",
            "-q",
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stderr
    code, stderr, imported = run_fresh(
        "batch", "questions.jsonl", "--out", "done", "-m", SMALL_CLIP, "--enhance", "3", cwd=workdir
    )
    line = one_error_line(stderr)
    assert code == 2 and imported == []
    assert (
        "different parameters" in line
        and "prompter.enhance: 10.0 -> 3.0" in line
        and "--overwrite" in line
    )


# --------------------------------------------------------------------------------------------
# Batch messages: the resolved path, --image-root, and counts in the right number


def test_a_missing_relative_image_names_the_resolved_path_in_python(tmp_path: Path) -> None:
    from api_prompt.batch.sources import resolve_image
    from api_prompt.errors import ImageLoadError

    with pytest.raises(ImageLoadError) as caught:
        resolve_image("a.png", tmp_path)
    message = str(caught.value)
    assert str((tmp_path / "a.png").resolve()) in message
    assert "image_root=" in message and "--image-root" not in message


def test_a_url_in_a_dataset_is_said_to_be_a_url(tmp_path: Path) -> None:
    from api_prompt.batch.sources import resolve_image
    from api_prompt.errors import ImageLoadError

    with pytest.raises(
        ImageLoadError,
        match=r"'https://example.com/a.jpg': URLs are not supported, download it first",
    ):
        resolve_image("https://example.com/a.jpg", tmp_path)


@pytest.mark.slow
def test_batch_failure_names_the_resolved_path_and_image_root(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "q.jsonl").write_text(
        json.dumps({"id": "a", "image": "a.png", "question": "a red square"}) + "\n"
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from api_prompt.cli.app import main; sys.argv[0]='api-prompt'; main()",
            "batch",
            "data/q.jsonl",
            "--out",
            "out",
            "-m",
            SMALL_CLIP,
            "--device",
            "cpu",
            "-q",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1
    line = one_error_line(done.stderr)
    assert line.startswith("error: 1 sample failed:")
    assert str((tmp_path / "data" / "a.png").resolve()) in line
    assert "--image-root FOLDER" in line and "image_root=" not in line


def test_counts_take_the_right_number() -> None:
    from cli.batch import failure_message
    from cli.common import plural

    assert [plural(n, "sample") for n in (0, 1, 2)] == ["0 samples", "1 sample", "2 samples"]
    one = SimpleNamespace(
        error=1,
        permanent=1,
        transient=0,
        failed_total=1,
        not_exported="",
        errors=[("a", "cannot load image 'a.png'")],
    )
    assert failure_message(one, Path("out")).startswith("error: 1 sample failed: 1 with bad input")
    two = SimpleNamespace(**{**vars(one), "error": 2, "permanent": 2})
    assert failure_message(two, Path("out")).startswith("error: 2 samples failed: 2 with bad input")


# --------------------------------------------------------------------------------------------
# Help that teaches


def test_root_help_shows_usage_commands_backends_presets_and_where_to_read() -> None:
    from api_prompt.attribution.registry import BACKENDS
    from api_prompt.presets import PRESETS

    result = invoke("--help")
    assert result.exit_code == 0
    text = result.stdout
    assert "api-prompt IMAGE QUERY" in text and "-m synthshapes" in text
    for name in ("prompt", "batch", "merge", "ask", "eval", "serve", "playground", "examples"):
        assert f" {name} " in text, name
    assert all(name in text for name in BACKENDS) and all(name in text for name in PRESETS)
    assert "docs/getting-started.md" in text
    assert "<bool>" not in text


@pytest.mark.parametrize("command", ["prompt", "batch", "merge", "ask", "eval", "examples"])
def test_each_command_help_has_an_example_and_no_type_labels_on_flags(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"api-prompt {command}" in result.stdout.replace(
        "api-prompt example:", ""
    )
    assert "<bool>" not in result.stdout


def test_ask_help_says_what_each_target_kind_expects() -> None:
    text = " ".join(invoke("ask", "--help").stdout.split())
    for kind in ("hf:", "openai:", "clip-zeroshot:"):
        assert kind in text
    assert "'A. text'" in text and "multiple choice only" in text


@pytest.mark.parametrize("command", ["prompt", "batch", "ask", "eval", "serve", "playground"])
def test_every_command_that_makes_a_prompt_teaches_the_same_prompt_options(command: str) -> None:
    from api_prompt.attribution.registry import BACKENDS
    from api_prompt.styles import STYLES

    text = " ".join(invoke(command, "--help").stdout.split())
    for flag in (
        "--backend",
        "--backend-option",
        "--model",
        "--layer",
        "--preset",
        "--enhance",
        "--kernel-size",
        "--resample",
        "--background",
        "--geometry",
        "--device",
        "--dtype",
        "--recipe",
        "--style",
        "--style-option",
    ):
        assert f"{flag} " in text, (command, flag)
    assert all(f"{name}:" in text for name in STYLES)  # --style's choices, from the registry
    assert "crop: crop_size, zoom, one_image" in text and "one_image=side-by-side|crop" in text
    assert all(f"{name}:" in text for name in BACKENDS)


@pytest.mark.parametrize(
    "args, command",
    [
        (["scene.png"], "prompt"),
        (["batch", "x.jsonl"], "batch"),
        (["ask", "scene.png", "q"], "ask"),
    ],
)
def test_a_missing_argument_points_at_the_command_help(args: list[str], command: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.endswith(f"(see 'api-prompt {command} --help')")


def test_examples_are_listed_and_copied(tmp_path: Path) -> None:
    from api_prompt.hub import EXAMPLES

    result = invoke("examples", "--copy", str(tmp_path))
    assert result.exit_code == 0
    assert sorted(path.stem for path in tmp_path.iterdir()) == sorted(EXAMPLES)
    assert all(
        f'example:{name} "{question}"' in result.stdout for name, question in EXAMPLES.items()
    )
