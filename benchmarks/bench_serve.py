"""Proxy throughput and added latency (``api-prompt serve``) vs. ``api-prompt batch``.

Everything runs on this machine over loopback, with the small CLIP shipped in
``assets/synthshapes-clip`` on CPU (``--model`` to change it):

- a **fast upstream** (a subprocess answering every chat completion at once with a fixed reply,
  after reading the whole request);
- the **proxy**, ``api-prompt serve`` as users start it (a subprocess), in front of it;
- **clients** in this process: ``--clients`` concurrent asyncio httpx clients, each request one
  generated photo (JPEG data URL, ``--size``) and one question.

Measured, interleaved over ``--repeats`` rounds (medians reported):

1. **proxy throughput**: requests/s through the proxy with ``--clients`` clients;
2. **batch throughput**: samples/s of :func:`api_prompt.batch.run` (what ``api-prompt batch``
   runs) on the same photos and questions, at the same batch size (``--max-batch``);
3. **added latency at one client**: median latency through the proxy minus median latency
   straight to the upstream, one request at a time; compared with the **attribution time** of
   one image (``Prompter.attribute`` on an image already decoded, median), and broken down
   into the per-image work around the model, done as the proxy does it (JPEG decode, overlay,
   encoding: a JPEG of quality 95 for these JPEG inputs, see ``api_prompt/serve/render.py``) and
   the rest.

Targets: proxy throughput >= 0.8 × batch throughput; added latency <= attribution + 15 ms.

Usage::

    python benchmarks/bench_serve.py                          # 32 clients, batch 8, 640x480
    python benchmarks/bench_serve.py --requests 256 --repeats 3 --max-batch 16
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench_batch import QUERIES, make_dataset  # noqa: E402

REPLY = json.dumps(
    {
        "id": "bench",
        "object": "chat.completion",
        "model": "bench",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
    }
).encode()


# -- the fast upstream (run as `python bench_serve.py --upstream-port PORT`) -------------------


async def _upstream_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 keep-alive: read each request whole, answer the fixed completion."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(REPLY)).encode()
                + b"\r\n\r\n"
                + REPLY
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def serve_upstream(port: int) -> None:
    async def main():
        server = await asyncio.start_server(_upstream_connection, "127.0.0.1", port, limit=2**24)
        print("upstream ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# -- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def chat_body(data_url: str, question: str) -> bytes:
    return json.dumps(
        {
            "model": "bench",
            "max_tokens": 8,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": question},
                        {"type": "image_url", "image_url": {"url": data_url}},
                    ],
                }
            ],
        }
    ).encode()


async def drive(url: str, bodies: list[bytes], clients: int) -> tuple[float, list[float]]:
    """Send every body with ``clients`` concurrent clients; (seconds, per-request latencies)."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        todo = iter(bodies)
        latencies: list[float] = []

        async def one_client():
            for body in todo:
                started = time.perf_counter()
                response = await client.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                latencies.append(time.perf_counter() - started)
                if response.status_code != 200:
                    raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        return time.perf_counter() - started, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=f"local-dir:{REPO / 'assets' / 'synthshapes-clip'}")
    parser.add_argument(
        "--requests", type=int, default=128, help="requests (and batch samples) per round"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--max-batch", type=int, default=8, help="proxy --max-batch and batch --batch-size"
    )
    parser.add_argument("--max-wait-ms", type=float, default=10.0)
    parser.add_argument(
        "--png-compression",
        type=int,
        default=1,
        help="the proxy's --png-compression (used for PNG inputs only; these photos are JPEGs)",
    )
    parser.add_argument("--latency-requests", type=int, default=40)
    parser.add_argument("--size", default="640x480", help="WxH of the generated photos")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved rounds; medians are reported"
    )
    parser.add_argument("--upstream-port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_port:
        serve_upstream(args.upstream_port)
        return
    size = tuple(int(v) for v in args.size.lower().split("x"))

    import torch

    from api_prompt.batch import run
    from api_prompt.images import load_image
    from api_prompt.prompter import Prompter
    from api_prompt.serve.app import prompter_stages
    from api_prompt.serve.render import encode_like

    folder = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    processes: list[subprocess.Popen] = []
    try:
        source = make_dataset(folder / "data", args.requests, size)
        rows = [json.loads(line) for line in source.read_text().splitlines()]
        bodies = []
        for row in rows:
            encoded = base64.b64encode((source.parent / row["image"]).read_bytes()).decode()
            bodies.append(chat_body("data:image/jpeg;base64," + encoded, row["question"]))

        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("API_PROMPT_UPSTREAM_KEY", None)
        upstream_port, proxy_port = free_port(), free_port()
        upstream = subprocess.Popen(
            [sys.executable, __file__, "--upstream-port", str(upstream_port)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        processes.append(upstream)
        upstream.stdout.readline()
        api_prompt = Path(sys.executable).with_name("api-prompt")
        proxy = subprocess.Popen(
            [
                str(api_prompt if api_prompt.exists() else "api-prompt"),
                "serve",
                "--upstream",
                f"http://127.0.0.1:{upstream_port}/v1",
                "--port",
                str(proxy_port),
                "--model",
                args.model,
                "--device",
                "cpu",
                "--max-batch",
                str(args.max_batch),
                "--max-wait-ms",
                str(args.max_wait_ms),
                "--png-compression",
                str(args.png_compression),
                "--max-queue",
                str(max(256, args.requests)),
                "-q",
            ],
            stderr=subprocess.DEVNULL,
            env=env,
        )
        processes.append(proxy)
        prompter = Prompter(model=args.model, device="cpu")
        _, render = prompter_stages(prompter)  # the proxy's own overlay
        proxy_url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        direct_url = f"http://127.0.0.1:{upstream_port}/v1/chat/completions"
        _wait_until_serving(proxy_url)

        jpeg = (source.parent / rows[0]["image"]).read_bytes()
        photo = load_image(jpeg)
        asyncio.run(drive(proxy_url, bodies[: args.clients], args.clients))  # warm up
        run(
            source,
            folder / "warm",
            prompter,
            batch_size=args.max_batch,
            progress=False,
            limit=args.max_batch,
        )

        proxy_rates, batch_rates, proxy_latency, direct_latency, attribution, image_work = (
            [],
            [],
            [],
            [],
            [],
            [],
        )
        for repeat in range(args.repeats):  # interleaved, so load drifts hit every mode alike
            seconds, _ = asyncio.run(drive(proxy_url, bodies, args.clients))
            proxy_rates.append(len(bodies) / seconds)

            started = time.perf_counter()
            summary = run(
                source, folder / f"out{repeat}", prompter, batch_size=args.max_batch, progress=False
            )
            batch_rates.append(summary.ok / (time.perf_counter() - started))

            single = bodies[: args.latency_requests]
            _, through = asyncio.run(drive(proxy_url, single, 1))
            _, direct = asyncio.run(drive(direct_url, single, 1))
            proxy_latency.append(statistics.median(through))
            direct_latency.append(statistics.median(direct))
            times, rest = [], []
            for i in range(args.latency_requests):
                started = time.perf_counter()
                (amap,) = prompter.attribute([photo], [QUERIES[i % len(QUERIES)]])
                times.append(time.perf_counter() - started)
                started = time.perf_counter()  # the proxy's other per-image work, for the breakdown
                encode_like(
                    render(load_image(jpeg), amap), jpeg, png_compress_level=args.png_compression
                )
                rest.append(time.perf_counter() - started)
            attribution.append(statistics.median(times))
            image_work.append(statistics.median(rest))
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(folder, ignore_errors=True)

    proxy_rate, batch_rate = statistics.median(proxy_rates), statistics.median(batch_rates)
    added = (statistics.median(proxy_latency) - statistics.median(direct_latency)) * 1000
    attribution_ms = statistics.median(attribution) * 1000
    command = "python benchmarks/bench_serve.py " + " ".join(sys.argv[1:])
    print(
        f"`{command.strip()}`  \n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, CPU, model {args.model}, {args.requests} photos {size[0]}×{size[1]} "
        f"(JPEG data URLs), {args.clients} clients, batch {args.max_batch}, max wait {args.max_wait_ms:g} ms, "
        f"sent upstream as JPEG quality 95, "
        f"median of {args.repeats} interleaved rounds\n"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| proxy throughput, {args.clients} clients (requests/s) | {proxy_rate:.1f} |")
    print(
        f"| `api-prompt batch` throughput, batch {args.max_batch} (samples/s) | {batch_rate:.1f} |"
    )
    print(f"| **ratio** proxy / batch (target >= 0.8) | **{proxy_rate / batch_rate:.2f}** |")
    print(
        f"| latency at one client, through the proxy (ms) | {statistics.median(proxy_latency) * 1000:.1f} |"
    )
    print(
        f"| latency at one client, straight to the upstream (ms) | {statistics.median(direct_latency) * 1000:.1f} |"
    )
    print(f"| **added latency** (ms) | **{added:.1f}** |")
    print(f"| attribution of one image (ms) | {attribution_ms:.1f} |")
    print(f"| **added − attribution** (target <= 15 ms) | **{added - attribution_ms:.1f}** |")
    work_ms = statistics.median(image_work) * 1000
    print(
        f"| of which: decode the JPEG, overlay, encode the JPEG of one image (ms) | {work_ms:.1f} |"
    )
    print(
        f"| of which: the rest (HTTP, JSON, base64, batching, threads) (ms) | {added - attribution_ms - work_ms:.1f} |"
    )


def _wait_until_serving(url: str, timeout: float = 300) -> None:
    import httpx

    health = url.split("/v1/")[0] + "/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the proxy did not start")


if __name__ == "__main__":
    main()
