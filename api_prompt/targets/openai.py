"""Any OpenAI-compatible chat-completions server as a target (OpenAI, vLLM, SGLang, Ollama, ...).

Only the standard library is used: one ``POST {base_url}/chat/completions`` per question, with
the images sent inline as base64 PNG data URLs (lossless, so the server sees exactly the
prompted pixels).

>>> from api_prompt.targets import OpenAITarget                                   # doctest: +SKIP
>>> target = OpenAITarget("gpt-4o-mini")        # key from OPENAI_API_KEY           # doctest: +SKIP
>>> target(["car.png"], ["What color is the car?"])                              # doctest: +SKIP
['Red.']
>>> local = OpenAITarget("Qwen/Qwen2-VL-7B-Instruct", base_url="http://localhost:8000/v1")  # doctest: +SKIP

Failures are handled the way API clients usually do: 429 (rate limit), 5xx and connection
errors or timeouts are retried a bounded number of times with exponential backoff and jitter,
honouring ``Retry-After``; 400/401/403/404 fail at once with the server's message. The API key
never appears in reprs, logs or error messages.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ..errors import ConfigError
from .base import BaseTarget, TargetError

__all__ = ["OpenAITarget", "encode_image"]

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_REDACTED = "***"


class OpenAITarget(BaseTarget):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        model: the model name the server knows (``"gpt-4o-mini"``, a vLLM-served id, ...).
        base_url: the API root, up to and including ``/v1``. Default: ``OPENAI_BASE_URL``, else
            ``https://api.openai.com/v1``.
        api_key: the key sent as a bearer token. Default: ``OPENAI_API_KEY``; none is sent when
            neither is set (fine for local servers).
        timeout: seconds to wait for each HTTP attempt (connect and read).
        max_retries: extra attempts after a retryable failure (429, 5xx, connection error,
            timeout); 0 disables retrying.
        backoff: first retry delay in seconds; doubled per attempt, with jitter.
        max_backoff: upper bound of one delay (also caps what ``Retry-After`` may ask for).
        max_concurrency: requests in flight at once when answering a batch.
        system_prompt: optional system message sent before every question.
        image_detail: ``"low"``, ``"high"`` or ``"auto"`` hint for OpenAI's vision models.
        headers: extra HTTP headers (e.g. for a gateway).
        **generation: request fields added to every call. ``temperature`` defaults to 0 (greedy,
            as the HF target); ``max_new_tokens`` is accepted as an alias of ``max_tokens``; a
            field set to None is left out of the request.

    >>> OpenAITarget("my-model", base_url="http://127.0.0.1:8000/v1", api_key="sk-secret")
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
        if timeout is None or timeout <= 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if max_retries < 0 or max_concurrency < 1:
            raise ConfigError("max_retries must be >= 0 and max_concurrency >= 1")
        self.model = str(model).strip()
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = int(max_concurrency)
        self.system_prompt = system_prompt
        self.image_detail = image_detail
        self.headers = dict(headers or {})
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
        jobs = list(zip(images, questions))
        if len(jobs) == 1 or self.max_concurrency == 1:
            return [self._answer_one(image_list, question, options) for image_list, question in jobs]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            return list(pool.map(lambda job: self._answer_one(job[0], job[1], options), jobs))

    def _answer_one(self, image_list: list[Image.Image], question: str, options: dict[str, Any]) -> str:
        body = self.build_request(image_list, question, **options)
        response = self._post(json.dumps(body).encode("utf-8"))
        try:
            return _answer_text(response)
        except TargetError as exc:  # the error quotes the response, which could echo the key
            raise TargetError(self._redact(str(exc))) from None

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

    def _post(self, data: bytes) -> dict[str, Any]:
        """POST with bounded retries; the parsed JSON response, or TargetError."""
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "api-prompt", **self.headers}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = response.read()
                return self._parse(payload)
            except urllib.error.HTTPError as exc:
                status = exc.code
                message = self._redact(_server_message(exc))
                retry_after = _retry_after(exc.headers)
                exc.close()
                if status not in RETRY_STATUSES and status < 500:
                    raise self._http_error(status, message) from None
                failure = f"HTTP {status}: {message}"
                error = TargetError(
                    f"{self.url} kept failing after {attempts} attempt(s); last answer {failure}",
                    status=status,
                )
            except OSError as exc:  # URLError, connection errors and timeouts
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError):  # socket.timeout is TimeoutError since 3.10
                    failure = f"no answer within {self.timeout:g} s"
                    error = TargetError(f"{self.url} timed out: {failure} per attempt, "
                                        f"{attempts} attempt(s)")
                else:
                    failure = f"connection failed ({self._redact(str(reason))})"
                    error = TargetError(f"cannot reach {self.url}: {failure} after {attempts} attempt(s); "
                                        "check --base-url / OPENAI_BASE_URL and that the server runs")
            if attempt + 1 >= attempts:
                raise error from None
            delay = self._delay(attempt, retry_after)
            logger.warning("%s (attempt %d of %d); retrying in %.2f s", failure, attempt + 1, attempts, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: the server's Retry-After when given, else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        return delay * (0.5 + random.random() / 2)  # jitter: between half and the full delay

    def _parse(self, payload: bytes) -> dict[str, Any]:
        try:
            return json.loads(payload)
        except ValueError:
            snippet = self._redact(payload[:200].decode("utf-8", "replace"))
            raise TargetError(f"{self.url} did not answer with JSON: {snippet!r}") from None

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

    def _redact(self, text: str) -> str:
        if self._api_key and self._api_key in text:
            text = text.replace(self._api_key, _REDACTED)
        return text


def encode_image(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URL holding the image losslessly.

    >>> encode_image(Image.new("RGB", (1, 1)))[:22]
    'data:image/png;base64,'
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _answer_text(response: dict[str, Any]) -> str:
    """The assistant's text from a chat-completions response."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise TargetError(f"unexpected response without choices[0].message.content: {str(response)[:200]}") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return (content or "").strip()


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        body = exc.read()[:4000].decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a broken body must not hide the status
        return exc.reason or ""
    try:
        error = json.loads(body).get("error")
        if isinstance(error, dict) and error.get("message"):
            return " ".join(str(error["message"]).split())
        if isinstance(error, str):
            return " ".join(error.split())
    except (ValueError, AttributeError):
        pass
    return " ".join(body.split())[:300] or str(exc.reason or "")


def _retry_after(headers) -> float | None:
    """Seconds asked for by ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
