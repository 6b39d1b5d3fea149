"""Any OpenAI-compatible chat-completions server as a target (OpenAI, vLLM, SGLang, Ollama, ...).

One ``POST {base_url}/chat/completions`` per question, with the images sent inline as base64 PNG
data URLs (lossless, so the server sees exactly the prompted pixels).

>>> from api_prompt.targets import OpenAITarget                                   # doctest: +SKIP
>>> target = OpenAITarget("gpt-4o-mini")        # key from OPENAI_API_KEY           # doctest: +SKIP
>>> target(["car.png"], ["What color is the car?"])                              # doctest: +SKIP
['Red.']
>>> local = OpenAITarget("Qwen/Qwen2-VL-7B-Instruct", base_url="http://localhost:8000/v1")  # doctest: +SKIP

The transport is `httpx <https://www.python-httpx.org>`_ (asynchronous client, one connection
pool per batch), not the official ``openai`` SDK: the SDK's timeout is httpx's per-read timeout
(a server dripping a byte at a time keeps a request alive for ever), its redirects are httpx's
(a 302 to another host is followed and turns the POST into a GET), and it would add pydantic and
the SDK to the core dependencies for one endpoint. On top of httpx this module adds what an
evaluation run needs:

- **one deadline per attempt**: ``timeout`` bounds connecting, sending and reading the whole
  answer together;
- **bounded retries** with exponential backoff and jitter on 408/409/429/5xx, connection errors,
  timeouts, and answers broken off or not HTTP at all, honouring ``Retry-After`` and
  ``retry-after-ms`` (capped by ``max_backoff``); other 4xx fail at once with the server's message;
- **redirects only within the same origin** (scheme, host and port), re-sending the POST; a
  redirect anywhere else is an error, so the key never leaves the configured server;
- **the key** is stripped of surrounding whitespace (secret files end in a newline), checked to
  fit in an HTTP header, and never shown in reprs, logs or error messages;
- **every failure is one line**: a :class:`~api_prompt.errors.TargetError` (``status`` holds the
  HTTP status when there is one);
- **every content shape** servers return: a string, a list of parts (text parts joined, parts
  without text skipped), ``null`` with a ``refusal`` (the refusal is the answer), ``null`` alone
  (an empty answer); anything else is a clear error.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import logging
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import httpx
from PIL import Image

from ..errors import ConfigError
from .base import BaseTarget, TargetError

__all__ = ["OpenAITarget", "encode_image", "answer_text", "retry_after_seconds", "same_origin"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
_REDACTED = "***"
_T = TypeVar("_T")


class _Retryable(Exception):
    """One attempt failed in a way worth another try; ``message`` is the one-line reason."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 kind: str = "http") -> None:
        super().__init__(message)
        self.message, self.status, self.retry_after, self.kind = message, status, retry_after, kind


class OpenAITarget(BaseTarget):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: the model name the server knows (``"gpt-4o-mini"``, a vLLM-served id, ...).
        base_url: the API root, up to and including ``/v1``. Default: ``OPENAI_BASE_URL``, else
            ``https://api.openai.com/v1``.
        api_key: the key sent as a bearer token. Default: ``OPENAI_API_KEY``; none is sent when
            neither is set (fine for local servers). Surrounding whitespace is removed.
        timeout: seconds one attempt may take in all: connecting, sending and reading the whole
            answer.
        max_retries: extra attempts after a retryable failure (429, 5xx, connection error,
            timeout, broken answer); 0 disables retrying.
        backoff: first retry delay in seconds; doubled per attempt, with jitter.
        max_backoff: upper bound of one delay (also caps what ``Retry-After`` may ask for).
        max_concurrency: requests in flight at once when answering a batch.
        system_prompt: optional system message sent before every question.
        image_detail: ``"low"``, ``"high"`` or ``"auto"`` hint for OpenAI's vision models.
        headers: extra HTTP headers (e.g. for a gateway).
        **generation: request fields added to every call. ``temperature`` defaults to 0 (greedy,
            as the HF target); ``max_new_tokens`` is accepted as an alias of ``max_tokens``; a
            field set to None is left out of the request.

    >>> OpenAITarget("my-model", base_url="http://127.0.0.1:8000/v1", api_key="sk-secret\\n")
    OpenAITarget(model='my-model', base_url='http://127.0.0.1:8000/v1', api_key='***')
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_concurrency: int = 4,
        system_prompt: str | None = None,
        image_detail: str | None = None,
        headers: dict[str, str] | None = None,
        **generation: Any,
    ) -> None:
        if not model or not str(model).strip():
            raise ConfigError("the OpenAI target needs a model name, e.g. openai:gpt-4o-mini")
        if timeout is None or not timeout > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_retries < 0 or max_concurrency < 1:
            raise ConfigError("max_retries must be >= 0 and max_concurrency >= 1")
        if not backoff >= 0 or not max_backoff >= 0:
            raise ConfigError("backoff and max_backoff must be >= 0 seconds")
        self.model = str(model).strip()
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        try:
            httpx.URL(self.base_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ConfigError(f"base_url {self.base_url!r} is not a valid URL: {exc}") from None
        self._api_key = clean_api_key(api_key if api_key is not None else os.environ.get("OPENAI_API_KEY"))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.system_prompt = system_prompt
        self.image_detail = image_detail
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            if not _header_safe(str(name)) or not _header_safe(str(value), allow_space=True):
                raise ConfigError(f"the header {str(name)[:40]!r} has a character that cannot be "
                                  "sent in HTTP (a newline or control character)")
        self.generation = {"temperature": 0, **generation}

    @property
    def url(self) -> str:
        """The chat-completions endpoint every request goes to."""
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = _REDACTED if self._api_key else None
        return f"OpenAITarget(model={self.model!r}, base_url={self.base_url!r}, api_key={key!r})"

    def describe(self) -> dict[str, Any]:
        return {"target": "openai", "target_model": self.model, "base_url": self.base_url,
                "generation": dict(self.generation)}

    # -- answering ---------------------------------------------------------------------------

    def answer(self, images, questions, **generation):
        options = {**self.generation, **generation}
        bodies = [json.dumps(self.build_request(image_list, question, **options)).encode("utf-8")
                  for image_list, question in zip(images, questions)]
        return _run_coroutine(lambda: self._answer_all(bodies))

    async def _answer_all(self, bodies: list[bytes]) -> list[str]:
        limit = asyncio.Semaphore(self.max_concurrency)
        async with self._client() as client:
            async def answer_one(body: bytes) -> str:
                async with limit:
                    return answer_text(await self._post(client, body), redact=self._redact)

            tasks = [asyncio.ensure_future(answer_one(body)) for body in bodies]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                for task in tasks:  # the first failure in question order
                    if task.done() and task.exception() is not None:
                        raise task.exception()
                return [task.result() for task in tasks]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _client(self) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=self.max_concurrency,
                              max_keepalive_connections=self.max_concurrency)
        return httpx.AsyncClient(timeout=httpx.Timeout(self.timeout), limits=limits,
                                 follow_redirects=False)

    def build_request(self, images: list[Image.Image], question: str, **generation: Any) -> dict[str, Any]:
        """The JSON body sent for one question (useful to inspect or to log without the key)."""
        fields = dict(generation)
        if "max_new_tokens" in fields:
            fields.setdefault("max_tokens", fields.pop("max_new_tokens"))
        fields = {key: value for key, value in fields.items() if value is not None}
        content: list[dict[str, Any]] = []
        for image in images:
            image_url: dict[str, Any] = {"url": encode_image(image)}
            if self.image_detail:
                image_url["detail"] = self.image_detail
            content.append({"type": "image_url", "image_url": image_url})
        content.append({"type": "text", "text": question})
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": content})
        return {"model": self.model, "messages": messages, **fields}

    # -- HTTP --------------------------------------------------------------------------------

    async def _post(self, client: httpx.AsyncClient, data: bytes) -> Any:
        """POST with bounded retries; the parsed JSON response, or TargetError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "api-prompt", **self.headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(client, data, headers)
            except _Retryable as failure:
                if attempt + 1 >= attempts:
                    raise self._final_error(failure, attempts) from None
                delay = self._delay(attempt, failure.retry_after)
                logger.warning("%s (attempt %d of %d); retrying in %.2f s",
                               failure.message, attempt + 1, attempts, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(self, client: httpx.AsyncClient, data: bytes, headers: dict[str, str]) -> Any:
        """One attempt, redirects included, under one deadline of ``timeout`` seconds."""
        try:
            response = await asyncio.wait_for(self._send(client, data, headers), self.timeout)
        except asyncio.TimeoutError:
            raise _Retryable(f"no complete answer within {self.timeout:g} s", kind="timeout") from None
        except httpx.TimeoutException:
            raise _Retryable(f"no complete answer within {self.timeout:g} s", kind="timeout") from None
        except httpx.ConnectError as exc:
            raise _Retryable(f"connection failed ({self._describe(exc)})", kind="connect") from None
        except httpx.TransportError as exc:  # broken off, not HTTP, reset by the peer, ...
            raise _Retryable(f"the answer was broken off or not HTTP ({self._describe(exc)})",
                             kind="broken") from None
        status = response.status_code
        if status >= 400:
            message = self._redact(server_message(response.content, response.reason_phrase))
            if status in RETRY_STATUSES or status >= 500:
                raise _Retryable(f"HTTP {status}: {message}", status=status,
                                 retry_after=retry_after_seconds(response.headers))
            raise self._http_error(status, message)
        if status >= 300:
            raise TargetError(f"{self.url} answered HTTP {status} without a usable redirect", status=status)
        try:
            return json.loads(response.content)
        except ValueError:
            snippet = self._redact(response.content[:200].decode("utf-8", "replace"))
            raise TargetError(f"{self.url} did not answer with JSON (HTTP {status}): "
                              f"{' '.join(snippet.split())!r} — check the base URL") from None

    async def _send(self, client: httpx.AsyncClient, data: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST, following redirects only within the origin of :attr:`url` (re-sending the POST)."""
        url = httpx.URL(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await client.post(url, content=data, headers=headers)
            if not (response.is_redirect and response.headers.get("location")):
                return response
            try:
                location = url.join(response.headers["location"])
            except (httpx.InvalidURL, ValueError):
                raise TargetError(f"{self.url} redirected to an invalid address", status=response.status_code) from None
            if not same_origin(location, url):
                raise TargetError(
                    f"{self.url} redirected (HTTP {response.status_code}) to another origin, "
                    f"{location.scheme}://{location.netloc.decode('ascii', 'replace')}; not followed so the key "
                    "is not sent there — if you trust it, use that address as the base URL",
                    status=response.status_code,
                )
            url = location
        raise TargetError(f"{self.url} redirected more than {MAX_REDIRECTS} times")

    def _final_error(self, failure: _Retryable, attempts: int) -> TargetError:
        if failure.kind == "timeout":
            return TargetError(f"{self.url} timed out: {failure.message} per attempt, {attempts} attempt(s)")
        if failure.kind == "connect":
            return TargetError(f"cannot reach {self.url}: {failure.message} after {attempts} attempt(s); "
                               "check --base-url / OPENAI_BASE_URL and that the server runs")
        if failure.kind == "broken":
            return TargetError(f"{self.url} failed: {failure.message} after {attempts} attempt(s); "
                               "is an OpenAI-compatible HTTP server listening there?")
        return TargetError(f"{self.url} kept failing after {attempts} attempt(s); last answer {failure.message}",
                           status=failure.status)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: the server's Retry-After when given, else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        return delay * (0.5 + random.random() / 2)  # jitter: between half and the full delay

    def _http_error(self, status: int, message: str) -> TargetError:
        if status in (401, 403):
            hint = ("the API key was refused" if self._api_key else "no API key was sent")
            return TargetError(
                f"authentication failed at {self.base_url} (HTTP {status}): {message} — {hint}; "
                "set OPENAI_API_KEY or pass api_key=", status=status,
            )
        if status == 404:
            return TargetError(
                f"{self.url} answered 404: {message} — check the base URL (it should end in /v1) "
                f"and the model name {self.model!r}", status=status,
            )
        return TargetError(f"the server rejected the request (HTTP {status}): {message}", status=status)

    def _describe(self, exc: BaseException) -> str:
        return self._redact(" ".join(str(exc).split()) or type(exc).__name__)

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, _REDACTED)
        return text


def clean_api_key(key: str | None) -> str | None:
    """The key without surrounding whitespace; None when empty; ConfigError if it cannot be sent.

    The error never quotes the key.

    >>> clean_api_key("  sk-abc\\n")
    'sk-abc'
    >>> clean_api_key("sk-a\\nb")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: the API key has a space or control character inside it (character 5 of 6); check where it was read from
    """
    if key is None:
        return None
    key = str(key).strip()
    if not key:
        return None
    for position, char in enumerate(key, 1):
        if not 0x21 <= ord(char) <= 0x7E:
            raise ConfigError(f"the API key has a space or control character inside it "
                              f"(character {position} of {len(key)}); check where it was read from")
    return key


def _header_safe(text: str, *, allow_space: bool = False) -> bool:
    """Printable ASCII only (plus spaces in a value): nothing that could split a header."""
    lowest = 0x20 if allow_space else 0x21
    return all(lowest <= ord(char) <= 0x7E for char in text)


def encode_image(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL holding the image losslessly.

    >>> encode_image(Image.new("RGB", (1, 1)))[:22]
    'data:image/png;base64,'
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def answer_text(response: Any, *, redact: Callable[[str], str] = lambda text: text) -> str:
    """The assistant's text from a chat-completions response, for every content shape.

    >>> answer_text({"choices": [{"message": {"content": " Red. "}}]})
    'Red.'
    >>> answer_text({"choices": [{"message": {"content": [{"type": "text", "text": "Re"}, {"type": "text", "text": None}, {"type": "text", "text": "d"}]}}]})
    'Red'
    >>> answer_text({"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]})
    "I can't help with that."
    >>> answer_text({"choices": [{"message": {"content": 42}}]})
    Traceback (most recent call last):
    ...
    api_prompt.errors.TargetError: the server answered with content of type int, not text: 42
    """
    try:
        message = response["choices"][0]["message"]
        content = message["content"] if "content" in message else None
    except (KeyError, IndexError, TypeError):
        snippet = redact(" ".join(str(response).split())[:200])
        raise TargetError(f"unexpected response without choices[0].message: {snippet}") from None
    if isinstance(content, str):
        return content.strip()
    if isinstance(content, list):  # content parts; some servers send bare strings in the list
        texts = []
        for part in content:
            text = part.get("text") if isinstance(part, dict) else part
            if isinstance(text, str):
                texts.append(text)
        return "".join(texts).strip()
    if content is None:
        refusal = message.get("refusal")
        if isinstance(refusal, str) and refusal.strip():
            return refusal.strip()  # the model declined: its refusal is its answer
        if message.get("tool_calls"):
            raise TargetError("the server answered with a tool call instead of text")
        return ""
    snippet = redact(" ".join(json.dumps(content, default=str).split())[:200])
    raise TargetError(f"the server answered with content of type {type(content).__name__}, not text: {snippet}")


def server_message(body: bytes, reason: str = "") -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body (one line).

    >>> server_message(b'{"error": {"message": "slow\\\\ndown", "type": "rate_limit"}}')
    'slow down'
    """
    text = body[:4000].decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        if isinstance(error, dict) and error.get("message"):
            return " ".join(str(error["message"]).split())
        if isinstance(error, str) and error.strip():
            return " ".join(error.split())
        if isinstance(parsed.get("detail"), str):  # FastAPI-style servers
            return " ".join(parsed["detail"].split())
    return " ".join(text.split())[:300] or reason or ""


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    >>> retry_after_seconds({"retry-after-ms": "250"}), retry_after_seconds({"Retry-After": "2"})
    (0.25, 2.0)
    """
    if not headers:
        return None
    lower = {str(name).lower(): value for name, value in headers.items()}
    milliseconds = lower.get("retry-after-ms")
    if milliseconds:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def same_origin(a: httpx.URL | str, b: httpx.URL | str) -> bool:
    """Whether two URLs share scheme, host and port (the port made explicit).

    >>> same_origin("http://h:80/a", "http://h/b"), same_origin("http://h/a", "https://h/a")
    (True, False)
    """
    a, b = httpx.URL(a), httpx.URL(b)
    default = {"http": 80, "https": 443}
    return (a.scheme, a.host, a.port or default.get(a.scheme)) == (b.scheme, b.host, b.port or default.get(b.scheme))


def _run_coroutine(make: Callable[[], Awaitable[_T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop
    (a notebook): then it runs on its own loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
