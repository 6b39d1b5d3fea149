"""OpenAITarget against a real HTTP server on 127.0.0.1 (ephemeral port, started by the tests).

The server (:class:`FakeOpenAI`) answers ``POST /v1/chat/completions`` from a script of
responses, records every request, and tracks how many requests are in flight at once. Every
wait in it is bounded, so a broken client can never hang the test run.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from api_prompt.errors import APIPromptError, ConfigError
from api_prompt.targets import OpenAITarget, TargetError, as_target, create_target, encode_image

KEY = "sk-test-SECRET-0123456789"


class FakeOpenAI:
    """A scripted OpenAI-compatible server on loopback.

    ``script`` is a list of responses used in order, then ``default`` for every further request.
    A response is ``(status, headers, body)`` or the string ``"hang"`` (wait until the test
    ends, at most ``hang_s``). The default answers ``"echo: <question>"``.
    """

    def __init__(self, delay_s: float = 0.0, hang_s: float = 5.0) -> None:
        self.script: list = []
        self.requests: list[dict] = []
        self.delay_s = delay_s
        self.hang_s = hang_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.request_times: list[float] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                server._handle(self)

            def log_message(self, *args):  # keep the test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length", 0))
        body = json.loads(handler.rfile.read(length)) if length else None
        with self._lock:
            self.requests.append(
                {"path": handler.path, "headers": dict(handler.headers), "json": body}
            )
            self.request_times.append(time.monotonic())
            response = self.script.pop(0) if self.script else None
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if response == "hang":
                self._release.wait(self.hang_s)
                return
            if self.delay_s:
                time.sleep(self.delay_s)
            if response is None:
                question = next(
                    p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text"
                )
                response = (200, {}, completion(f"  echo: {question}\n"))
            status, headers, payload = response
            data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        finally:
            with self._lock:
                self.in_flight -= 1


def completion(text: str) -> dict:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "test",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


def error(message: str) -> dict:
    return {"error": {"message": message, "type": "invalid_request_error"}}


def request_images(request: dict) -> list[Image.Image]:
    """The images of a recorded request, decoded from their data URLs."""
    images = []
    for part in request["json"]["messages"][-1]["content"]:
        if part["type"] == "image_url":
            header, data = part["image_url"]["url"].split(",", 1)
            assert header == "data:image/png;base64"
            images.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return images


def random_image(seed: int, size=(23, 17)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def server():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(autouse=True)
def _no_env_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# -- requests ----------------------------------------------------------------------------------


def test_well_formed_request_and_exact_pixels(server):
    target = OpenAITarget(
        "test-model", base_url=server.base_url, api_key=KEY, timeout=5, max_new_tokens=7, top_p=None
    )
    image = random_image(0)
    assert target([image], ["What is it?"]) == ["echo: What is it?"]

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == f"Bearer {KEY}"
    assert request["headers"]["Content-Type"] == "application/json"
    body = request["json"]
    assert body["model"] == "test-model"
    assert body["max_tokens"] == 7 and body["temperature"] == 0
    assert "max_new_tokens" not in body and "top_p" not in body  # alias mapped; None dropped
    (message,) = body["messages"]
    assert message["role"] == "user"
    assert [part["type"] for part in message["content"]] == ["image_url", "text"]
    (sent,) = request_images(request)
    assert sent.mode == "RGB" and sent.size == image.size
    assert np.array_equal(np.asarray(sent), np.asarray(image))


def test_several_images_per_question_and_system_prompt(server):
    target = OpenAITarget(
        "m", base_url=server.base_url, system_prompt="Be brief.", image_detail="high"
    )
    first, second = random_image(1), random_image(2, size=(8, 9))
    assert target.ask([first, second], "Which differs?") == "echo: Which differs?"
    (request,) = server.requests
    messages = request["json"]["messages"]
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert "Authorization" not in request["headers"]  # no key configured: none sent
    sent = request_images(request)
    assert [np.asarray(img).tolist() for img in sent] == [
        np.asarray(first).tolist(),
        np.asarray(second).tolist(),
    ]
    assert messages[1]["content"][0]["image_url"]["detail"] == "high"


def test_env_configuration_and_spec(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    target = create_target("openai:env-model")
    assert target.base_url == server.base_url
    assert as_target("openai:env-model").model == "env-model"
    assert target.ask(random_image(3), "hi") == "echo: hi"
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"


# -- retries, timeouts, errors -----------------------------------------------------------------


def test_429_is_retried_and_retry_after_is_honoured(server):
    server.script = [
        (429, {"Retry-After": "0.3"}, error("slow down")),
        (503, {"retry-after-ms": "100"}, error("busy")),
    ]
    # The backoff alone would wait 5 s; the server's (small) Retry-After values must win.
    target = OpenAITarget("m", base_url=server.base_url, backoff=5, max_backoff=5, max_retries=3)
    start = time.monotonic()
    assert target.ask(random_image(0), "again?") == "echo: again?"
    elapsed = time.monotonic() - start
    assert len(server.requests) == 3
    gaps = np.diff(server.request_times)
    assert gaps[0] >= 0.29 and gaps[1] >= 0.09
    assert elapsed < 4.5  # the backoff's own 5 s never ran


def test_backoff_without_retry_after_and_bounded_retries(server):
    server.script = [(500, {}, error("oops"))] * 3
    target = OpenAITarget("m", base_url=server.base_url, backoff=0.01, max_retries=2)
    with pytest.raises(TargetError, match="HTTP 500: oops") as caught:
        target.ask(random_image(0), "q")
    assert caught.value.status == 500
    assert len(server.requests) == 3  # one attempt plus two retries, then it gives up


def test_hung_server_hits_the_timeout(server):
    server.script = ["hang", "hang"]
    target = OpenAITarget("m", base_url=server.base_url, timeout=0.3, max_retries=1, backoff=0.01)
    start = time.monotonic()
    with pytest.raises(TargetError, match="timed out"):
        target.ask(random_image(0), "q")
    assert time.monotonic() - start < 3
    assert len(server.requests) == 2


def test_401_is_clear_and_never_shows_the_key(server, caplog):
    server.script = [(401, {}, error(f"Incorrect API key provided: {KEY}."))]
    target = OpenAITarget("m", base_url=server.base_url, api_key=KEY, backoff=0.01)
    with caplog.at_level(logging.DEBUG), pytest.raises(TargetError) as caught:
        target.ask(random_image(0), "q")
    message = str(caught.value)
    assert "authentication failed" in message and "HTTP 401" in message
    assert "Incorrect API key provided" in message and "OPENAI_API_KEY" in message
    assert KEY not in message and KEY not in repr(target) and KEY not in caplog.text
    assert isinstance(caught.value, APIPromptError) and caught.value.status == 401
    assert len(server.requests) == 1  # not retried


def test_400_carries_the_server_message(server):
    server.script = [(400, {}, error("image too large"))]
    target = OpenAITarget("m", base_url=server.base_url)
    with pytest.raises(TargetError, match=r"rejected the request \(HTTP 400\): image too large"):
        target.ask(random_image(0), "q")


def test_connection_refused_is_retried_then_clear():
    with FakeOpenAI() as fake:
        url = fake.base_url  # a port that is closed once the server is gone
    target = OpenAITarget("m", base_url=url, max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(TargetError, match="cannot reach"):
        target.ask(random_image(0), "q")


def test_bad_configuration():
    with pytest.raises(ConfigError):
        OpenAITarget("m", base_url="ftp://example")
    with pytest.raises(ConfigError):
        OpenAITarget("m", timeout=0)
    with pytest.raises(ConfigError):
        create_target("nope:model")


# -- batches -----------------------------------------------------------------------------------


def test_concurrency_is_bounded_and_order_kept():
    with FakeOpenAI(delay_s=0.15) as fake:
        target = OpenAITarget("m", base_url=fake.base_url, max_concurrency=2)
        questions = [f"question {i}" for i in range(6)]
        answers = target([random_image(i) for i in range(6)], questions)
    assert answers == [f"echo: {q}" for q in questions]
    assert fake.max_in_flight == 2


def test_empty_batch_sends_nothing(server):
    assert OpenAITarget("m", base_url=server.base_url)([], []) == []
    assert server.requests == []


def test_encode_image_round_trips():
    image = random_image(5)
    url = encode_image(image)
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


# -- hostile servers (raw sockets on 127.0.0.1): each of these broke the urllib transport --------

from scripted_http import RawServer, drip, not_http, redirect, respond, truncated  # noqa: E402
from scripted_http import completion as raw_completion  # noqa: E402


def test_redirect_to_another_origin_is_refused_and_the_key_stays_home():
    with RawServer() as elsewhere, RawServer() as home:
        home.script = [redirect(302, elsewhere.base_url + "/chat/completions")]
        target = OpenAITarget("m", base_url=home.base_url, api_key=KEY, max_retries=0)
        with pytest.raises(TargetError, match="another origin") as caught:
            target.ask(random_image(0), "q")
    assert elsewhere.requests == []  # nothing at all went there, least of all the key
    assert KEY not in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_redirect_within_the_origin_resends_the_post():
    with RawServer() as server:
        server.script = [
            redirect(308, "/v2/chat/completions"),
            redirect(302, server.origin + "/v3/chat/completions"),
            respond(200, raw_completion("moved")),
        ]
        target = OpenAITarget("m", base_url=server.base_url, api_key=KEY, max_retries=0)
        assert target.ask(random_image(0), "q") == "moved"
    assert [(r["method"], r["path"]) for r in server.requests] == [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v2/chat/completions"),
        ("POST", "/v3/chat/completions"),
    ]
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert server.requests[0]["body"] == server.requests[2]["body"]


def test_key_from_a_secret_file_is_stripped_and_a_broken_key_is_never_shown(monkeypatch):
    with RawServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", f"  {KEY}\n")  # as read from a file
        assert OpenAITarget("m", base_url=server.base_url).ask(random_image(0), "q") == "ok"
        assert server.requests[0]["headers"]["authorization"] == f"Bearer {KEY}"
        broken = KEY[:8] + "\n" + KEY[8:]
        with pytest.raises(ConfigError) as caught:
            OpenAITarget("m", base_url=server.base_url, api_key=broken).ask(random_image(0), "q")
    message = str(caught.value)
    assert "API key" in message and KEY[:8] not in message and KEY[8:] not in message
    assert len(server.requests) == 1


def test_a_body_shorter_than_its_content_length_is_retried():
    with RawServer() as server:
        server.script = [
            truncated(b'{"choices": [', declared=400),
            respond(200, raw_completion("whole")),
        ]
        target = OpenAITarget("m", base_url=server.base_url, backoff=0.01, max_retries=1)
        assert target.ask(random_image(0), "q") == "whole"
        assert len(server.requests) == 2
        server.script = [truncated(b'{"choices": [', declared=400)] * 2
        with pytest.raises(TargetError, match="broken off") as caught:
            target.ask(random_image(0), "q")
    assert len(caught.value.args[0].splitlines()) == 1 and "2 attempt(s)" in str(caught.value)


def test_a_service_that_is_not_http_is_a_one_line_error_after_retries():
    with RawServer(default=not_http()) as server:
        target = OpenAITarget("m", base_url=server.base_url, backoff=0.01, max_retries=2)
        with pytest.raises(TargetError) as caught:
            target.ask(random_image(0), "q")
    assert len(server.requests) == 3
    assert "not HTTP" in str(caught.value) and len(str(caught.value).splitlines()) == 1


@pytest.mark.slow
def test_the_timeout_bounds_the_whole_attempt_not_each_read():
    # 4 bytes every 0.25 s: each read is quick, the whole answer would take ~12 s.
    with RawServer(default=drip(raw_completion("x" * 150))) as server:
        target = OpenAITarget("m", base_url=server.base_url, timeout=1, max_retries=0)
        start = time.monotonic()
        with pytest.raises(TargetError, match="timed out"):
            target.ask(random_image(0), "q")
    assert time.monotonic() - start < 4  # well short of the ~12 s the whole answer takes


@pytest.mark.parametrize(
    "content, expected",
    [
        ("  plain  ", "plain"),
        (
            [
                {"type": "text", "text": "Re"},
                {"type": "text", "text": None},
                {"type": "image_url"},
                {"type": "text", "text": "d"},
            ],
            "Red",
        ),
        (["bare ", "strings"], "bare strings"),
        ([], ""),
    ],
)
def test_every_content_shape_that_is_text(content, expected):
    with RawServer(default=respond(200, raw_completion(content))) as server:
        assert OpenAITarget("m", base_url=server.base_url).ask(random_image(0), "q") == expected


def test_a_refusal_is_the_answer_not_an_empty_string():
    answer = raw_completion(None, refusal="I can't help with that request.")
    with RawServer(default=respond(200, answer)) as server:
        assert (
            OpenAITarget("m", base_url=server.base_url).ask(random_image(0), "q")
            == "I can't help with that request."
        )


@pytest.mark.parametrize("content, kind", [(42, "int"), ({"text": "x"}, "dict"), (True, "bool")])
def test_content_that_is_not_text_is_a_clear_error(content, kind):
    with RawServer(default=respond(200, raw_completion(content))) as server:
        with pytest.raises(TargetError, match=f"content of type {kind}, not text"):
            OpenAITarget("m", base_url=server.base_url).ask(random_image(0), "q")


def test_ask_sets_retries_and_backoff_from_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from cli.app import app

    image = tmp_path / "photo.png"
    random_image(0).save(image)
    with RawServer() as server:
        base = [
            "ask",
            str(image),
            "q",
            "--target",
            "openai:m",
            "--base-url",
            server.base_url,
            "--no-api",
            "-q",
        ]
        server.script = [respond(500, error("busy"))] * 2
        done = CliRunner().invoke(app, [*base, "--max-retries", "2", "--backoff", "0.01"])
        assert done.exit_code == 0, done.stderr
        assert done.stdout.strip() == "ok" and len(server.requests) == 3

        server.script = [respond(503, error("busy"))]
        done = CliRunner().invoke(app, [*base, "--max-retries", "0"])
        assert done.exit_code == 2 and len(server.requests) == 4
        assert done.stderr.strip().splitlines() == [done.stderr.strip()]
        assert done.stderr.startswith("error: ") and "HTTP 503: busy" in done.stderr

        server.default = not_http()
        done = CliRunner().invoke(app, [*base, "--max-retries", "0"])
        assert (
            done.exit_code == 2
            and done.stderr.startswith("error: ")
            and "Traceback" not in done.stderr
        )


def test_works_when_called_inside_a_running_event_loop(server):
    """A notebook runs cells inside an event loop; the target must still answer there."""
    import asyncio

    async def inside():
        return OpenAITarget("m", base_url=server.base_url).ask(random_image(0), "from a loop")

    assert asyncio.run(inside()) == "echo: from a loop"
