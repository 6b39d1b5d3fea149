"""The HTTP client of the OpenAI-compatible targets: one JSON POST with bounded retries.

`httpx <https://www.python-httpx.org>`_ (asynchronous, one connection pool per batch) carries the
requests; this module adds what an evaluation run needs on top of it:

- **one deadline per attempt**: ``timeout`` bounds connecting, sending and reading the whole
  answer together (httpx's own timeout is per read: a server dripping a byte at a time would keep
  a request alive for ever);
- **bounded retries** with exponential backoff and jitter on 408/409/429/5xx, connection errors,
  timeouts, and answers broken off or not HTTP at all, honouring ``Retry-After`` and
  ``retry-after-ms`` (capped by ``max_backoff``); other 4xx fail at once with the server's message;
- **redirects only within the same origin** (scheme, host and port), re-sending the POST; a
  redirect anywhere else is an error, so the key never leaves the configured server;
- **the key** is stripped of surrounding whitespace (secret files end in a newline), checked to
  fit in an HTTP header, and never shown in logs or error messages;
- **every failure is one line**: a :class:`~api_prompt.errors.TargetError` (``status`` holds the
  HTTP status when there is one).

:class:`~api_prompt.targets.openai.OpenAITarget` builds the request bodies and reads the answers;
:class:`JSONPoster` only moves them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from ..errors import ConfigError, TargetError

__all__ = [
    "JSONPoster",
    "RETRY_STATUSES",
    "MAX_REDIRECTS",
    "clean_api_key",
    "header_safe",
    "redact",
    "server_message",
    "retry_after_seconds",
    "same_origin",
    "run_coroutine",
]

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_REDIRECTS = 5
REDACTED = "***"
_T = TypeVar("_T")


class RetryableFailure(Exception):
    """One attempt failed in a way worth another try; ``message`` is the one-line reason."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        kind: str = "http",
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.retry_after, self.kind = message, status, retry_after, kind


class JSONPoster:
    """POSTs JSON bodies to one URL with the rules above; one instance per target's settings.

    Args:
        url: the endpoint every request goes to.
        base_url: the API root, for messages.
        api_key: sent as a bearer token when set (already cleaned: :func:`clean_api_key`).
        timeout, max_retries, backoff, max_backoff: see
            :class:`~api_prompt.targets.openai.OpenAITarget`.
        max_concurrency: connections in the pool.
        headers: extra HTTP headers.
        rejected: turns a non-retryable 4xx (status, server message) into the TargetError raised.
    """

    def __init__(
        self,
        url: str,
        *,
        base_url: str,
        api_key: str | None,
        timeout: float,
        max_retries: int,
        backoff: float,
        max_backoff: float,
        max_concurrency: int,
        headers: Mapping[str, str],
        rejected: Callable[[int, str], TargetError],
    ) -> None:
        self.url, self.base_url, self.api_key = url, base_url, api_key
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_concurrency = max_concurrency
        self.headers = dict(headers)
        self.rejected = rejected

    def client(self) -> httpx.AsyncClient:
        """The connection pool for one batch (redirects are followed here, not by httpx)."""
        limits = httpx.Limits(
            max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
        )
        return httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout), limits=limits, follow_redirects=False
        )

    def redact(self, text: str) -> str:
        return redact(text, self.api_key)

    async def post(self, client: httpx.AsyncClient, data: bytes) -> Any:
        """POST with bounded retries; the parsed JSON response, or TargetError."""
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "api-prompt",
            **self.headers,
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            try:
                return await self._attempt(client, data, headers)
            except RetryableFailure as failure:
                if attempt + 1 >= attempts:
                    raise self._final_error(failure, attempts) from None
                delay = self._delay(attempt, failure.retry_after)
                logger.warning(
                    "%s (attempt %d of %d); retrying in %.2f s",
                    failure.message,
                    attempt + 1,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self, client: httpx.AsyncClient, data: bytes, headers: dict[str, str]
    ) -> Any:
        """One attempt, redirects included, under one deadline of ``timeout`` seconds."""
        try:
            response = await asyncio.wait_for(self._send(client, data, headers), self.timeout)
        except asyncio.TimeoutError:
            raise RetryableFailure(
                f"no complete answer within {self.timeout:g} s", kind="timeout"
            ) from None
        except httpx.TimeoutException:
            raise RetryableFailure(
                f"no complete answer within {self.timeout:g} s", kind="timeout"
            ) from None
        except httpx.ConnectError as exc:
            raise RetryableFailure(
                f"connection failed ({self._describe(exc)})", kind="connect"
            ) from None
        except httpx.TransportError as exc:  # broken off, not HTTP, reset by the peer, ...
            raise RetryableFailure(
                f"the answer was broken off or not HTTP ({self._describe(exc)})", kind="broken"
            ) from None
        status = response.status_code
        if status >= 400:
            message = self.redact(server_message(response.content, response.reason_phrase))
            if status in RETRY_STATUSES or status >= 500:
                raise RetryableFailure(
                    f"HTTP {status}: {message}",
                    status=status,
                    retry_after=retry_after_seconds(response.headers),
                )
            raise self.rejected(status, message)
        if status >= 300:
            raise TargetError(
                f"{self.url} answered HTTP {status} without a usable redirect", status=status
            )
        try:
            return json.loads(response.content)
        except ValueError:
            snippet = self.redact(response.content[:200].decode("utf-8", "replace"))
            raise TargetError(
                f"{self.url} did not answer with JSON (HTTP {status}): "
                f"{' '.join(snippet.split())!r} — check the base URL"
            ) from None

    async def _send(
        self, client: httpx.AsyncClient, data: bytes, headers: dict[str, str]
    ) -> httpx.Response:
        """POST, following redirects only within the origin of :attr:`url` (re-sending the POST)."""
        url = httpx.URL(self.url)
        for _ in range(MAX_REDIRECTS + 1):
            response = await client.post(url, content=data, headers=headers)
            if not (response.is_redirect and response.headers.get("location")):
                return response
            try:
                location = url.join(response.headers["location"])
            except (httpx.InvalidURL, ValueError):
                raise TargetError(
                    f"{self.url} redirected to an invalid address", status=response.status_code
                ) from None
            if not same_origin(location, url):
                raise TargetError(
                    f"{self.url} redirected (HTTP {response.status_code}) to another origin, "
                    f"{location.scheme}://{location.netloc.decode('ascii', 'replace')}; not followed so the key "
                    "is not sent there — if you trust it, use that address as the base URL",
                    status=response.status_code,
                )
            url = location
        raise TargetError(f"{self.url} redirected more than {MAX_REDIRECTS} times")

    def _final_error(self, failure: RetryableFailure, attempts: int) -> TargetError:
        if failure.kind == "timeout":
            return TargetError(
                f"{self.url} timed out: {failure.message} per attempt, {attempts} attempt(s)"
            )
        if failure.kind == "connect":
            return TargetError(
                f"cannot reach {self.url}: {failure.message} after {attempts} attempt(s); "
                "check --base-url / OPENAI_BASE_URL and that the server runs"
            )
        if failure.kind == "broken":
            return TargetError(
                f"{self.url} failed: {failure.message} after {attempts} attempt(s); "
                "is an OpenAI-compatible HTTP server listening there?"
            )
        return TargetError(
            f"{self.url} kept failing after {attempts} attempt(s); last answer {failure.message}",
            status=failure.status,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds before the next attempt: the server's Retry-After when given, else backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff)
        delay: float = min(self.max_backoff, self.backoff * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter: between half and the full delay

    def _describe(self, exc: BaseException) -> str:
        return self.redact(" ".join(str(exc).split()) or type(exc).__name__)


def redact(text: str, key: str | None) -> str:
    """``text`` with every occurrence of ``key`` replaced by ``***``."""
    if key and key in text:
        text = text.replace(key, REDACTED)
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
            raise ConfigError(
                f"the API key has a space or control character inside it "
                f"(character {position} of {len(key)}); check where it was read from"
            )
    return key


def header_safe(text: str, *, allow_space: bool = False) -> bool:
    """Printable ASCII only (plus spaces in a value): nothing that could split a header."""
    lowest = 0x20 if allow_space else 0x21
    return all(lowest <= ord(char) <= 0x7E for char in text)


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
    return (a.scheme, a.host, a.port or default.get(a.scheme)) == (
        b.scheme,
        b.host,
        b.port or default.get(b.scheme),
    )


def run_coroutine(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run a coroutine to completion from synchronous code, even inside a running event loop
    (a notebook): then it runs on its own loop in a helper thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()
