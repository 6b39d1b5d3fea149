"""wrap(target, prompter) with a plain callable and with each target, and ``api-prompt ask``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api_prompt.attribution.base import AttentionMap, Attributor
from api_prompt.errors import ConfigError
from api_prompt.images import load_image
from api_prompt.prompter import Prompter
from api_prompt.targets import CallableTarget, OpenAITarget, PromptedTarget, as_target, wrap
from test_targets_openai import KEY, FakeOpenAI, error, request_images

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "clip_reference"
CLIP_MODEL = f"local-dir:{FIXTURE / 'model'}"
IMAGE = FIXTURE / "images" / "wide.png"


class GradientAttributor(Attributor):
    """A fake auxiliary model: a left-to-right ramp over a 4×4 grid, whatever the query."""

    name = "gradient"

    def __init__(self) -> None:
        self.calls = 0

    def attribute(self, images, queries):
        self.calls += 1
        mask = np.tile(np.linspace(0, 1, 4, dtype=np.float32), (4, 1))
        return [
            AttentionMap(
                mask=mask, parts={}, image_size=img.size, region=(0, 0, *img.size), query=q
            )
            for img, q in zip(images, queries)
        ]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.fixture
def fake_prompter():
    return Prompter(attributor=GradientAttributor())


@pytest.fixture(scope="module")
def clip_prompter():
    return Prompter(model=CLIP_MODEL, layer=4, device="cpu")


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as fake:
        yield fake


# -- plain callables ---------------------------------------------------------------------------


def test_plain_callable_sees_the_prompted_image(fake_prompter):
    seen = []

    def target(image, question):
        seen.append((image, question))
        return f"  {question} ok "

    image = load_image(IMAGE)
    ask = wrap(target, fake_prompter)
    assert ask(image, "Where?") == "Where? ok"
    expected = fake_prompter(image, "Where?").image
    assert np.array_equal(pixels(seen[0][0]), pixels(expected))
    assert not np.array_equal(pixels(seen[0][0]), pixels(image))  # it really was prompted
    assert np.array_equal(pixels(ask.last_prompted[0]), pixels(expected))


def test_both_mode_shows_original_then_prompted(fake_prompter):
    seen = []
    ask = wrap(lambda images, question: seen.append(images) or "two", fake_prompter, mode="both")
    image = load_image(IMAGE)
    assert ask(image, "Where?") == "two"
    original, prompted = seen[0]
    assert np.array_equal(pixels(original), pixels(image))
    assert np.array_equal(pixels(prompted), pixels(fake_prompter(image, "Where?").image))


def test_batch_prompts_in_one_call_and_keeps_order(fake_prompter):
    ask = wrap(lambda image, question: question[::-1], fake_prompter)
    images = [
        load_image(FIXTURE / "images" / name) for name in ("square.png", "tall.png", "wide.png")
    ]
    assert ask.batch(images, ["abc", "de", "f"]) == ["cba", "ed", "f"]
    assert fake_prompter.attributor.calls == 1  # one batched attribution for the three images
    assert ask.batch(images[:2], "same") == ["emas", "emas"]


def test_prompter_may_be_a_plain_function_and_options_pass_through():
    received = {}

    def target(image, question, **generation):
        received.update(generation)
        return str(image.getpixel((0, 0)))

    ask = wrap(
        target, lambda image, question: Image.new("RGB", image.size, "blue"), max_new_tokens=9
    )
    assert ask(Image.new("RGB", (3, 3)), "colour?", temperature=0.5) == "(0, 0, 255)"
    assert received == {"max_new_tokens": 9, "temperature": 0.5}


def test_wrap_rejects_bad_input(fake_prompter):
    with pytest.raises(ConfigError, match="mode"):
        wrap(lambda i, q: "", fake_prompter, mode="original")
    with pytest.raises(ConfigError, match="cannot use"):
        wrap(42, fake_prompter)
    with pytest.raises(ConfigError, match="empty"):
        wrap(lambda i, q: "", fake_prompter)(Image.new("RGB", (2, 2)), "  ")
    assert isinstance(as_target(lambda i, q: ""), CallableTarget)


# -- real targets ------------------------------------------------------------------------------


@pytest.mark.slow
def test_openai_target_receives_exactly_the_prompted_pixels(server, clip_prompter):
    ask = wrap(OpenAITarget("test", base_url=server.base_url), clip_prompter)
    assert isinstance(ask, PromptedTarget)
    image = load_image(IMAGE)
    assert ask(image, "a red circle") == "echo: a red circle"
    (sent,) = request_images(server.requests[0])
    expected = clip_prompter(image, "a red circle").image
    assert np.array_equal(pixels(sent), pixels(expected))


def test_openai_target_both_mode(server, fake_prompter):
    ask = wrap(OpenAITarget("test", base_url=server.base_url), fake_prompter, mode="both")
    image = load_image(IMAGE)
    ask(image, "q")
    original, prompted = request_images(server.requests[0])
    assert np.array_equal(pixels(original), pixels(image))
    assert np.array_equal(pixels(prompted), pixels(fake_prompter(image, "q").image))


def test_hf_target_answers_on_the_prompted_image(fake_prompter):
    pytest.importorskip("transformers")
    from api_prompt.targets import HFTarget
    from tiny_vlms import tiny_qwen2_vl

    model, processor = tiny_qwen2_vl()
    target = HFTarget(model, processor, max_new_tokens=4)
    image = load_image(IMAGE)
    prompted = fake_prompter(image, "What?").image
    assert wrap(target, fake_prompter)(image, "What?") == target.ask(prompted, "What?")
    both = wrap(target, fake_prompter, mode="both")
    assert both(image, "What?") == target.ask([image, prompted], "What?")


# -- the command line --------------------------------------------------------------------------


def api_prompt_command() -> list[str]:
    script = Path(sys.executable).with_name("api-prompt")
    if script.exists():
        return [str(script)]
    found = shutil.which("api-prompt")
    if found is None:
        pytest.skip("the api-prompt command is not installed (pip install -e .)")
    return [found]


def run_ask(*args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    if key:
        env["OPENAI_API_KEY"] = key
    return subprocess.run(
        [*api_prompt_command(), "ask", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_cli_ask_no_api_sends_the_original(server):
    done = run_ask(
        str(IMAGE),
        "What is here?",
        "--target",
        "openai:test",
        "--base-url",
        server.base_url,
        "--no-api",
        "--max-new-tokens",
        "5",
        key=KEY,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: What is here?"
    (request,) = server.requests
    assert request["json"]["max_tokens"] == 5
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    (sent,) = request_images(request)
    assert np.array_equal(pixels(sent), pixels(load_image(IMAGE)))


@pytest.mark.slow
def test_cli_ask_sends_the_prompted_image(server, clip_prompter, tmp_path):
    saved = tmp_path / "seen.png"
    done = run_ask(
        str(IMAGE),
        "a red circle",
        "--target",
        "openai:test",
        "--base-url",
        server.base_url,
        "--model",
        CLIP_MODEL,
        "--layer",
        "4",
        "--device",
        "cpu",
        "-q",
        "--save-prompted",
        str(saved),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "echo: a red circle"
    (sent,) = request_images(server.requests[0])
    expected = pixels(clip_prompter(load_image(IMAGE), "a red circle").image)
    assert np.array_equal(pixels(sent), expected)
    assert np.array_equal(pixels(Image.open(saved)), expected)


@pytest.mark.slow
def test_cli_ask_errors_are_one_line_without_the_key(server):
    server.script = [(401, {}, error(f"Incorrect API key provided: {KEY}"))]
    done = run_ask(
        str(IMAGE),
        "q",
        "--target",
        "openai:test",
        "--base-url",
        server.base_url,
        "--no-api",
        key=KEY,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: authentication failed")
    assert KEY not in done.stderr + done.stdout
    bad = run_ask(str(IMAGE), "q", "--target", "nope:x", "--no-api")
    assert bad.returncode == 2 and "unknown target" in bad.stderr


@pytest.mark.slow
def test_cli_ask_with_a_hf_folder(tmp_path):
    from api_prompt.targets import HFTarget
    from tiny_vlms import tiny_qwen2_vl

    tiny_qwen2_vl(save_dir=tmp_path)
    expected = HFTarget(str(tmp_path), device="cpu", max_new_tokens=4).ask(
        load_image(IMAGE), "What?"
    )
    done = subprocess.run(
        [
            *api_prompt_command(),
            "ask",
            str(IMAGE),
            "What?",
            "--target",
            f"hf:{tmp_path}",
            "--no-api",
            "--device",
            "cpu",
            "--max-new-tokens",
            "4",
            "-q",
        ],
        capture_output=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode("utf-8", "replace").rstrip("\n") == expected
