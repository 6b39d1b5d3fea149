"""A bounded loopback load test of the proxy: 64 concurrent clients, 1,000 requests.

Clients are the official ``openai`` SDK (``AsyncOpenAI``); the upstream echoes each request's
question and a fingerprint of the image it received. The auxiliary model is a fast fake (the
negative of the image), since this test is about the HTTP side and the micro-batcher: nothing
lost, nothing mixed up, every answer the one for its own request. That the upstream receives
exactly the CLIP-prompted pixels is tested in ``test_serve.py`` with the shipped small CLIP.
"""

from __future__ import annotations

import asyncio
import time

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

from api_prompt.serve import ServeConfig, create_app  # noqa: E402
from scripted_http import RawServer  # noqa: E402
from serve_support import echo_upstream, pixel_digest, png_data_url, random_image, running_proxy  # noqa: E402

CLIENTS = 64
REQUESTS = 1000


def negative(images, queries):
    return [Image.eval(image, lambda value: 255 - value) for image in images]


@pytest.mark.slow
def test_64_clients_1000_requests_nothing_lost_or_mixed_up():
    images = [random_image(i, (16 + i % 7, 12 + i % 5)) for i in range(REQUESTS)]
    urls = [png_data_url(image) for image in images]
    expected = [
        f"request {i}|{pixel_digest(negative([image], [''])[0])}" for i, image in enumerate(images)
    ]
    batch_sizes = []

    def run_batch(images, queries):
        batch_sizes.append(len(images))
        return negative(images, queries)

    with RawServer(default=echo_upstream) as upstream:
        config = ServeConfig(
            upstream=upstream.base_url, max_batch=16, max_wait_ms=5, max_queue=REQUESTS
        )
        with running_proxy(create_app(config=config, run_batch=run_batch)) as base_url:

            async def drive():
                client = openai.AsyncOpenAI(
                    base_url=base_url, api_key="unused", max_retries=0, timeout=60
                )
                todo = iter(range(REQUESTS))
                answers, latencies = {}, []

                async def one_client():
                    for i in todo:  # the shared iterator hands each request to exactly one client
                        started = time.perf_counter()
                        answer = await client.chat.completions.create(
                            model="m",
                            messages=[
                                {
                                    "role": "user",
                                    "content": [
                                        {"type": "text", "text": f"request {i}"},
                                        {"type": "image_url", "image_url": {"url": urls[i]}},
                                    ],
                                }
                            ],
                        )
                        latencies.append(time.perf_counter() - started)
                        answers[i] = answer.choices[0].message.content

                started = time.perf_counter()
                await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
                elapsed = time.perf_counter() - started
                await client.close()
                return answers, latencies, elapsed

            answers, latencies, elapsed = asyncio.run(drive())

    assert (
        len(answers) == REQUESTS and len(upstream.requests) == REQUESTS
    )  # nothing lost or doubled
    mixed = [i for i in range(REQUESTS) if answers[i] != expected[i]]
    assert mixed == []  # every answer is the one for its own question and its own image
    assert sum(batch_sizes) == REQUESTS and max(batch_sizes) > 1
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    print(
        f"\nload test: {CLIENTS} clients, {REQUESTS} requests in {elapsed:.2f} s "
        f"({REQUESTS / elapsed:.0f} req/s); latency p50 {p50:.1f} ms, p99 {p99:.1f} ms; "
        f"mean batch {np.mean(batch_sizes):.1f} images"
    )
