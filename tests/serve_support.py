"""What the proxy tests share: the proxy on a real uvicorn server in a thread, scripted upstreams.

The upstreams are :class:`scripted_http.RawServer` handlers (one request per connection), so
they can stream, stall, break off or answer any status, and they record what they received.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from scripted_http import _head, completion


def png_data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def jpeg_data_url(image: Image.Image, quality: int = 95) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_data_url_image(url: str, mime: str = "image/png") -> Image.Image:
    """The image of a data URL, which must be of type ``mime``."""
    header, data = url.split(",", 1)
    assert header == f"data:{mime};base64", header
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.convert("RGB")


def pixel_digest(image: Image.Image) -> str:
    """A short fingerprint of an image's RGB pixels (and size)."""
    rgb = image.convert("RGB")
    return hashlib.sha256(repr(rgb.size).encode() + rgb.tobytes()).hexdigest()[:16]


def sent_urls(request: dict) -> list[str]:
    """The image URLs of every user message of a request the upstream received, in order."""
    urls = []
    for message in request["json"]["messages"]:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    value = part["image_url"]
                    urls.append(value["url"] if isinstance(value, dict) else value)
    return urls


def sent_images(request: dict, mime: str = "image/png") -> list[Image.Image]:
    """The images of every user message of a request the upstream received, in order; each must
    be a data URL of type ``mime``."""
    return [decode_data_url_image(url, mime) for url in sent_urls(request)]


def random_image(seed: int, size=(40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def echo_upstream(conn: socket.socket, request: dict) -> None:
    """Answers ``<text of the last user message> | <digest of each image>`` as a completion."""
    body = request["json"]
    text = " ".join(
        part["text"] for part in body["messages"][-1]["content"] if part.get("type") == "text"
    )
    digests = ",".join(
        pixel_digest(decode_data_url_image(url, url[5:].split(";")[0]))
        for url in sent_urls(request)
    )
    data = json.dumps(completion(f"{text}|{digests}")).encode()
    conn.sendall(
        _head(
            200,
            {
                "Content-Type": "application/json",
                "Content-Length": str(len(data)),
                "X-Upstream": "echo",
                "Connection": "close",
            },
        )
        + data
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_proxy(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the /v1 base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            server_header=False,
            date_header=False,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the proxy did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
