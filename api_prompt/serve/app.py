"""The OpenAI-compatible proxy: attention prompting for every client that speaks the chat API.

``POST /v1/chat/completions``: every ``image_url`` part of a user message (a base64 data URL, or
an http(s) URL with ``allow_url_fetch``) is replaced by the attention-prompted image (a JPEG for a
JPEG, a lossless PNG for anything else: :mod:`~api_prompt.serve.render`), the message's text
being the query; everything else in the request goes to the upstream unchanged.
The upstream's status, headers and body come back as they are, streamed chunk by chunk (so
server-sent events pass through as the upstream sends them). ``GET /v1/models`` is forwarded;
``GET /health`` answers locally.

Images of requests that arrive together are prompted in one batch
(:class:`~api_prompt.serve.batcher.MicroBatcher`). Errors the proxy itself raises use the OpenAI
error shape ``{"error": {"message", "type", "param", "code"}}``: 400 malformed request or bad
image, 401 missing or wrong client key, 413 too large, 429 queue full (with ``Retry-After``),
502 upstream unreachable, 504 upstream too slow.

Keys: with ``api_key`` set, clients must send ``Authorization: Bearer <api_key>`` (and it is
never forwarded). The upstream key (``upstream_api_key``, read from the environment by the CLI)
replaces whatever the client sent; with neither set, the client's own ``Authorization`` passes
through, so clients holding keys for a hosted API can use the proxy as they are. No key is ever
logged.

>>> from api_prompt.serve import ServeConfig, create_app                        # doctest: +SKIP
>>> app = create_app(prompter, ServeConfig(upstream="http://127.0.0.1:8000/v1"))  # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, port=8080)                                 # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Sequence

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import APIPromptError, ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, load_image
from .batcher import MicroBatcher, QueueFull
from .fetch import fetch_image
from .messages import RequestError, decode_data_url, find_images, parse_request, read_limited, replace_images
from .render import encode_like

__all__ = ["ServeConfig", "create_app", "error_response"]

logger = logging.getLogger("api_prompt.serve")

# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those httpx or
# the server set themselves.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                         "trailer", "transfer-encoding", "upgrade", "proxy-connection"})
_NOT_FORWARDED = _HOP_BY_HOP | {"host", "content-length", "authorization", "accept-encoding"}


@dataclass(frozen=True)
class ServeConfig:
    """Everything the proxy needs besides the prompter.

    Args:
        upstream: the upstream API root, up to and including ``/v1``.
        api_key: the key clients must send (None: no client authentication).
        upstream_api_key: the key sent to the upstream (None: see the module docs).
        max_batch, max_wait_ms, max_queue: the micro-batcher's limits.
        upstream_timeout: seconds for the upstream to start answering (connect + response
            headers), and the longest silence while its body streams.
        allow_url_fetch: fetch http(s) image URLs (otherwise they are refused with 400).
        fetch_timeout: seconds one image fetch may take in all.
        max_image_bytes: largest encoded image (data URL or fetched).
        max_body_bytes: largest request body.
        max_image_pixels: largest decoded image (the package's decompression-bomb guard).
        png_compress_level: zlib level (0-9) of the prompted PNGs sent upstream; 0 is fastest.
        jpeg_quality: quality (1-95) of the prompted JPEGs sent upstream for JPEG inputs; None
            sends every prompted image as a lossless PNG (see :func:`~api_prompt.serve.render.encode_like`).
    """

    upstream: str
    api_key: str | None = None
    upstream_api_key: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 256
    upstream_timeout: float = 600.0
    allow_url_fetch: bool = False
    fetch_timeout: float = 10.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_body_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int | None = DEFAULT_MAX_PIXELS
    png_compress_level: int = 1
    jpeg_quality: int | None = 95

    def __repr__(self) -> str:  # keys never appear in logs or tracebacks
        shown = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for name in ("api_key", "upstream_api_key"):
            shown[name] = "***" if shown[name] else None
        return "ServeConfig(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error in the shape OpenAI's API (and its SDKs) use."""
    kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
            413: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def prompter_stages(prompter) -> tuple[Callable, Callable]:
    """``(prompter.attribute, prompter.render)``: the batched model call, and the model-free overlay.
    Together they are exactly ``prompter.batch``; the proxy runs the first once per micro-batch
    and the second per request, so while other requests are in flight the overlays and encoding
    of one batch overlap with the model call of the next (as ``api-prompt batch`` does).
    """
    return prompter.attribute, prompter.render


def create_app(prompter=None, config: ServeConfig | None = None, *,
               run_batch: Callable[[list[Image.Image], list[str]], Sequence[Any]] | None = None,
               render: Callable[[Image.Image, Any], Image.Image] | None = None) -> Starlette:
    """The proxy as an ASGI application (serve it with uvicorn).

    ``prompter`` is a :class:`~api_prompt.Prompter`. Instead, ``run_batch(images, queries)`` may
    give one result per image, and ``render(image, result)`` the prompted image from it (default:
    the result is the prompted image); tests use a fast fake this way.
    """
    if config is None:
        raise ValueError("create_app needs a ServeConfig with the upstream URL")
    if run_batch is None:
        if prompter is None:
            raise ValueError("create_app needs a prompter (or a run_batch function)")
        run_batch, render = prompter_stages(prompter)
    if render is None:
        render = _result_is_the_image
    upstream = config.upstream.rstrip("/")
    arriving = [0]  # chat requests with images, received but not yet queued for the model
    prompting = [0]  # chat requests with images, from their arrival until their images are encoded
    batcher = MicroBatcher(run_batch, max_batch=config.max_batch, max_wait_ms=config.max_wait_ms,
                           max_queue=config.max_queue, arriving=lambda: arriving[0],
                           alone=lambda: prompting[0] <= 1)
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(config.upstream_timeout)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        state["upstream"] = httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=False,
                                              trust_env=False)
        state["fetch"] = httpx.AsyncClient(timeout=httpx.Timeout(config.fetch_timeout), trust_env=False,
                                           headers={"Accept-Encoding": "identity", "User-Agent": "api-prompt-serve"})
        await batcher.start()
        try:
            yield
        finally:  # after the server has finished its in-flight requests
            await batcher.stop()
            await state["upstream"].aclose()
            await state["fetch"].aclose()

    def client_allowed(request: Request) -> bool:
        if not config.api_key:
            return True
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), config.api_key.encode())

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {name: value for name, value in request.headers.items() if name not in _NOT_FORWARDED}
        headers["accept-encoding"] = request.headers.get("accept-encoding", "identity")
        if config.upstream_api_key:
            headers["authorization"] = f"Bearer {config.upstream_api_key}"
        elif not config.api_key and "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def forward(request: Request, method: str, path: str, body: bytes | None) -> Response:
        client = state["upstream"]
        outgoing = client.build_request(method, upstream + path, content=body, headers=upstream_headers(request),
                                        params=list(request.query_params.multi_items()))
        try:
            response = await asyncio.wait_for(client.send(outgoing, stream=True), config.upstream_timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return error_response(504, f"the upstream did not answer within {config.upstream_timeout:g} s",
                                  code="upstream_timeout")
        except httpx.HTTPError as exc:
            logger.warning("upstream %s unreachable: %s", upstream, type(exc).__name__)
            return error_response(502, f"the upstream is unreachable ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())[:200]})", code="upstream_unreachable")
        headers = [(name.lower(), value) for name, value in response.headers.raw
                   if name.lower().decode("latin-1") not in _HOP_BY_HOP]
        return _PassThrough(response, headers)

    async def prompt_request(request: Request, body: dict[str, Any]) -> dict[str, Any] | None:
        """The body with prompted images, or None when it has no image to prompt."""
        parts = find_images(body)
        if not parts:
            return None
        arriving[0] += 1
        prompting[0] += 1
        try:
            try:
                loaded = await asyncio.gather(*(load_part(part) for part in parts))
            finally:
                arriving[0] -= 1
                batcher.wake()
            results = await batcher.prompt([image for image, _ in loaded], [part.query for part in parts])
            urls = await off_loop(lambda: [
                encode_like(render(image, result), source, jpeg_quality=config.jpeg_quality,
                            png_compress_level=config.png_compress_level)
                for (image, source), result in zip(loaded, results)])
        finally:
            prompting[0] -= 1
        return replace_images(body, parts, urls)

    async def off_loop(work: Callable[[], Any]) -> Any:
        """``work()`` in a thread while other requests are being prompted, so they go on meanwhile;
        alone, on the event loop (a thread hand-off would only add to this request's latency)."""
        if prompting[0] <= 1:
            return work()
        return await asyncio.to_thread(work)

    async def load_part(part) -> tuple[Image.Image, bytes]:
        """The decoded image, and its encoded bytes (whose format the prompted image keeps)."""
        if part.url.startswith("data:"):
            data = decode_data_url(part.url, max_bytes=config.max_image_bytes, param=part.param)
        elif part.url.lower().startswith(("http://", "https://")):
            if not config.allow_url_fetch:
                raise RequestError(400, "http(s) image URLs are not fetched by this proxy (start it with "
                                        "--allow-url-fetch); send the image as a base64 data URL", param=part.param)
            data = await fetch_image(state["fetch"], part.url, max_bytes=config.max_image_bytes,
                                     timeout=config.fetch_timeout, param=part.param)
        else:
            raise RequestError(400, "the image URL must be a base64 data URL or an http(s) URL", param=part.param)
        try:
            return await off_loop(lambda: load_image(data, max_pixels=config.max_image_pixels)), data
        except ImageLoadError as exc:
            message = re.sub(r"^cannot load image <[^>]*>", "cannot load the image", " ".join(str(exc).split()))
            status = 413 if "too large" in message else 400
            raise RequestError(status, message, param=part.param,
                               code="image_too_large" if status == 413 else "invalid_image") from None

    async def chat_completions(request: Request) -> Response:
        if not client_allowed(request):
            return _unauthorized()
        try:
            raw = await read_body(request, config.max_body_bytes)
            body = parse_request(raw)
            prompted = await prompt_request(request, body)
        except RequestError as exc:
            return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
        except QueueFull as exc:
            return error_response(429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)})
        except APIPromptError as exc:  # e.g. a query the auxiliary model cannot read
            return error_response(400, " ".join(str(exc).split()), code="attention_prompting_failed")
        except Exception:  # noqa: BLE001 - a bug or a model failure: the client gets a clean 500
            logger.exception("attention prompting failed")
            return error_response(500, "attention prompting failed on the proxy; see its log", code="proxy_error")
        data = raw if prompted is None else json.dumps(prompted, ensure_ascii=False).encode("utf-8")
        return await forward(request, "POST", "/chat/completions", data)

    async def models(request: Request) -> Response:
        if not client_allowed(request):
            return _unauthorized()
        return await forward(request, "GET", "/" + request.url.path.removeprefix("/v1/").lstrip("/"), None)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": batcher.queued, "batches": batcher.batches})

    async def not_found(request: Request) -> Response:
        return error_response(404, f"{request.method} {request.url.path} is not served by this proxy "
                                   "(it serves POST /v1/chat/completions, GET /v1/models, GET /health)")

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.batcher = batcher
    return app


class _PassThrough(Response):
    """The upstream's response, relayed as it arrives: status, headers, and each body chunk."""

    def __init__(self, upstream: httpx.Response, headers: list[tuple[bytes, bytes]]) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.raw_headers = headers
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self.upstream.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:
            # The upstream broke off mid-answer: end the connection so the client sees it too.
            logger.warning("upstream answer broken off: %s", type(exc).__name__)
            raise
        finally:
            await self.upstream.aclose()


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (405 for a wrong method, ...) in the OpenAI error shape too."""
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                          headers=dict(exc.headers or {}))


def _unauthorized() -> JSONResponse:
    return error_response(401, "missing or wrong API key for this proxy: send 'Authorization: Bearer <key>'",
                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    return await read_limited(request.stream(), request.headers.get("content-length", ""), limit,
                              what="the request body", code="request_too_large")


def _result_is_the_image(image: Image.Image, result: Image.Image) -> Image.Image:
    return result
