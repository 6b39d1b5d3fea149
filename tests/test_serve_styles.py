"""Prompt styles through the proxy (issue 24): the server's default style, a style per request in
the ``api_prompt`` field (the ``openai`` SDK's ``extra_body``), and that field attacked.

The upstream is a scripted server on 127.0.0.1 that records what it receives; the client is the
official ``openai`` SDK. What the upstream receives is compared with the Python API,
``Prompter(style=..., style_options=...)``, on the same image and question.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip(
    "starlette", reason="the proxy needs the serve extra: pip install -e '.[serve]'"
)
pytest.importorskip("uvicorn", reason="the proxy needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip(
    "openai", reason="the proxy tests use the openai SDK: pip install -e '.[dev]'"
)

from PIL import Image  # noqa: E402

from api_prompt import AttentionMap  # noqa: E402
from api_prompt.attribution.base import Attributor  # noqa: E402
from api_prompt.errors import ConfigError  # noqa: E402
from api_prompt.prompter import Prompter  # noqa: E402
from api_prompt.serve import ServeConfig, create_app  # noqa: E402
from scripted_http import RawServer  # noqa: E402
from serve_support import echo_upstream, png_data_url, random_image, running_proxy, sent_images  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"
SETTINGS = dict(model=CLIP, device="cpu", preset="llava-wild", kernel_size=1)
CROP = {"crop_size": 24, "zoom": 40}


class Corner(Attributor):
    """A model-free attributor: every map points at the top-left quarter (counts its calls)."""

    default_recipe = None

    def __init__(self) -> None:
        self.calls = 0

    def attribute(self, images, queries):
        self.calls += 1
        mask = np.zeros((4, 4), np.float32)
        mask[:2, :2] = 1.0
        return [AttentionMap(mask, {}, image.size, (0, 0, *image.size)) for image in images]


@pytest.fixture(scope="module")
def clip():
    return Prompter(**SETTINGS)


def sdk(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=60)


def message(text: str, *images: Image.Image, detail: str | None = None) -> dict:
    url = {"detail": detail} if detail else {}
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            *(
                {"type": "image_url", "image_url": {"url": png_data_url(image), **url}}
                for image in images
            ),
        ],
    }


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def expected(image: Image.Image, query: str, **options) -> list[Image.Image]:
    """What the Python API shows the target for ``image`` with the CLIP settings and ``options``."""
    return Prompter(**SETTINGS, **options)(image, query).images


def assert_same_images(received: list[Image.Image], wanted: list[Image.Image]) -> None:
    assert [image.size for image in received] == [image.size for image in wanted]
    for got, want in zip(received, wanted):
        assert np.array_equal(pixels(got), pixels(want))


# -- the server's default style --------------------------------------------------------------


@pytest.mark.slow
def test_a_crop_server_sends_the_original_and_the_crop_in_order_in_the_same_message(clip):
    image = random_image(3, (96, 64))
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            clip, ServeConfig(upstream=upstream.base_url), style="crop", style_options=CROP
        )
        with running_proxy(app) as base_url:
            sdk(base_url).chat.completions.create(
                model="m", messages=[message("What is red?", image, detail="high")]
            )
    (request,) = upstream.requests
    content = request["json"]["messages"][0]["content"]
    assert [part["type"] for part in content] == ["text", "image_url", "image_url"]
    assert [part["image_url"]["detail"] for part in content[1:]] == ["high", "high"]
    wanted = expected(image, "What is red?", style="crop", style_options=CROP)
    assert_same_images(sent_images(request), wanted)
    assert np.array_equal(
        pixels(sent_images(request)[0]), pixels(image)
    )  # first: the original itself
    assert sent_images(request)[1].size == (40, 40)  # then the zoomed crop


def test_each_image_of_a_message_is_followed_by_its_own_crop():
    first, second = random_image(5, (80, 80)), random_image(6, (60, 100))
    prompter = Prompter(attributor=Corner())
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            prompter, ServeConfig(upstream=upstream.base_url), style="crop", style_options=CROP
        )
        with running_proxy(app) as base_url:
            sdk(base_url).chat.completions.create(model="m", messages=[message("q", first, second)])
    wanted = [
        *Prompter(attributor=Corner(), style="crop", style_options=CROP)(first, "q").images,
        *Prompter(attributor=Corner(), style="crop", style_options=CROP)(second, "q").images,
    ]
    assert_same_images(sent_images(upstream.requests[0]), wanted)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("style", "options"), [("blur", {"blur": 0.1}), ("box", {"color": "#00ff00", "width": 3})]
)
def test_a_one_image_server_style_sends_the_python_apis_pixels(clip, style, options):
    image = random_image(7, (64, 48))
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            clip, ServeConfig(upstream=upstream.base_url), style=style, style_options=options
        )
        with running_proxy(app) as base_url:
            sdk(base_url).chat.completions.create(
                model="m", messages=[message("What is red?", image)]
            )
    assert_same_images(
        sent_images(upstream.requests[0]),
        expected(image, "What is red?", style=style, style_options=options),
    )


@pytest.mark.parametrize(
    ("style", "options", "words"),
    [
        ("zoom", None, "unknown style 'zoom'; choose one of: overlay, crop, blur, box"),
        ("crop", {"zoon": 3}, "no prompt style takes zoon"),
        ("crop", {"zoom": 0}, "zoom must be a positive number of pixels"),
        (
            "overlay",
            {"zoom": -1},
            "zoom must be a positive number of pixels",
        ),  # checked for every style
        ("box", {"color": "nocolour"}, "unknown color"),
        ("crop", ["zoom"], "style_options must be a dict"),
    ],
)
def test_a_bad_server_style_is_one_line_before_the_proxy_starts(style, options, words):
    with pytest.raises(ConfigError) as error:
        create_app(
            config=ServeConfig(upstream="http://127.0.0.1:9/v1"),
            run_batch=list,
            style=style,
            style_options=options,
        )
    assert words in str(error.value) and "\n" not in str(error.value)


# -- a style per request (extra_body) --------------------------------------------------------


@pytest.mark.slow
def test_extra_body_picks_the_style_for_one_request_and_never_goes_upstream(clip):
    image = random_image(8, (64, 48))
    with RawServer(default=echo_upstream) as upstream:
        with running_proxy(create_app(clip, ServeConfig(upstream=upstream.base_url))) as base_url:
            client = sdk(base_url)
            client.chat.completions.create(
                model="m",
                messages=[message("What is red?", image)],
                temperature=0.5,
                extra_body={"api_prompt": {"style": "crop", "style_options": CROP}, "top_k": 3},
            )
            client.chat.completions.create(
                model="m",
                messages=[message("What is red?", image)],
                extra_body={"api_prompt": {"style": "box", "style_options": {"width": 2}}},
            )
            client.chat.completions.create(
                model="m", messages=[message("What is red?", image)]
            )  # the default
    cropped, boxed, plain = upstream.requests
    assert {key: value for key, value in cropped["json"].items() if key != "messages"} == {
        "model": "m",
        "temperature": 0.5,
        "top_k": 3,
    }
    assert "api_prompt" not in boxed["json"] and "api_prompt" not in plain["json"]
    assert_same_images(
        sent_images(cropped), expected(image, "What is red?", style="crop", style_options=CROP)
    )
    assert_same_images(
        sent_images(boxed), expected(image, "What is red?", style="box", style_options={"width": 2})
    )
    assert_same_images(sent_images(plain), expected(image, "What is red?"))


@pytest.mark.slow
def test_a_request_style_starts_from_the_servers_settings_and_options(clip):
    """The server's background and its crop options hold for a request that names only the style."""
    image = random_image(9, (64, 48))
    prompter = Prompter(**SETTINGS, background=60)
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            prompter, ServeConfig(upstream=upstream.base_url), style_options={"zoom": 50}
        )
        with running_proxy(app) as base_url:
            client = sdk(base_url)
            client.chat.completions.create(model="m", messages=[message("q", image)])
            client.chat.completions.create(
                model="m",
                messages=[message("q", image)],
                extra_body={"api_prompt": {"style": "crop"}},
            )
            client.chat.completions.create(
                model="m",
                messages=[message("q", image)],
                extra_body={"api_prompt": {"style": "crop", "style_options": {"zoom": None}}},
            )
    overlaid, zoom50, zoom_default = upstream.requests
    assert_same_images(sent_images(overlaid), expected(image, "q", background=60))
    assert_same_images(
        sent_images(zoom50), expected(image, "q", style="crop", style_options={"zoom": 50})
    )
    assert_same_images(sent_images(zoom_default), expected(image, "q", style="crop"))


def test_api_prompt_is_taken_out_of_a_request_without_images():
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=list)
        with running_proxy(app) as base_url:
            done = httpx.post(
                base_url + "/chat/completions",
                timeout=30,
                json={
                    "model": "m",
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                    "api_prompt": {"style": "blur"},
                    "n": 1,
                },
            )
    assert done.status_code == 200
    assert upstream.requests[0]["json"] == {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "n": 1,
    }


def test_the_image_limit_counts_images_prompted_not_images_sent():
    """Crop sends two images per image but runs the model once per image, so a request fits the
    queue by the images it holds: two images with max_queue 2 pass (four go upstream), three do not."""
    images = [random_image(20 + i, (48, 48)) for i in range(3)]
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            Prompter(attributor=Corner()),
            ServeConfig(upstream=upstream.base_url, max_queue=2),
            style="crop",
            style_options=CROP,
        )
        with running_proxy(app) as base_url:
            client = sdk(base_url)
            client.chat.completions.create(model="m", messages=[message("q", *images[:2])])
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(model="m", messages=[message("q", *images)])
    assert len(sent_images(upstream.requests[0])) == 4 and len(upstream.requests) == 1
    assert refused.value.body["code"] == "too_many_images"


# -- the request field attacked --------------------------------------------------------------

MARKER = "sk-MARKER-7f3a"
BAD_CHOICES = [
    ("crop", "api_prompt must be an object"),
    ([{"style": "crop"}], "api_prompt must be an object"),
    ({"style": "crop", "extra": MARKER}, "api_prompt takes only 'style' and 'style_options'"),
    ({"style": MARKER}, "api_prompt.style must be one of: overlay, crop, blur, box"),
    ({"style": ["crop"]}, "api_prompt.style must be one of"),
    ({"style": {"name": "crop"}}, "api_prompt.style must be one of"),
    ({"style": "crop" + " " * 100_000}, "api_prompt.style must be one of"),
    (
        {"style": "crop", "style_options": [["zoom", 40]]},
        "api_prompt.style_options must be an object",
    ),
    ({"style": "crop", "style_options": MARKER}, "api_prompt.style_options must be an object"),
    (
        {"style": "crop", "style_options": {MARKER: 1}},
        "style 'crop' takes the options crop_size, zoom",
    ),
    ({"style": "crop", "style_options": {"width": 3}}, "style 'crop' takes the options"),
    (
        {"style": "crop", "style_options": {"zoom": 10**9}},
        "api_prompt.style_options.zoom must be a number of at most 4,096",
    ),
    ({"style": "crop", "style_options": {"zoom": -(10**30)}}, "must be a number of at most 4,096"),
    ({"style": "crop", "style_options": {"crop_size": 1e300}}, "must be a number of at most 4,096"),
    (
        {"style": "crop", "style_options": {"zoom": {"a": [1, {"b": MARKER}]}}},
        "api_prompt.style_options.zoom must be a number (at most 4,096) or a text",
    ),
    (
        {"style": "crop", "style_options": {"zoom": [448]}},
        "api_prompt.style_options.zoom must be a number",
    ),
    (
        {"style": "box", "style_options": {"color": MARKER * 10}},
        "api_prompt.style_options.color must be a number",
    ),
    (
        {"style": "crop", "style_options": {"zoom": "448"}},
        "zoom must be a positive number of pixels",
    ),
    (
        {"style": "crop", "style_options": {"zoom": 44.8}},
        "zoom must be a positive number of pixels",
    ),
    (
        {"style": "crop", "style_options": {"zoom": True}},
        "zoom must be a positive number of pixels",
    ),
    ({"style": "crop", "style_options": {"one_image": "both"}}, "unknown one_image"),
    ({"style": "crop", "style_options": {"geometry": 3}}, "unknown geometry"),
    ({"style": "box", "style_options": {"width": 0}}, "width must be a positive number of pixels"),
    ({"style": "box", "style_options": {"shape": "star"}}, "unknown shape"),
    ({"style": "box", "style_options": {"threshold": 2}}, "threshold must be in [0, 1]"),
    ({"style": "blur", "style_options": {"blur": 0}}, "blur must be a fraction"),
    ({"style": "overlay", "style_options": {"background": 256}}, "background"),
    ({"style": "overlay", "style_options": {"resample": "cubic-ish"}}, "resample"),
]


@pytest.mark.parametrize(("choice", "words"), BAD_CHOICES)
def test_a_bad_api_prompt_field_is_400_in_one_line_and_reaches_nothing(choice, words):
    attributor = Corner()
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(Prompter(attributor=attributor), ServeConfig(upstream=upstream.base_url))
        with running_proxy(app) as base_url:
            with pytest.raises(openai.BadRequestError) as refused:
                sdk(base_url).chat.completions.create(
                    model="m",
                    messages=[message("q", random_image(1))],
                    extra_body={"api_prompt": choice},
                )
    error = refused.value.body
    assert refused.value.status_code == 400 and error["code"] == "invalid_style"
    assert words in error["message"], error["message"]
    assert "\n" not in error["message"] and len(error["message"]) < 300
    assert MARKER not in json.dumps(error) and "Traceback" not in error["message"]
    assert error["param"].startswith("api_prompt")
    assert (
        upstream.connections == 0 and attributor.calls == 0
    )  # refused before the model or the upstream


@pytest.mark.parametrize(
    "raw",
    [
        b'"api_prompt": {"style": "blur", "style_options": {"blur": NaN}}',
        b'"api_prompt": {"style": "crop", "style_options": {"zoom": 1e999}}',
        b'"api_prompt": {"style": "crop", "style_options": {"zoom": -Infinity}}',
        b'"api_prompt": {"style": "crop", "style_options": {"zoom": ' + b"9" * 4000 + b"}}",
        b'"api_prompt": ' + b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_numbers_json_allows_but_no_style_takes_are_400_too(raw):
    attributor = Corner()
    body = (
        b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "q"}, '
        b'{"type": "image_url", "image_url": {"url": "'
        + png_data_url(random_image(1)).encode()
        + b'"}}]}], '
        + raw
        + b"}"
    )
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(Prompter(attributor=attributor), ServeConfig(upstream=upstream.base_url))
        with running_proxy(app) as base_url:
            done = httpx.post(
                base_url + "/chat/completions",
                content=body,
                timeout=30,
                headers={"content-type": "application/json"},
            )
    assert done.status_code == 400, done.text
    assert "\n" not in done.json()["error"]["message"]
    assert upstream.connections == 0 and attributor.calls == 0


def test_a_bad_api_prompt_field_is_refused_even_without_images():
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=list)
        with running_proxy(app) as base_url:
            done = httpx.post(
                base_url + "/chat/completions",
                timeout=30,
                json={
                    "model": "m",
                    "messages": [{"role": "user", "content": "hi"}],
                    "api_prompt": {"style": "zoom"},
                },
            )
    assert done.status_code == 400 and done.json()["error"]["code"] == "invalid_style"
    assert upstream.connections == 0
