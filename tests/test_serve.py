"""``api-prompt serve``: the proxy on a real uvicorn server, driven by the official ``openai`` SDK.

The upstream is a scripted server on 127.0.0.1 (:mod:`scripted_http`) that records what it
receives. The auxiliary model is the small CLIP shipped in ``assets/synthshapes-clip`` on CPU,
so "the upstream receives exactly the prompted image" is checked against ``api_prompt.prompt``
with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
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

from api_prompt import prompt  # noqa: E402
from api_prompt.prompter import Prompter  # noqa: E402
from api_prompt.serve import ServeConfig, create_app  # noqa: E402
from scripted_http import RawServer, _head, completion, not_http, redirect, respond  # noqa: E402
from serve_support import (  # noqa: E402
    echo_upstream,
    free_port,
    jpeg_data_url,
    pixel_digest,
    png_data_url,
    random_image,
    running_proxy,
    sent_images,
    sent_urls,
)

ROOT = Path(__file__).resolve().parents[1]
CLIP = f"local-dir:{ROOT / 'assets' / 'synthshapes-clip'}"
SETTINGS = dict(model=CLIP, device="cpu", preset="llava-wild", kernel_size=1)
KEY = "sk-proxy-CLIENT-KEY-0123"
UPSTREAM_KEY = "sk-upstream-SECRET-4567"


@pytest.fixture(scope="module")
def prompter():
    return Prompter(**SETTINGS)


def image_message(text: str, *images: Image.Image) -> dict:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            *({"type": "image_url", "image_url": {"url": png_data_url(image)}} for image in images),
        ],
    }


def sdk(base_url: str, key: str = "unused", **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30, **options)


def invert(images, queries):
    """A fake attributor for tests that are about the HTTP side: the 'prompted' image is the negative."""
    return [Image.eval(image, lambda value: 255 - value) for image in images]


# -- the prompted image ------------------------------------------------------------------------


@pytest.mark.slow
def test_upstream_receives_exactly_the_prompted_image_and_the_rest_unchanged(prompter):
    image = random_image(1, (64, 48))
    with RawServer(default=echo_upstream) as upstream:
        with running_proxy(
            create_app(prompter, ServeConfig(upstream=upstream.base_url))
        ) as base_url:
            raw = sdk(base_url).chat.completions.with_raw_response.create(
                model="Qwen2-VL-7B",
                temperature=0.25,
                max_tokens=9,
                seed=7,
                messages=[
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hello."},
                    {"role": "assistant", "content": "Hi."},
                    image_message("  What is red? ", image),
                ],
                extra_body={"top_k": 3, "mm_processor_kwargs": {"max_pixels": 1000}},
            )
    answer = raw.parse()
    (request,) = upstream.requests
    body = request["json"]
    expected = prompt(image, "What is red?", **SETTINGS)
    (received,) = sent_images(request)
    assert received.size == image.size
    assert np.array_equal(np.asarray(received), np.asarray(expected.convert("RGB")))
    assert not np.array_equal(np.asarray(received), np.asarray(image))  # it really was prompted
    # Everything but the image URL arrives as the client sent it.
    assert {k: v for k, v in body.items() if k != "messages"} == {
        "model": "Qwen2-VL-7B",
        "temperature": 0.25,
        "max_tokens": 9,
        "seed": 7,
        "top_k": 3,
        "mm_processor_kwargs": {"max_pixels": 1000},
    }
    assert body["messages"][:3] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."},
    ]
    assert body["messages"][3]["content"][0] == {"type": "text", "text": "  What is red? "}
    # The upstream's answer and headers come back as they are.
    assert answer.choices[0].message.content == "  What is red? |" + pixel_digest(expected)
    assert raw.headers["x-upstream"] == "echo"
    assert request["path"] == "/v1/chat/completions"


@pytest.mark.slow
def test_a_jpeg_goes_upstream_as_the_jpeg_of_exactly_the_prompted_image(prompter):
    import base64
    import io

    sent = jpeg_data_url(random_image(4, (64, 48)), quality=90)
    with Image.open(io.BytesIO(base64.b64decode(sent.split(",", 1)[1]))) as opened:
        decoded = opened.convert("RGB")
    expected = prompt(decoded, "What is red?", **SETTINGS)
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is red?"},
            {"type": "image_url", "image_url": {"url": sent}},
        ],
    }
    with RawServer(default=echo_upstream) as upstream:
        with running_proxy(
            create_app(prompter, ServeConfig(upstream=upstream.base_url))
        ) as base_url:
            sdk(base_url).chat.completions.create(model="m", messages=[message])
        with running_proxy(
            create_app(prompter, ServeConfig(upstream=upstream.base_url, jpeg_quality=None))
        ) as base_url:
            sdk(base_url).chat.completions.create(model="m", messages=[message])
    as_jpeg, as_png = upstream.requests
    buffer = io.BytesIO()
    expected.save(buffer, format="JPEG", quality=95)  # JPEG in, JPEG (quality 95) out
    (url,) = sent_urls(as_jpeg)
    assert url == "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    (received,) = sent_images(as_png)  # jpeg_quality=None: lossless, the prompted pixels exactly
    assert np.array_equal(np.asarray(received), np.asarray(expected.convert("RGB")))


def assert_prompted(received: Image.Image, image: Image.Image, query: str) -> None:
    """``received`` is ``prompt(image, query)`` up to float rounding. In a batch of several images
    the CLIP forward pass differs from the single-image one by ~1e-7 in the mask, which can move
    the 8-bit mask by one level at a few cells, and a pixel by a few gray levels after the
    Lanczos upsampling."""
    expected = np.asarray(prompt(image, query, **SETTINGS).convert("RGB")).astype(int)
    difference = np.abs(np.asarray(received).astype(int) - expected)
    assert received.size == image.size and difference.max() <= 4 and (difference > 0).mean() < 0.1


def recording(prompter, batches: list) -> dict:
    """The proxy's stages for ``prompter``, recording every model call's queries and prompted images."""
    from api_prompt.serve.app import prompter_stages

    attribute, render = prompter_stages(prompter)

    def run_and_record(images, queries):
        maps = attribute(images, queries)
        batches.append((list(queries), [render(image, amap) for image, amap in zip(images, maps)]))
        return maps

    return {"run_batch": run_and_record, "render": render}


@pytest.mark.slow
def test_several_images_and_messages_each_get_their_own_query(prompter):
    first, second = random_image(1, (64, 48)), random_image(2, (50, 70))
    batches = []
    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            config=ServeConfig(upstream=upstream.base_url), **recording(prompter, batches)
        )
        with running_proxy(app) as base_url:
            sdk(base_url).chat.completions.create(
                model="m",
                messages=[
                    image_message("What is red?", first, second),
                    {"role": "assistant", "content": "A circle."},
                    image_message("And blue?", second),
                ],
            )
    received = sent_images(upstream.requests[0])
    ((queries, prompted),) = batches  # one model call for the three images
    assert queries == ["What is red?", "What is red?", "And blue?"]
    for got, made in zip(received, prompted):  # exactly what the model call made, losslessly
        assert np.array_equal(np.asarray(got), np.asarray(made))
    for got, (image, query) in zip(
        received, [(first, queries[0]), (second, queries[1]), (second, queries[2])]
    ):
        assert_prompted(got, image, query)
    assert upstream.requests[0]["json"]["messages"][1] == {
        "role": "assistant",
        "content": "A circle.",
    }


@pytest.mark.slow
def test_requests_arriving_together_are_attributed_together(prompter):
    images = [random_image(10 + i, (40 + i, 32)) for i in range(6)]
    batches = []
    stages = recording(prompter, batches)
    record = stages["run_batch"]

    def first_call_waits_for_the_others(images, queries):
        if not batches:  # hold the model until every other request has queued up behind it
            _wait_for(lambda: len(images) + app.state.batcher.queued == 6, timeout=30)
        return record(images, queries)

    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            config=ServeConfig(upstream=upstream.base_url, max_batch=6, max_wait_ms=1500),
            run_batch=first_call_waits_for_the_others,
            render=stages["render"],
        )
        with running_proxy(app) as base_url:
            client = sdk(base_url)
            answers = [None] * 6

            def ask(i):
                answers[i] = (
                    client.chat.completions.create(
                        model="m", messages=[image_message(f"a red circle {i}", images[i])]
                    )
                    .choices[0]
                    .message.content
                )

            threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            sizes = app.state.batcher.batch_sizes
    assert (
        sum(sizes) == 6 and len(sizes) <= 2
    )  # those that queued meanwhile went through the model together
    made = {
        query: image for queries, prompted in batches for query, image in zip(queries, prompted)
    }
    for request in upstream.requests:
        i = int(request["json"]["messages"][0]["content"][0]["text"].rsplit(" ", 1)[1])
        (received,) = sent_images(request)
        assert answers[i] == f"a red circle {i}|" + pixel_digest(received)  # each answer is its own
        assert np.array_equal(np.asarray(received), np.asarray(made[f"a red circle {i}"]))
        assert_prompted(received, images[i], f"a red circle {i}")
    assert len(upstream.requests) == 6


def test_a_request_without_images_is_forwarded_byte_for_byte():
    with RawServer(default=respond(200, completion("plain"))) as upstream:
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            raw = b'{"model":"m",  "messages":[{"role":"user","content":"hi"}], "n": 1}'
            done = httpx.post(
                base_url + "/chat/completions",
                content=raw,
                headers={"content-type": "application/json"},
            )
    assert done.status_code == 200 and done.json()["choices"][0]["message"]["content"] == "plain"
    assert upstream.requests[0]["body"] == raw


# -- streaming, models, health -----------------------------------------------------------------


def test_streaming_passes_through_chunk_by_chunk():
    """The upstream sends event i+1 only after the client has received event i (or gives up)."""
    received = [threading.Event() for _ in range(4)]
    stalls = []

    def streaming(conn, request):
        conn.sendall(
            _head(
                200,
                {
                    "Content-Type": "text/event-stream",
                    "Transfer-Encoding": "chunked",
                    "X-Stream": "yes",
                    "Connection": "close",
                },
            )
        )
        for i, event in enumerate(received):
            chunk = {
                "id": "s",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": f"part{i} "}, "finish_reason": None}],
            }
            data = f"data: {json.dumps(chunk)}\n\n".encode()
            conn.sendall(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            if not event.wait(5):
                stalls.append(i)  # the proxy held the chunk back
        end = b"data: [DONE]\n\n"
        conn.sendall(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")

    with RawServer(default=streaming) as upstream:
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            stream = sdk(base_url).chat.completions.create(
                model="m", stream=True, messages=[image_message("q", random_image(0))]
            )
            parts = []
            for chunk in stream:
                parts.append(chunk.choices[0].delta.content)
                received[len(parts) - 1].set()
    assert parts == ["part0 ", "part1 ", "part2 ", "part3 "]
    assert stalls == []
    assert upstream.requests[0]["json"]["stream"] is True


def test_models_are_forwarded_and_health_is_local():
    listing = {
        "object": "list",
        "data": [{"id": "Qwen2-VL-7B", "object": "model", "owned_by": "vllm"}],
    }
    with RawServer(default=respond(200, listing)) as upstream:
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            assert [model.id for model in sdk(base_url).models.list()] == ["Qwen2-VL-7B"]
            health = httpx.get(base_url.removesuffix("/v1") + "/health")
            missing = httpx.post(base_url + "/embeddings", json={})
            wrong_method = httpx.request("OPTIONS", base_url + "/chat/completions")
    assert [r["path"] for r in upstream.requests] == ["/v1/models"]  # /health never reached it
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert missing.status_code == 404 and "not served" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


# -- errors ------------------------------------------------------------------------------------


@pytest.fixture
def echo_proxy():
    with RawServer(default=echo_upstream) as upstream:
        config = ServeConfig(
            upstream=upstream.base_url,
            max_image_bytes=50_000,
            max_body_bytes=200_000,
            max_image_pixels=100 * 100,
        )
        with running_proxy(create_app(config=config, run_batch=invert)) as base_url:
            yield base_url, upstream


def test_malformed_requests_and_bad_images_are_400(echo_proxy):
    base_url, upstream = echo_proxy
    bad_json = httpx.post(
        base_url + "/chat/completions",
        content=b'{"model": "m", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    client = sdk(base_url)
    cases = {
        "cannot load the image: not a recognised image": [
            {"type": "text", "text": "q"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}},
        ],
        "not valid base64": [
            {"type": "text", "text": "q"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,%%%"}},
        ],
        "not fetched": [
            {"type": "text", "text": "q"},
            {"type": "image_url", "image_url": {"url": "http://example.com/cat.png"}},
        ],
        "no text": [{"type": "image_url", "image_url": {"url": png_data_url(random_image(0))}}],
    }
    for expected, content in cases.items():
        with pytest.raises(openai.BadRequestError, match=expected) as caught:
            client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": content}]
            )
        assert caught.value.status_code == 400
        assert caught.value.body["param"] is not None  # names the part
    with pytest.raises(openai.BadRequestError, match="non-empty list"):
        client.chat.completions.create(model="m", messages=[])
    assert upstream.requests == []  # nothing bad was forwarded


def test_too_large_is_413(echo_proxy):
    base_url, upstream = echo_proxy
    client = sdk(base_url)
    noisy = random_image(1, (150, 150))  # > 50 kB as PNG, and more pixels than allowed
    big_pixels = Image.new("RGB", (101, 100))  # compresses to almost nothing
    for image, expected in ((noisy, "larger than the proxy's limit"), (big_pixels, "too large")):
        with pytest.raises(openai.APIStatusError, match=expected) as caught:
            client.chat.completions.create(model="m", messages=[image_message("q", image)])
        assert caught.value.status_code == 413
    body = httpx.post(base_url + "/chat/completions", content=b" " * 300_000)
    assert body.status_code == 413 and body.json()["error"]["code"] == "request_too_large"
    assert upstream.requests == []


def test_a_full_queue_is_429_with_retry_after():
    running, release = threading.Event(), threading.Event()

    def slow(images, queries):
        running.set()
        release.wait(20)
        return invert(images, queries)

    with RawServer(default=echo_upstream) as upstream:
        app = create_app(
            config=ServeConfig(upstream=upstream.base_url, max_batch=1, max_wait_ms=0, max_queue=1),
            run_batch=slow,
        )
        with running_proxy(app) as base_url:
            client = sdk(base_url)
            results = []
            threads = [
                threading.Thread(
                    target=lambda i=i: results.append(
                        client.chat.completions.create(
                            model="m", messages=[image_message(f"q{i}", random_image(i))]
                        )
                    )
                )
                for i in range(2)
            ]
            threads[0].start()
            assert running.wait(10)  # the first request holds the model
            threads[1].start()
            _wait_for(lambda: app.state.batcher.queued == 1)  # the second waits in the queue
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(
                    model="m", messages=[image_message("q", random_image(9))]
                )
            release.set()
            for thread in threads:
                thread.join(timeout=20)
    assert caught.value.status_code == 429
    assert int(caught.value.response.headers["retry-after"]) >= 1
    assert caught.value.body["code"] == "queue_full"
    assert len(results) == 2 and len(upstream.requests) == 2  # the queued ones still got through


@pytest.mark.slow
def test_upstream_unreachable_is_502_and_too_slow_is_504():
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with running_proxy(
        create_app(config=ServeConfig(upstream=closed), run_batch=invert)
    ) as base_url:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk(base_url).chat.completions.create(
                model="m", messages=[image_message("q", random_image(0))]
            )
        assert (
            caught.value.status_code == 502 and caught.value.body["code"] == "upstream_unreachable"
        )
    with RawServer(default=not_http()) as upstream:  # something else listens there
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            with pytest.raises(openai.APIStatusError) as caught:
                sdk(base_url).models.list()
            assert caught.value.status_code == 502

    def hang(conn, request):
        time.sleep(3)

    with RawServer(default=hang) as upstream:
        config = ServeConfig(upstream=upstream.base_url, upstream_timeout=0.5)
        with running_proxy(create_app(config=config, run_batch=invert)) as base_url:
            start = time.monotonic()
            with pytest.raises(openai.APIStatusError) as caught:
                sdk(base_url).chat.completions.create(
                    model="m", messages=[image_message("q", random_image(0))]
                )
            assert time.monotonic() - start < 2.5
    assert caught.value.status_code == 504 and caught.value.body["code"] == "upstream_timeout"


def test_upstream_errors_come_back_as_they_are():
    error = {"error": {"message": "model overloaded", "type": "server_error", "code": "overloaded"}}
    with RawServer(
        default=respond(429, error, {"Retry-After": "7", "X-Request-Id": "up-1"})
    ) as upstream:
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            with pytest.raises(openai.RateLimitError) as caught:
                sdk(base_url).chat.completions.create(
                    model="m", messages=[image_message("q", random_image(0))]
                )
    assert caught.value.body == error["error"]
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.response.headers["x-request-id"] == "up-1"


# -- keys --------------------------------------------------------------------------------------


def test_client_key_is_required_and_never_forwarded_and_the_upstream_key_is_sent(caplog):
    with RawServer(default=echo_upstream) as upstream:
        config = ServeConfig(upstream=upstream.base_url, api_key=KEY, upstream_api_key=UPSTREAM_KEY)
        assert KEY not in repr(config) and UPSTREAM_KEY not in repr(config)
        with (
            caplog.at_level(logging.DEBUG),
            running_proxy(create_app(config=config, run_batch=invert)) as base_url,
        ):
            with pytest.raises(openai.AuthenticationError) as caught:
                sdk(base_url, key="sk-wrong").chat.completions.create(
                    model="m", messages=[image_message("q", random_image(0))]
                )
            assert (
                caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
            )
            keyless = httpx.post(
                base_url + "/chat/completions",  # the SDK always sends a key
                json={"model": "m", "messages": [image_message("q", random_image(0))]},
            )
            assert (
                keyless.status_code == 401
                and keyless.json()["error"]["type"] == "authentication_error"
            )
            with pytest.raises(openai.AuthenticationError):
                sdk(base_url, key="sk-wrong").models.list()
            assert upstream.requests == []
            answer = sdk(base_url, key=KEY).chat.completions.create(
                model="m", messages=[image_message("q", random_image(0))]
            )
            assert answer.choices[0].message.content.startswith("q|")
            assert (
                httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200
            )  # no key needed
    (request,) = upstream.requests
    assert request["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert KEY not in json.dumps(request["headers"]) + request["body"].decode()
    assert KEY not in caplog.text and UPSTREAM_KEY not in caplog.text


def test_without_proxy_keys_the_clients_own_key_passes_through():
    with RawServer(default=echo_upstream) as upstream:
        with running_proxy(
            create_app(config=ServeConfig(upstream=upstream.base_url), run_batch=invert)
        ) as base_url:
            sdk(base_url, key="sk-users-own").chat.completions.create(
                model="m", messages=[image_message("q", random_image(0))]
            )
    assert upstream.requests[0]["headers"]["authorization"] == "Bearer sk-users-own"


# -- http(s) image URLs ------------------------------------------------------------------------


def test_url_fetch_with_limits_and_no_redirect_to_private_addresses():
    """An operator-allowed internal host (127.0.0.1) is fetched; a redirect to another loopback name
    is not; every failure reads the same (the hostile cases are in test_serve_security.py)."""
    image = random_image(5)
    png = png_data_url(image)
    import base64

    image_bytes = base64.b64decode(png.split(",", 1)[1])
    with RawServer(default=echo_upstream) as upstream, RawServer() as images:
        config = ServeConfig(
            upstream=upstream.base_url,
            allow_url_fetch=True,
            max_image_bytes=len(image_bytes),
            fetch_timeout=0.5,
            allow_private_fetch=("127.0.0.1",),
        )
        with running_proxy(create_app(config=config, run_batch=invert)) as base_url:
            client = sdk(base_url)

            def ask(url):
                return client.chat.completions.create(
                    model="m",
                    messages=[
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "q"},
                                {"type": "image_url", "image_url": {"url": url}},
                            ],
                        }
                    ],
                )

            images.script = [respond(200, image_bytes, {"Content-Type": "image/png"})]
            answer = ask(images.origin + "/cat.png").choices[0].message.content
            assert answer == "q|" + pixel_digest(invert([image], ["q"])[0])
            failures = []
            images.script = [
                redirect(302, f"http://localhost:{images.port}/cat.png")
            ]  # not an allowed host
            failures.append(ask_failure(ask, images.origin + "/moved.png"))
            images.script = [respond(200, image_bytes + b"x" * 10, {"Content-Type": "image/png"})]
            failures.append(ask_failure(ask, images.origin + "/big.png"))
            images.script = [respond(404, b"no")]
            failures.append(ask_failure(ask, images.origin + "/missing.png"))
            images.script = [lambda conn, request: time.sleep(3)]
            started = time.monotonic()
            failures.append(ask_failure(ask, images.origin + "/slow.png"))
            assert time.monotonic() - started < 2.5
    assert {(error.status_code, error.body["code"]) for error in failures} == {
        (400, "image_fetch_failed")
    }
    (message,) = {error.body["message"] for error in failures}
    assert "within 0.5 s" in message and f"at most {len(image_bytes):,} bytes" in message
    assert [r["path"] for r in images.requests] == [
        "/cat.png",
        "/moved.png",
        "/big.png",
        "/missing.png",
        "/slow.png",
    ]
    assert len(upstream.requests) == 1


def ask_failure(ask, url) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        ask(url)
    return caught.value


# -- the command and graceful shutdown ---------------------------------------------------------


def _wait_for(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def refused(url: str) -> bool:
    """True when the server no longer serves new requests.

    A connection that reached the listening socket just before it closed is then dropped
    without a response (uvicorn closes connections with no request in progress), so a
    dropped or reset connection counts as refused, as a refused connect does.
    """
    try:
        httpx.get(url, timeout=1)
    except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
        return True
    return False


def test_serve_command_rejects_bad_options_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    for args, expected in (
        (["--upstream", "ftp://x"], "--upstream must be"),
        (["--upstream", "http://x/v1", "-k", "4"], "kernel"),
        (["--upstream", "http://x/v1", "--api-key", "sk-a b"], "API key"),
    ):
        done = CliRunner().invoke(app, ["serve", *args])
        assert done.exit_code == 2, done.stderr
        assert done.stderr.startswith("error: ") and expected in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "sk-a b" not in done.stderr


@pytest.mark.slow
def test_sigterm_finishes_requests_in_flight_then_exits():
    """A real ``api-prompt serve`` process: SIGTERM while four requests wait on a slow upstream."""
    arrived = threading.Semaphore(0)

    def slow_echo(conn, request):
        arrived.release()
        time.sleep(2.5)
        echo_upstream(conn, request)

    executable = Path(sys.executable).with_name("api-prompt")
    if not executable.exists():
        pytest.skip("the api-prompt command is not installed (pip install -e .)")
    with RawServer(default=slow_echo) as upstream:
        env = {**os.environ, "API_PROMPT_UPSTREAM_KEY": UPSTREAM_KEY, "OMP_NUM_THREADS": "1"}
        process = subprocess.Popen(
            [
                str(executable),
                "serve",
                "--upstream",
                upstream.base_url,
                "--port",
                "0",
                "--model",
                CLIP,
                "--device",
                "cpu",
                "--api-key",
                KEY,
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            line = ""
            while "Serving" not in line:
                line = process.stderr.readline()
                assert line, "the server exited before serving"
            base_url = re.search(r"(http://\S+/v1)", line).group(1)
            log = []
            threading.Thread(target=lambda: log.extend(process.stderr), daemon=True).start()
            _wait_for(
                lambda: httpx.get(base_url.removesuffix("/v1") + "/health").status_code == 200,
                timeout=30,
            )

            client = sdk(base_url, key=KEY)
            answers = {}
            threads = [
                threading.Thread(
                    target=lambda i=i: answers.__setitem__(
                        i,
                        client.chat.completions.create(
                            model="m", messages=[image_message(f"question {i}", random_image(i))]
                        )
                        .choices[0]
                        .message.content,
                    )
                )
                for i in range(4)
            ]
            for thread in threads:
                thread.start()
            for _ in range(4):  # all four are at the upstream: in flight
                assert arrived.acquire(timeout=30)
            process.send_signal(signal.SIGTERM)
            _wait_for(
                lambda: refused(base_url.removesuffix("/v1") + "/health"), timeout=2
            )  # no longer accepting
            assert answers == {}  # ... while the four are still in flight
            for thread in threads:
                thread.join(timeout=30)
            assert process.wait(timeout=30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    assert sorted(answers) == [0, 1, 2, 3]
    for i, answer in answers.items():
        expected = prompt(random_image(i), f"question {i}", model=CLIP, device="cpu")
        assert answer == f"question {i}|" + pixel_digest(expected)
    assert KEY not in "".join(log) and UPSTREAM_KEY not in "".join(log)
