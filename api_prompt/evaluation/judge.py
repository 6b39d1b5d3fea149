"""A judge model for the judge-scored benchmarks: the client, the request, the cache, the calls.

MM-Vet and LLaVA-Bench (in the wild) are scored by a language model that reads the question,
the reference and the answer and writes a grade. This module asks that model; what it is asked
and how its reply is read belong to each benchmark (:mod:`api_prompt.evaluation.judged`).

- :class:`OpenAIJudge`: any OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, a local
  vLLM, ...), through the same httpx client as :class:`~api_prompt.targets.openai.OpenAITarget`
  (one deadline per attempt, bounded retries, redirects only within the origin, the key never
  shown). The key is ``api_key=``, else ``$API_PROMPT_JUDGE_KEY``, else ``$OPENAI_API_KEY``.
- :func:`chat_request`: the request body lmms-eval's OpenAI provider sends for one prompt: the
  prompt as the only (user) message, ``max_tokens`` and ``temperature``, or only
  ``max_completion_tokens`` for reasoning models (``gpt-5*``, ``o1*``, ``o3*``, ``o4*``), which
  refuse a temperature.
- :class:`JudgeCache`: ``DIR/judge_cache.jsonl``, every reply stored under the hash of the whole
  request *and* of which call it was (sample, condition, judge repeat, attempt), so a resumed or
  repeated run asks nothing twice, while the same question about two images is still two calls.
- :func:`grade_all`: runs every sample's grading rule concurrently (at most ``max_concurrency``
  requests in flight); a rule asks the judge as often as its benchmark's retry rule says. A judge
  that fails after its retries (timeouts, 5xx, 429) is that sample's error; a refused key or an
  unknown model or address (HTTP 401, 403, 404) stops the run with a ConfigError, since every
  other sample would fail the same way.

>>> chat_request("Grade this.", model="gpt-4o-2024-11-20", max_tokens=128, temperature=0.0)
{'model': 'gpt-4o-2024-11-20', 'messages': [{'role': 'user', 'content': 'Grade this.'}], 'max_tokens': 128, 'temperature': 0.0}
>>> chat_request("Grade this.", model="o3-mini", max_tokens=128, temperature=0.5)["max_completion_tokens"]
128
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TargetError
from ..targets.http import run_coroutine
from ..targets.openai import DEFAULT_BASE_URL, OpenAITarget, answer_text

__all__ = [
    "JUDGE_KINDS",
    "JUDGE_KEY_ENV",
    "OpenAIJudge",
    "create_judge",
    "chat_request",
    "JudgeCache",
    "JudgeJob",
    "JudgeResult",
    "grade_all",
    "CACHE",
]

JUDGE_KINDS = ("openai",)
#: The environment variable the judge's key is read from (before ``OPENAI_API_KEY``).
JUDGE_KEY_ENV = "API_PROMPT_JUDGE_KEY"
CACHE = "judge_cache.jsonl"
#: HTTP statuses that no other sample would fare better with: the run stops with the message.
FATAL_STATUSES = frozenset({401, 403, 404})
_REASONING_PREFIXES = ("gpt-5", "o1", "o3", "o4")

#: ``ask(temperature) -> reply text``: one call to the judge, as a grading rule sees it.
Ask = Callable[[float], Awaitable[str]]


def chat_request(prompt: str, *, model: str, max_tokens: int, temperature: float) -> dict[str, Any]:
    """The body lmms-eval 0.7's OpenAI judge provider sends for ``prompt`` (see the module doc)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    if model.startswith(_REASONING_PREFIXES):
        body["max_completion_tokens"] = max_tokens
    else:
        body.update(max_tokens=max_tokens, temperature=temperature)
    return body


class OpenAIJudge(OpenAITarget):
    """A chat model behind an OpenAI-compatible endpoint, asked to grade answers.

    Args:
        model: the judge's model name (``gpt-4o-2024-11-20``, a vLLM-served id, ...).
        base_url: the API root up to ``/v1`` (default: ``OPENAI_BASE_URL``, else OpenAI's).
        api_key: the bearer key (default: ``$API_PROMPT_JUDGE_KEY``, else ``$OPENAI_API_KEY``).
        max_concurrency: judge requests in flight at once.
        **options: ``timeout``, ``max_retries``, ``backoff``, ``max_backoff``, ``headers`` as for
            :class:`~api_prompt.targets.openai.OpenAITarget`.

    >>> OpenAIJudge("gpt-4o-2024-11-20", base_url="http://127.0.0.1:9/v1", api_key="sk-x")
    OpenAIJudge(model='gpt-4o-2024-11-20', base_url='http://127.0.0.1:9/v1', api_key='***')
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 8,
        **options: Any,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get(JUDGE_KEY_ENV) or os.environ.get("OPENAI_API_KEY")
        super().__init__(
            model, base_url=base_url, api_key=api_key, max_concurrency=max_concurrency, **options
        )
        if self._api_key is None and self.base_url == DEFAULT_BASE_URL:
            raise ConfigError(
                f"the judge at {DEFAULT_BASE_URL} needs an API key: set ${JUDGE_KEY_ENV} "
                "or pass --judge-api-key"
            )

    def _http_error(self, status: int, message: str) -> TargetError:
        if status in (401, 403):
            hint = "the judge's API key was refused" if self._api_key else "no API key was sent"
            return TargetError(
                f"the judge at {self.base_url} refused the request (HTTP {status}): {message} "
                f"— {hint}; set ${JUDGE_KEY_ENV} or pass --judge-api-key",
                status=status,
            )
        if status == 404:
            return TargetError(
                f"the judge at {self.url} answered 404: {message} — check --judge-base-url "
                f"(it should end in /v1) and the judge model {self.model!r}",
                status=status,
            )
        return super()._http_error(status, message)

    def __repr__(self) -> str:
        return "OpenAIJudge" + super().__repr__()[len("OpenAITarget") :]

    def describe(self) -> dict[str, Any]:
        return {"judge": "openai", "judge_model": self.model, "base_url": self.base_url}

    def request(self, prompt: str, *, max_tokens: int, temperature: float) -> dict[str, Any]:
        """The request body for one prompt (:func:`chat_request` with this judge's model)."""
        return chat_request(
            prompt, model=self.model, max_tokens=max_tokens, temperature=temperature
        )

    async def send(self, client, body: Mapping[str, Any]) -> dict[str, Any]:
        """One request (with this client's retries): ``{"content", "model", "usage"}``."""
        response = await self._post(client, json.dumps(body).encode("utf-8"))
        content = answer_text(response, redact=self._redact)
        usage = response.get("usage") if isinstance(response, dict) else None
        return {
            "content": content,
            "model": response.get("model") if isinstance(response, dict) else None,
            "usage": _usage(usage),
        }


def create_judge(
    spec: str, *, base_url: str | None = None, api_key: str | None = None, **options: Any
) -> OpenAIJudge:
    """A judge from ``"openai:MODEL"`` (the ``--judge`` syntax).

    >>> create_judge("openai:gpt-4o-2024-11-20", base_url="http://127.0.0.1:9/v1").model
    'gpt-4o-2024-11-20'
    >>> create_judge("gpt-4")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: --judge expected openai:MODEL (an OpenAI-compatible endpoint), got 'gpt-4'
    """
    kind, sep, model = str(spec).partition(":")
    if not sep or kind not in JUDGE_KINDS or not model.strip():
        raise ConfigError(
            f"--judge expected openai:MODEL (an OpenAI-compatible endpoint), got {spec!r}"
        )
    return OpenAIJudge(model.strip(), base_url=base_url, api_key=api_key, **options)


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens")}


# ------------------------------------------------------------------------------------------------
# The cache


class JudgeCache:
    """``judge_cache.jsonl``: one line per answered request, ``{"key": ..., "reply": {...}}``.

    Lines are whole and appended in one write each, so a killed run leaves at most one cut line
    (ignored, and cut off on the next start).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._replies: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            with open(self.path, "rb+") as handle:
                data = handle.read()
                end = data.rfind(b"\n") + 1
                if end != len(data):
                    handle.truncate(end)
            for line in data[:end].decode("utf-8", "replace").splitlines():
                try:
                    entry = json.loads(line)
                    self._replies[entry["key"]] = entry["reply"]
                except (ValueError, KeyError, TypeError):
                    continue

    def __len__(self) -> int:
        return len(self._replies)

    @staticmethod
    def key(call: Sequence[Any], body: Mapping[str, Any]) -> str:
        """The hash of which call this is (sample, condition, repeat, attempt) and the whole body."""
        text = json.dumps({"call": list(call), "request": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        return self._replies.get(key)

    def put(self, key: str, reply: dict[str, Any]) -> None:
        line = (json.dumps({"key": key, "reply": reply}, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._replies[key] = reply
            with open(self.path, "ab") as handle:
                handle.write(line)


# ------------------------------------------------------------------------------------------------
# Grading many samples


@dataclass
class JudgeJob:
    """One grading: ``rule(ask)`` returns the grade, asking the judge ``prompt`` as often as the
    benchmark's rule says; ``call`` names it in the cache (sample id, condition, repeat)."""

    call: tuple
    prompt: str
    max_tokens: int
    rule: Callable[[Ask], Awaitable[Any]]


@dataclass
class JudgeResult:
    """What one grading cost and returned (``error`` set when the judge could not be reached)."""

    grade: Any = None
    replies: list[str] = field(default_factory=list)
    calls: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None
    error: str | None = None


def grade_all(
    judge: OpenAIJudge, jobs: Sequence[JudgeJob], cache: JudgeCache | None
) -> list[JudgeResult]:
    """Every job's :class:`JudgeResult`, in order; at most ``judge.max_concurrency`` requests at once."""
    if not jobs:
        return []
    return run_coroutine(lambda: _grade_all(judge, jobs, cache))


async def _grade_all(judge: OpenAIJudge, jobs: Sequence[JudgeJob], cache: JudgeCache | None):
    limit = asyncio.Semaphore(judge.max_concurrency)
    async with judge._client() as client:

        async def grade(job: JudgeJob) -> JudgeResult:
            result = JudgeResult()

            async def ask(temperature: float) -> str:
                body = judge.request(job.prompt, max_tokens=job.max_tokens, temperature=temperature)
                key = JudgeCache.key([*job.call, result.calls], body)
                result.calls += 1
                reply = cache.get(key) if cache is not None else None
                if reply is None:
                    async with limit:
                        reply = await judge.send(client, body)
                    if cache is not None:
                        cache.put(key, reply)
                else:
                    result.cached += 1
                result.replies.append(reply["content"])
                result.prompt_tokens += reply["usage"]["prompt_tokens"]
                result.completion_tokens += reply["usage"]["completion_tokens"]
                result.model = reply.get("model") or result.model
                return reply["content"]

            try:
                result.grade = await job.rule(ask)
            except TargetError as exc:
                if exc.status in FATAL_STATUSES:
                    raise ConfigError(str(exc)) from None
                result.error = "judge: " + (" ".join(str(exc).split()) or type(exc).__name__)
            return result

        return list(await asyncio.gather(*(grade(job) for job in jobs)))
