"""Any OpenAI-compatible chat-completions server as a target (OpenAI, vLLM, SGLang, Ollama, ...).

One ``POST {base_url}/chat/completions`` per question, with the images sent inline as base64 PNG
data URLs (lossless, so the server sees exactly the prompted pixels).

>>> from api_prompt.targets import OpenAITarget                                   # doctest: +SKIP
>>> target = OpenAITarget("gpt-4o-mini")        # key from OPENAI_API_KEY           # doctest: +SKIP
>>> target(["car.png"], ["What color is the car?"])                              # doctest: +SKIP
['Red.']
>>> local = OpenAITarget("Qwen/Qwen2-VL-7B-Instruct", base_url="http://localhost:8000/v1")  # doctest: +SKIP

The transport is `httpx <https://www.python-httpx.org>`_ through :mod:`api_prompt.targets.http`
(one deadline per attempt, bounded retries, same-origin redirects, the key never shown), not the
official ``openai`` SDK: the SDK's timeout is httpx's per-read timeout (a server dripping a byte at
a time keeps a request alive for ever), its redirects are httpx's (a 302 to another host is
followed and turns the POST into a GET), and it would add pydantic and the SDK to the core
dependencies for one endpoint. This module builds the requests and reads **every content shape**
servers return: a string, a list of parts (text parts joined, parts without text skipped),
``null`` with a ``refusal`` (the refusal is the answer), ``null`` alone (an empty answer);
anything else is a clear error.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
from collections.abc import Callable
from typing import Any

import httpx
from PIL import Image

from ..errors import ConfigError
from .base import BaseTarget, TargetError
from .http import (
    REDACTED,
    JSONPoster,
    clean_api_key,
    header_safe,
    redact,
    retry_after_seconds,
    run_coroutine,
    same_origin,
    server_message,
)

# retry_after_seconds, same_origin and server_message moved to api_prompt.targets.http; importing
# them from here keeps working.

__all__ = [
    "OpenAITarget",
    "encode_image",
    "answer_text",
    "clean_api_key",
    "retry_after_seconds",
    "same_origin",
    "server_message",
]

DEFAULT_BASE_URL = "https://api.openai.com/v1"


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
        self.base_url = (
            (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).strip().rstrip("/")
        )
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url must start with http:// or https://, got {self.base_url!r}"
            )
        try:
            httpx.URL(self.base_url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ConfigError(f"base_url {self.base_url!r} is not a valid URL: {exc}") from None
        self._api_key = clean_api_key(
            api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        )
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.system_prompt = system_prompt
        self.image_detail = image_detail
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            if not header_safe(str(name)) or not header_safe(str(value), allow_space=True):
                raise ConfigError(
                    f"the header {str(name)[:40]!r} has a character that cannot be "
                    "sent in HTTP (a newline or control character)"
                )
        self.generation = {"temperature": 0, **generation}

    @property
    def url(self) -> str:
        """The chat-completions endpoint every request goes to."""
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:
        key = REDACTED if self._api_key else None
        return f"OpenAITarget(model={self.model!r}, base_url={self.base_url!r}, api_key={key!r})"

    def describe(self) -> dict[str, Any]:
        return {
            "target": "openai",
            "target_model": self.model,
            "base_url": self.base_url,
            "generation": dict(self.generation),
        }

    # -- answering ---------------------------------------------------------------------------

    def answer(self, images, questions, **generation):
        options = {**self.generation, **generation}
        bodies = [
            json.dumps(self.build_request(image_list, question, **options)).encode("utf-8")
            for image_list, question in zip(images, questions)
        ]
        return run_coroutine(lambda: self._answer_all(bodies))

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
                    failure = task.exception() if task.done() else None
                    if failure is not None:
                        raise failure
                return [task.result() for task in tasks]
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _client(self) -> httpx.AsyncClient:
        return self._http().client()

    def build_request(
        self, images: list[Image.Image], question: str, **generation: Any
    ) -> dict[str, Any]:
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

    def _http(self) -> JSONPoster:
        """The HTTP client with this target's current settings (:mod:`api_prompt.targets.http`)."""
        return JSONPoster(
            self.url,
            base_url=self.base_url,
            api_key=self._api_key,
            timeout=self.timeout,
            max_retries=self.max_retries,
            backoff=self.backoff,
            max_backoff=self.max_backoff,
            max_concurrency=self.max_concurrency,
            headers=self.headers,
            rejected=self._http_error,
        )

    async def _post(self, client: httpx.AsyncClient, data: bytes) -> Any:
        """POST with bounded retries; the parsed JSON response, or TargetError."""
        return await self._http().post(client, data)

    def _http_error(self, status: int, message: str) -> TargetError:
        if status in (401, 403):
            hint = "the API key was refused" if self._api_key else "no API key was sent"
            return TargetError(
                f"authentication failed at {self.base_url} (HTTP {status}): {message} — {hint}; "
                "set OPENAI_API_KEY or pass api_key=",
                status=status,
            )
        if status == 404:
            return TargetError(
                f"{self.url} answered 404: {message} — check the base URL (it should end in /v1) "
                f"and the model name {self.model!r}",
                status=status,
            )
        return TargetError(
            f"the server rejected the request (HTTP {status}): {message}", status=status
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._api_key)


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
    raise TargetError(
        f"the server answered with content of type {type(content).__name__}, not text: {snippet}"
    )
