"""The OpenAI-compatible proxy: attention prompting for every client that speaks the chat API.

Long because: the request path of the proxy (read, check, prompt, forward, stream back, hang-up
handling) is kept in one file so that every refusal it makes can be read in order; messages,
styles, fetching, batching and rendering are in their own modules.

``POST /v1/chat/completions``: every ``image_url`` part of a user message (a base64 data URL, or
an http(s) URL with ``allow_url_fetch``) is replaced by the attention-prompted image (a JPEG for a
JPEG, a lossless PNG for anything else: :mod:`~api_prompt.serve.render`), the message's text
being the query. The image is shown in the server's prompt style, or in the one the request's
``api_prompt`` field asks for (:mod:`~api_prompt.serve.styles`); a style that shows several
images (``crop``: the original, then the zoomed crop) puts them in that place of the message,
in order. Everything else in the request goes to the upstream unchanged (``api_prompt`` is taken out).
The upstream's status, headers and body come back as they are, streamed chunk by chunk (so
server-sent events pass through as the upstream sends them). ``GET /v1/models`` and
``GET /v1/models/{id}`` (one path segment, percent-encoded on the way up) are forwarded and no
other path is: an id holding ``/``, ``\\`` or ``..``, encoded or not, is refused with 400.
``GET /health`` answers locally. When a client goes away, its upstream request is closed and
its queued images leave the batcher.

Nothing one request does stalls the others: decoding, overlay and encoding of an image above
:data:`INLINE_MAX_PIXELS`, and every model call with such an image, run in worker threads.

Images of requests that arrive together are prompted in one batch
(:class:`~api_prompt.serve.batcher.MicroBatcher`). Errors the proxy itself raises use the OpenAI
error shape ``{"error": {"message", "type", "param", "code"}}``: 400 malformed request (any
unparsable body), bad image, failed image fetch, a bad ``api_prompt`` field, or more images
than the queue can ever hold (counted as images to prompt, not images sent upstream);
401 missing or wrong client key, 413 too large (bytes or pixels), 429 queue full for now (with
``Retry-After``), 502 upstream unreachable, 504 upstream too slow.

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
import io
import json
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import APIPromptError, ImageLoadError
from ..images import DEFAULT_MAX_PIXELS, ImageTooLargeError, load_image
from ..styles import Style
from .batcher import MicroBatcher, QueueFull
from .fetch import fetch_client, fetch_failed, fetch_image
from .messages import (
    RequestError,
    decode_data_url,
    find_images,
    parse_request,
    read_limited,
    replace_images,
)
from .render import encode_like
from .styles import ServerStyles

__all__ = ["INLINE_MAX_PIXELS", "ServeConfig", "create_app", "error_response"]

logger = logging.getLogger("api_prompt.serve")

#: Images up to this many pixels are decoded, overlaid and encoded on the event loop when their
#: request is the only one in flight (a thread hand-off would only add latency); larger ones, and
#: every image while other requests are in flight, in a worker thread.
INLINE_MAX_PIXELS = 1_000_000
#: Request bodies above this many bytes are parsed (and prompted ones serialised) in a thread.
_INLINE_MAX_JSON_BYTES = 1 << 20

# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus those httpx or
# the server set themselves.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
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
        allow_url_fetch: fetch http(s) image URLs on public addresses (otherwise they are
            refused with 400; see :mod:`~api_prompt.serve.fetch` for what is fetched).
        allow_private_fetch: host names (or IP addresses) whose URLs are fetched even though they
            resolve to loopback, private or other non-public addresses.
        fetch_timeout: seconds one image fetch may take in all.
        max_image_bytes: largest encoded image (data URL or fetched).
        max_body_bytes: largest request body.
        max_image_pixels: largest decoded image in pixels (413 beyond; the package's
            decompression-bomb guard, by default the library's own limit).
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
    allow_private_fetch: tuple[str, ...] = ()
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


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSON error in the shape OpenAI's API (and its SDKs) use."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "not_found_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def prompter_stages(prompter) -> tuple[Callable, Callable]:
    """``(prompter.attribute, prompter.render)``: the batched model call, and the model-free overlay.
    Together they are exactly ``prompter.batch`` for a one-image style; the proxy runs the first
    once per micro-batch and the request's style per request (for the prompter's own one-image
    style, the pixels ``render`` gives), so while other requests are in flight the overlays and encoding
    of one batch overlap with the model call of the next (as ``api-prompt batch`` does).
    """
    return prompter.attribute, prompter.render


def create_app(
    prompter=None,
    config: ServeConfig | None = None,
    *,
    style: str | None = None,
    style_options: dict[str, Any] | None = None,
    run_batch: Callable[[list[Image.Image], list[str]], Sequence[Any]] | None = None,
    render: Callable[[Image.Image, Any], Image.Image | list[Image.Image]] | None = None,
) -> Starlette:
    """The proxy as an ASGI application (serve it with uvicorn).

    ``prompter`` is a :class:`~api_prompt.Prompter`. ``style`` and ``style_options`` are the
    server's default prompt style (None: the prompter's own, ``overlay`` unless it was built
    with another) and its options, with the prompter's overlay settings; a request may ask for
    another (see :mod:`~api_prompt.serve.styles`). An unknown style, an option no style takes or
    a value a style refuses is a one-line :class:`~api_prompt.errors.ConfigError` here, before
    the proxy starts.

    Instead of a prompter, ``run_batch(images, queries)`` may give one result per image, and
    ``render(image, result)`` the prompted image (or images) from it (default: the result is the
    prompted image); tests use a fast fake this way, and the style is then only checked.

    >>> from api_prompt.serve import ServeConfig, create_app
    >>> create_app(config=ServeConfig(upstream="http://127.0.0.1:9/v1"), run_batch=list, style="zoom")
    Traceback (most recent call last):
    ...
    api_prompt.errors.ConfigError: unknown style 'zoom'; choose one of: overlay, crop, blur, box
    """
    if config is None:
        raise ValueError("create_app needs a ServeConfig with the upstream URL")
    styles = ServerStyles.create(prompter if run_batch is None else None, style, style_options)
    if run_batch is None:
        if prompter is None:
            raise ValueError("create_app needs a prompter (or a run_batch function)")
        run_batch = prompter.attribute  # and the style draws each map (render None)
    elif render is None:
        render = _result_is_the_image
    upstream = config.upstream.rstrip("/")
    arriving = [0]  # chat requests with images, received but not yet queued for the model
    prompting = [0]  # chat requests with images, from their arrival until their images are encoded
    large = [0]  # of those, requests with an image above INLINE_MAX_PIXELS
    batcher = MicroBatcher(
        run_batch,
        max_batch=config.max_batch,
        max_wait_ms=config.max_wait_ms,
        max_queue=config.max_queue,
        arriving=lambda: arriving[0],
        alone=lambda: prompting[0] <= 1 and not large[0],
    )
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        timeout = httpx.Timeout(config.upstream_timeout)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        state["upstream"] = httpx.AsyncClient(
            timeout=timeout, limits=limits, follow_redirects=False, trust_env=False
        )
        state["fetch"] = fetch_client(config.fetch_timeout, config.allow_private_fetch)
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
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), config.api_key.encode()
        )

    def upstream_headers(request: Request) -> dict[str, str]:
        headers = {
            name: value for name, value in request.headers.items() if name not in _NOT_FORWARDED
        }
        headers["accept-encoding"] = request.headers.get("accept-encoding", "identity")
        if config.upstream_api_key:
            headers["authorization"] = f"Bearer {config.upstream_api_key}"
        elif not config.api_key and "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        return headers

    async def forward(request: Request, method: str, path: str, body: bytes | None) -> Response:
        """``path`` (already checked) on the upstream, with the client's query string (Azure's
        ``api-version``, ...) and headers but the proxy's key policy."""
        client = state["upstream"]
        outgoing = client.build_request(
            method,
            upstream + path,
            content=body,
            headers=upstream_headers(request),
            params=list(request.query_params.multi_items()),
        )
        try:
            response = await asyncio.wait_for(
                client.send(outgoing, stream=True), config.upstream_timeout
            )
        except (asyncio.TimeoutError, httpx.TimeoutException):
            return error_response(
                504,
                f"the upstream did not answer within {config.upstream_timeout:g} s",
                code="upstream_timeout",
            )
        except httpx.HTTPError as exc:
            logger.warning("upstream %s unreachable: %s", upstream, type(exc).__name__)
            return error_response(
                502,
                f"the upstream is unreachable ({type(exc).__name__}: "
                f"{' '.join(str(exc).split())[:200]})",
                code="upstream_unreachable",
            )
        headers = [
            (name.lower(), value)
            for name, value in response.headers.raw
            if name.lower().decode("latin-1") not in _HOP_BY_HOP
        ]
        return _PassThrough(response, headers)

    async def prompted_body(raw: bytes) -> bytes:
        """The body to send upstream: ``raw`` itself when it has no image to prompt."""
        body = await off_loop(lambda: parse_request(raw), inline=len(raw) <= _INLINE_MAX_JSON_BYTES)
        style, forwarded = styles.for_request(body)  # before any image is read or anything is sent
        parts = find_images(forwarded)
        if not parts:  # as it came, unless its api_prompt field has to come out
            return raw if forwarded is body else _to_json(forwarded)
        body = forwarded
        if len(parts) > config.max_queue:
            raise RequestError(
                400,
                f"the request holds {len(parts)} images; this proxy prompts at most "
                f"{config.max_queue} at once (its --max-queue), so it can never be served: "
                "send fewer images per request",
                param="messages",
                code="too_many_images",
            )
        arriving[0] += 1
        prompting[0] += 1
        counted_large = False
        try:
            try:
                loaded = await asyncio.gather(*(load_part(part) for part in parts))
                if any(image.width * image.height > INLINE_MAX_PIXELS for image, _ in loaded):
                    large[0] += 1
                    counted_large = True
            finally:
                arriving[0] -= 1
                batcher.wake()
            results = await batcher.prompt(
                [image for image, _ in loaded], [part.query for part in parts]
            )

            def finish() -> bytes:
                urls = [
                    [
                        encode_like(
                            shown,
                            source,
                            jpeg_quality=config.jpeg_quality,
                            png_compress_level=config.png_compress_level,
                        )
                        for shown in pictures(image, result, style)
                    ]
                    for (image, source), result in zip(loaded, results)
                ]
                return _to_json(replace_images(body, parts, urls))

            return await off_loop(
                finish, inline=not counted_large and len(raw) <= _INLINE_MAX_JSON_BYTES
            )
        finally:
            prompting[0] -= 1
            if counted_large:
                large[0] -= 1

    def pictures(image: Image.Image, result: Any, style: Style) -> list[Image.Image]:
        """What the upstream is shown for ``image``: the style's pictures of its map, in order
        (``crop``: the original, then the zoomed crop), or what ``render`` makes of a fake's result."""
        if render is None:
            return style.apply(image, result)
        shown = render(image, result)
        return list(shown) if isinstance(shown, (list, tuple)) else [shown]

    async def off_loop(work: Callable[[], Any], *, inline: bool = True) -> Any:
        """``work()`` in a worker thread, except when it is small (``inline``) and its request is
        the only one in flight: then on the event loop (a thread hand-off would only add latency)."""
        if inline and prompting[0] <= 1:
            return work()
        return await asyncio.to_thread(work)

    async def load_part(part) -> tuple[Image.Image, bytes]:
        """The decoded image, and its encoded bytes (whose format the prompted image keeps)."""
        fetched = False
        if part.url.startswith("data:"):
            data = decode_data_url(part.url, max_bytes=config.max_image_bytes, param=part.param)
        elif part.url.lower().startswith(("http://", "https://")):
            if not config.allow_url_fetch:
                raise RequestError(
                    400,
                    "http(s) image URLs are not fetched by this proxy (start it with "
                    "--allow-url-fetch); send the image as a base64 data URL",
                    param=part.param,
                )
            data = await fetch_image(
                state["fetch"],
                part.url,
                max_bytes=config.max_image_bytes,
                timeout=config.fetch_timeout,
                param=part.param,
            )
            fetched = True
        else:
            raise RequestError(
                400, "the image URL must be a base64 data URL or an http(s) URL", param=part.param
            )
        try:
            small = _header_pixels(data) <= INLINE_MAX_PIXELS
            return await off_loop(
                lambda: load_image(data, max_pixels=config.max_image_pixels), inline=small
            ), data
        except ImageTooLargeError as exc:
            raise RequestError(
                413, _too_many_pixels(exc), param=part.param, code="image_too_large"
            ) from None
        except ImageLoadError as exc:
            if fetched:  # the same answer as any other failed fetch
                logger.info("image fetched for %s is not an image: %s", part.param, exc)
                raise fetch_failed(
                    max_bytes=config.max_image_bytes, timeout=config.fetch_timeout, param=part.param
                ) from None
            message = re.sub(
                r"^cannot load image <[^>]*>", "cannot load the image", " ".join(str(exc).split())
            )
            raise RequestError(400, message, param=part.param, code="invalid_image") from None

    async def prompt_and_forward(request: Request, raw: bytes) -> Response:
        try:
            data = await prompted_body(raw)
        except RequestError as exc:
            return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
        except QueueFull as exc:
            return error_response(
                429, str(exc), code="queue_full", headers={"Retry-After": str(exc.retry_after)}
            )
        except APIPromptError as exc:  # e.g. a query the auxiliary model cannot read
            return error_response(
                400, " ".join(str(exc).split()), code="attention_prompting_failed"
            )
        except Exception:
            logger.exception("attention prompting failed")
            return error_response(
                500, "attention prompting failed on the proxy; see its log", code="proxy_error"
            )
        return await forward(request, "POST", "/chat/completions", data)

    async def chat_completions(request: Request) -> Response:
        if not client_allowed(request):
            return _unauthorized()
        try:
            raw = await read_body(request, config.max_body_bytes)
        except RequestError as exc:
            return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
        return await _unless_disconnected(request.receive, prompt_and_forward(request, raw))

    async def models(request: Request) -> Response:
        if not client_allowed(request):
            return _unauthorized()
        try:
            path = _models_path(request.scope)
        except RequestError as exc:
            return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
        return await _unless_disconnected(request.receive, forward(request, "GET", path, None))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": batcher.queued, "batches": batcher.batches})

    async def not_found(request: Request) -> Response:
        return error_response(
            404,
            f"{request.method} {request.url.path} is not served by this proxy "
            "(it serves POST /v1/chat/completions, GET /v1/models, GET /health)",
        )

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{rest:path}", models, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.batcher = batcher
    return app


class _PassThrough(Response):
    """The upstream's response, relayed as it arrives: status, headers, and each body chunk.

    When the client goes away mid-answer, the upstream response is closed at once (so the model
    server stops generating for nobody) instead of being read to its end.
    """

    def __init__(self, upstream: httpx.Response, headers: list[tuple[bytes, bytes]]) -> None:
        self.upstream = upstream
        self.status_code = upstream.status_code
        self.raw_headers = headers
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await _unless_disconnected(receive, self._relay(send))
        finally:
            await self.upstream.aclose()

    async def _relay(self, send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.upstream.aiter_raw():
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except httpx.HTTPError as exc:
            # The upstream broke off mid-answer: end the connection so the client sees it too.
            logger.warning("upstream answer broken off: %s", type(exc).__name__)
            raise


async def _disconnected(receive) -> None:
    """Returns once the client has gone away (call after the request body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(receive, work: Awaitable[Any]) -> Any:
    """``await work``, cancelled as soon as the client disconnects (then None; nobody is listening).

    Cancelling closes what ``work`` holds open: its upstream request (httpx closes the connection)
    and its place in the batcher's queue.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        result = await task
    except asyncio.CancelledError:
        return Response(status_code=499)
    if isinstance(result, _PassThrough):  # it got the upstream's answer just as the client left
        await result.upstream.aclose()
    return Response(status_code=499)


_MODELS = "/v1/models"
_BAD_ID = re.compile(r"[/\\\x00-\x1f\x7f]|^\.{1,2}$|\.\.")


def _models_path(scope) -> str:
    """The upstream path for ``GET /v1/models`` or ``/v1/models/{id}``; RequestError 400 otherwise.

    Read from the raw (still percent-encoded) request path, so ``%2F`` or ``%2e%2e`` cannot become
    a path separator or a parent segment on the way up; the id is percent-encoded again, whole.

    >>> _models_path({"raw_path": b"/v1/models/Qwen2-VL-7B%3Alatest", "path": ""})
    '/models/Qwen2-VL-7B%3Alatest'
    >>> _models_path({"raw_path": b"/v1/models/..%2Ffiles", "path": ""})
    Traceback (most recent call last):
    ...
    api_prompt.serve.messages.RequestError: the model id must be one path segment without '/', '\\' or '..' (encoded or not)
    """
    raw = scope.get("raw_path")
    raw = (
        raw.decode("latin-1").split("?", 1)[0]
        if raw is not None
        else urllib.parse.quote(scope["path"])
    )
    if raw in (_MODELS, _MODELS + "/"):
        return "/models"
    if not raw.startswith(_MODELS + "/"):
        raise RequestError(
            400, "only GET /v1/models and GET /v1/models/{id} are forwarded", param="model"
        )
    try:
        model = urllib.parse.unquote(raw[len(_MODELS) + 1 :], errors="strict")
    except UnicodeDecodeError:
        raise RequestError(
            400, "the model id is not percent-encoded UTF-8", param="model"
        ) from None
    if _BAD_ID.search(model) or _BAD_ID.search(urllib.parse.unquote(model)):
        raise RequestError(
            400,
            "the model id must be one path segment without '/', '\\' or '..' (encoded or not)",
            param="model",
        )
    return "/models/" + urllib.parse.quote(model, safe="")


def _to_json(body: dict[str, Any]) -> bytes:
    """``body`` as UTF-8 JSON; text holding lone surrogates (valid as JSON escapes) stays escaped."""
    try:
        return json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body).encode("ascii")


def _header_pixels(data: bytes) -> int:
    """Width × height from the image header (no decoding); 0 when the header cannot be read."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.width * image.height
    except Image.DecompressionBombError:
        return INLINE_MAX_PIXELS + 1
    except Exception:
        return 0


def _too_many_pixels(exc: ImageTooLargeError) -> str:
    shown = (
        f"{exc.size[0]}x{exc.size[1]} = {exc.size[0] * exc.size[1]:,} pixels"
        if exc.size
        else "too many pixels"
    )
    limit = f"{exc.max_pixels:,}" if exc.max_pixels else "its limit"
    side = int(exc.max_pixels**0.5) if exc.max_pixels else None
    advice = (
        f"; resize it to at most {side}x{side} (or the same area) and send it again" if side else ""
    )
    return f"the image is too large ({shown}): this proxy prompts images of at most {limit} pixels (--max-pixels){advice}"


async def _http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own errors (405 for a wrong method, ...) in the OpenAI error shape too."""
    return error_response(
        exc.status_code,
        f"{request.method} {request.url.path}: {exc.detail}",
        headers=dict(exc.headers or {}),
    )


def _unauthorized() -> JSONResponse:
    return error_response(
        401,
        "missing or wrong API key for this proxy: send 'Authorization: Bearer <key>'",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    return await read_limited(
        request.stream(),
        request.headers.get("content-length", ""),
        limit,
        what="the request body",
        code="request_too_large",
    )


def _result_is_the_image(image: Image.Image, result: Image.Image) -> Image.Image:
    return result
