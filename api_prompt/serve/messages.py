"""Pure functions on chat-completions requests: find the images to prompt, put prompted ones back.

An image to prompt is an ``image_url`` part of a **user** message; the message's text parts,
joined, are its query. A user message with images and no text (the chat format allows the
question to come in a separate message) takes its query from the **nearest user message of the
same turn that has text**: a turn is a run of consecutive user messages, nearness is counting
messages, and between two equally near the later one wins (image first, then the question, is
the usual order). Only a turn without any user text is refused. Everything else in the request
(other messages, other fields, the ``detail`` hint) is left exactly as it was.

>>> body = {"model": "m", "messages": [{"role": "user", "content": [
...     {"type": "text", "text": "What color"}, {"type": "text", "text": "is the car?"},
...     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}}]}]}
>>> (found,) = find_images(body)
>>> found.query, found.url[:15], found.location
('What color is the car?', 'data:image/png;', (0, 2))
>>> new = replace_images(body, [found], ["data:image/png;base64,BBBB"])
>>> new["messages"][0]["content"][2]
{'type': 'image_url', 'image_url': {'url': 'data:image/png;base64,BBBB', 'detail': 'high'}}
>>> body["messages"][0]["content"][2]["image_url"]["url"]          # the original is untouched
'data:image/png;base64,AAAA'
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ImagePart",
    "RequestError",
    "find_images",
    "replace_images",
    "decode_data_url",
    "parse_request",
    "read_limited",
]

_DATA_URL = re.compile(
    r"^data:(?P<type>[^;,]*)(?P<params>(;[^;,]*)*?)(?P<base64>;base64)?,", re.IGNORECASE
)


class RequestError(Exception):
    """A request the proxy cannot use: ``status`` (400, 413, ...) and a one-line ``message``."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class ImagePart:
    """One image to prompt: where it is, its URL, and the query it is prompted for."""

    location: tuple[int, int]  # (message index, part index)
    url: str
    query: str

    @property
    def param(self) -> str:
        """The OpenAI-style ``param`` naming the part, for error messages."""
        return f"messages[{self.location[0]}].content[{self.location[1]}].image_url"


def parse_request(data: bytes) -> dict[str, Any]:
    """The JSON body of a chat-completions request; RequestError 400 when it is not one.

    >>> parse_request(b'{"model": "m", "messages": []}')
    Traceback (most recent call last):
    ...
    api_prompt.serve.messages.RequestError: 'messages' must be a non-empty list of messages
    """
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"the request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise RequestError(
            400, "the request body is nested too deeply to be a chat request"
        ) from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list of messages", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(
                400, f"messages[{index}] must be an object", param=f"messages[{index}]"
            )
    return body


def find_images(body: dict[str, Any]) -> list[ImagePart]:
    """Every ``image_url`` part of a user message, with its query (see the module docs).

    >>> body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
    ...                      {"role": "user", "content": "What is red?"}]}
    >>> [(part.location, part.query) for part in find_images(body)]
    [((0, 0), 'What is red?')]
    """
    messages = body["messages"]
    texts: dict[int, str] = {}
    found: list[tuple[int, int, str]] = []
    for m, message in enumerate(messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts[m] = content.strip()
            continue
        if not isinstance(content, list):
            continue
        parts = []
        for p, part in enumerate(content):
            if not isinstance(part, dict):
                raise RequestError(
                    400,
                    f"messages[{m}].content[{p}] must be an object",
                    param=f"messages[{m}].content[{p}]",
                )
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"].strip())
            elif part.get("type") == "image_url":
                found.append((m, p, _image_url(part, m, p)))
        texts[m] = " ".join(text for text in parts if text)
    return [ImagePart((m, p), url, _query(messages, texts, m)) for m, p, url in found]


def _query(messages: list[dict[str, Any]], texts: dict[int, str], m: int) -> str:
    """The query for an image in messages[m]: its own text, else the nearest user text of its turn."""
    if texts.get(m):
        return texts[m]
    turn = range(m, m + 1)
    while turn.start > 0 and messages[turn.start - 1].get("role") == "user":
        turn = range(turn.start - 1, turn.stop)
    while turn.stop < len(messages) and messages[turn.stop].get("role") == "user":
        turn = range(turn.start, turn.stop + 1)
    candidates = [i for i in turn if texts.get(i)]
    if not candidates:
        raise RequestError(
            400,
            f"messages[{m}] has an image but no text, and neither has any user message "
            "of its turn: the question is the query that attention prompting needs",
            param=f"messages[{m}].content",
        )
    return texts[min(candidates, key=lambda i: (abs(i - m), -i))]


def _image_url(part: dict[str, Any], m: int, p: int) -> str:
    value = part.get("image_url")
    url = value.get("url") if isinstance(value, dict) else value
    if not isinstance(url, str) or not url:
        raise RequestError(
            400,
            f"messages[{m}].content[{p}].image_url needs a 'url'",
            param=f"messages[{m}].content[{p}].image_url",
        )
    return url


def replace_images(
    body: dict[str, Any], parts: list[ImagePart], urls: Sequence[str | list[str]]
) -> dict[str, Any]:
    """A copy of ``body`` with each part's URL replaced by the matching one of ``urls``.

    An entry of ``urls`` that is a list replaces its part by one image part per URL, in order, in
    the same place of the same message (a style such as ``crop`` shows the target two images);
    each copy keeps the part's other fields (``detail``).

    >>> body = {"messages": [{"role": "user", "content": [
    ...     {"type": "image_url", "image_url": {"url": "A", "detail": "low"}}, {"type": "text", "text": "Red?"}]}]}
    >>> (part,) = find_images(body)
    >>> [p.get("image_url", p.get("text")) for p in replace_images(body, [part], [["B", "C"]])["messages"][0]["content"]]
    [{'url': 'B', 'detail': 'low'}, {'url': 'C', 'detail': 'low'}, 'Red?']
    """
    new = copy.copy(body)
    new["messages"] = messages = list(body["messages"])
    by_message: dict[int, dict[int, list[str]]] = {}
    for part, url in zip(parts, urls):
        m, p = part.location
        by_message.setdefault(m, {})[p] = [url] if isinstance(url, str) else list(url)
    for m, replaced in by_message.items():
        content = []
        for p, old in enumerate(messages[m]["content"]):
            if p not in replaced:
                content.append(old)
                continue
            value = old["image_url"]
            content.extend(
                {**old, "image_url": {**value, "url": url} if isinstance(value, dict) else url}
                for url in replaced[p]
            )
        messages[m] = {**messages[m], "content": content}
    return new


async def read_limited(
    chunks: AsyncIterable[bytes],
    declared: str,
    limit: int,
    *,
    what: str,
    code: str,
    param: str | None = None,
) -> bytes:
    """A body read from ``chunks``, refused with RequestError 413 as soon as it passes ``limit`` bytes.

    ``declared`` is its Content-Length header ('' when none): a larger one is refused before
    anything is read. ``what`` names the body in the message (``"the image"``).

    >>> import asyncio
    >>> async def body():
    ...     yield b"abc"
    ...     yield b"def"
    >>> asyncio.run(read_limited(body(), "", 6, what="the image", code="image_too_large"))
    b'abcdef'
    >>> asyncio.run(read_limited(body(), "", 5, what="the image", code="image_too_large"))
    Traceback (most recent call last):
    ...
    api_prompt.serve.messages.RequestError: the image is larger than the proxy's limit of 5 bytes
    """
    message = f"{what} is larger than the proxy's limit of {limit:,} bytes"
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(413, message, param=param, code=code)
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise RequestError(413, message, param=param, code=code)
        parts.append(chunk)
    return b"".join(parts)


def decode_data_url(url: str, *, max_bytes: int, param: str | None = None) -> bytes:
    """The bytes of a base64 ``data:`` URL; RequestError 400 (malformed) or 413 (too large).

    >>> decode_data_url("data:image/png;base64,aGVsbG8=", max_bytes=100)
    b'hello'
    """
    match = _DATA_URL.match(url)
    if match is None or not match.group("base64"):
        raise RequestError(
            400, "the image URL is not a base64 data URL (data:image/...;base64,...)", param=param
        )
    payload = url[match.end() :]
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise RequestError(
            413,
            f"the image is larger than the proxy's limit of {max_bytes:,} bytes",
            param=param,
            code="image_too_large",
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "the image's data URL is not valid base64", param=param) from None
