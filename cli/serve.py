"""``api-prompt serve --upstream URL``: the attention-prompting proxy for OpenAI-compatible clients.

Loads the auxiliary model once (the same prompt options as ``api-prompt IMAGE QUERY``), then
serves ``/v1/chat/completions`` on ``--host:--port``, forwarding each request with its images
prompted to ``--upstream`` (see :mod:`api_prompt.serve.app`). SIGTERM or Ctrl-C stops accepting
connections, finishes the requests in flight, then exits.

Example::

    API_PROMPT_UPSTREAM_KEY=... api-prompt serve --upstream http://127.0.0.1:8000/v1 --port 8080
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
import warnings
from typing import Annotated

import typer

from api_prompt.errors import ConfigError
from api_prompt.images import DEFAULT_MAX_PIXELS
from api_prompt.styles import STYLES

from .common import DebugOpt, QuietOpt, handle_errors
from .options import PromptOptions, prompt_options

_SERVER = "Server"
_LIMITS = "Batching and limits"
DEFAULT_UPSTREAM_KEY_ENV = "API_PROMPT_UPSTREAM_KEY"

UpstreamOpt = Annotated[
    str,
    typer.Option(
        "--upstream",
        rich_help_panel=_SERVER,
        show_default=False,
        help="The OpenAI-compatible server requests go to, API root ending in /v1 "
        "(e.g. http://127.0.0.1:8000/v1 for vLLM).",
    ),
]
HostOpt = Annotated[
    str, typer.Option("--host", rich_help_panel=_SERVER, help="Address to listen on.")
]
PortOpt = Annotated[
    int,
    typer.Option(
        "--port",
        rich_help_panel=_SERVER,
        min=0,
        max=65535,
        help="Port to listen on (0: any free port, printed at start).",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        rich_help_panel=_SERVER,
        show_default=False,
        envvar="API_PROMPT_SERVE_KEY",
        help="Key clients must send as 'Authorization: Bearer KEY' (default $API_PROMPT_SERVE_KEY; "
        "none: no client authentication).",
    ),
]
UpstreamKeyEnvOpt = Annotated[
    str,
    typer.Option(
        "--upstream-key-env",
        rich_help_panel=_SERVER,
        metavar="NAME",
        help="Environment variable holding the key sent to the upstream. When it is unset (and there "
        "is no --api-key), the client's own Authorization header is passed through.",
    ),
]
UpstreamTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--upstream-timeout",
        rich_help_panel=_SERVER,
        min=0.001,
        help="Seconds for the upstream to start answering (502/504 otherwise), and the longest pause "
        "while its answer streams.",
    ),
]
AllowUrlFetchOpt = Annotated[
    bool,
    typer.Option(
        "--allow-url-fetch",
        rich_help_panel=_SERVER,
        help="Fetch http(s) image URLs (default: refused with 400; base64 data URLs always work). Fetched: "
        "a GET to an http(s) URL whose host resolves only to public unicast addresses, following up to 3 "
        "redirects that pass the same check, answering 200 within --fetch-timeout with at most --max-image-mb. "
        "Never fetched: other schemes; any host with a loopback, private (RFC 1918, fc00::/7), link-local "
        "(169.254.0.0/16 cloud metadata, fe80::/10), shared, multicast, reserved or unspecified address, or an "
        "IPv6 form embedding an IPv4 address (::ffff:a.b.c.d and the like). The address is checked when the "
        "connection is opened (the one connected to, so DNS rebinding cannot pass), and every failure gives "
        "the client the same message.",
    ),
]
AllowPrivateFetchOpt = Annotated[
    str | None,
    typer.Option(
        "--allow-private-fetch",
        rich_help_panel=_SERVER,
        metavar="HOST[,HOST]",
        show_default=False,
        help="With --allow-url-fetch: host names or IP addresses (exactly as written in the URLs) that are "
        "fetched even though they resolve to private or loopback addresses, e.g. an internal image server. "
        "Nothing else is widened.",
    ),
]
MaxBatchOpt = Annotated[
    int,
    typer.Option(
        "--max-batch",
        rich_help_panel=_LIMITS,
        min=1,
        help="Most images attributed in one model call.",
    ),
]
MaxWaitOpt = Annotated[
    float,
    typer.Option(
        "--max-wait-ms",
        rich_help_panel=_LIMITS,
        min=0.0,
        help="How long the first image of a batch waits for others to join it.",
    ),
]
MaxQueueOpt = Annotated[
    int,
    typer.Option(
        "--max-queue",
        rich_help_panel=_LIMITS,
        min=1,
        help="Most images waiting for attribution; beyond it requests get 429 with Retry-After.",
    ),
]
MaxImageMbOpt = Annotated[
    float,
    typer.Option(
        "--max-image-mb",
        rich_help_panel=_LIMITS,
        min=0.001,
        help="Largest encoded image (413 beyond).",
    ),
]
PngCompressionOpt = Annotated[
    int,
    typer.Option(
        "--png-compression",
        rich_help_panel=_LIMITS,
        min=0,
        max=9,
        help="zlib level of the prompted PNGs sent upstream (lossless at every level): 0 is fastest, "
        "9 smallest.",
    ),
]
MaxPixelsOpt = Annotated[
    int,
    typer.Option(
        "--max-pixels",
        rich_help_panel=_LIMITS,
        min=1,
        max=DEFAULT_MAX_PIXELS,
        help="Largest image in pixels (width x height); larger ones get 413 with the limit in the message. "
        "Lower it to bound the memory and time one request can take (a 12000x12000 image needs several GB).",
    ),
]
FetchTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--fetch-timeout",
        rich_help_panel=_LIMITS,
        min=0.001,
        help="Seconds one image URL fetch may take in all (--allow-url-fetch).",
    ),
]


@prompt_options()
def serve_command(
    upstream: UpstreamOpt,
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8080,
    api_key: ApiKeyOpt = None,
    upstream_key_env: UpstreamKeyEnvOpt = DEFAULT_UPSTREAM_KEY_ENV,
    upstream_timeout: UpstreamTimeoutOpt = 600.0,
    allow_url_fetch: AllowUrlFetchOpt = False,
    allow_private_fetch: AllowPrivateFetchOpt = None,
    max_batch: MaxBatchOpt = 8,
    max_wait_ms: MaxWaitOpt = 10.0,
    max_queue: MaxQueueOpt = 256,
    max_image_mb: MaxImageMbOpt = 20.0,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    fetch_timeout: FetchTimeoutOpt = 10.0,
    png_compression: PngCompressionOpt = 1,
    *,
    options: PromptOptions,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Serve attention prompting as an OpenAI-compatible proxy in front of --upstream.

    Example:  api-prompt serve --upstream http://127.0.0.1:8000/v1 --port 8080
    """
    from api_prompt.targets.openai import clean_api_key

    with handle_errors(debug):
        # 1. Everything cheap first, so a typo never costs a model load.
        try:
            import uvicorn

            from api_prompt.serve.app import ServeConfig, create_app
        except ImportError as exc:
            raise ConfigError(
                f"api-prompt serve needs Starlette and uvicorn ({exc.name} is missing): "
                "pip install 'api-prompt[serve]'"
            ) from None
        if not upstream.startswith(("http://", "https://")):
            raise ConfigError(f"--upstream must be an http:// or https:// URL, got {upstream!r}")
        config = ServeConfig(
            upstream=upstream.strip().rstrip("/"),
            api_key=clean_api_key(api_key),
            upstream_api_key=clean_api_key(os.environ.get(upstream_key_env)),
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            upstream_timeout=upstream_timeout,
            allow_url_fetch=allow_url_fetch,
            allow_private_fetch=parse_hosts(allow_private_fetch or ""),
            fetch_timeout=fetch_timeout,
            max_image_bytes=int(max_image_mb * 1024 * 1024),
            max_image_pixels=max_pixels,
            png_compress_level=png_compression,
        )
        if config.allow_private_fetch and not allow_url_fetch:
            raise ConfigError("--allow-private-fetch only applies with --allow-url-fetch")
        # a request may ask for any style: -S may set the defaults of every one
        options.check(also_styles=tuple(STYLES))
        style_options = options.checked_style_options(also=tuple(STYLES))
        listener = _bind(host, port)

        # 2. The model, then the server (which handles SIGTERM/SIGINT itself).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prompter = options.build(quiet=quiet, also_styles=tuple(STYLES))
        bound_host, bound_port = listener.getsockname()[:2]
        if not quiet:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            typer.echo(
                f"Serving http://{shown}:{bound_port}/v1 -> {config.upstream} "
                f"(max batch {max_batch}, max wait {max_wait_ms:g} ms)",
                err=True,
            )
            sys.stderr.flush()
        # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal to the handler that
        # was there before; a no-op one makes a graceful stop exit with status 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(
                    prompter, config, style=options.style, style_options=style_options or None
                ),
                log_level=logging.WARNING if quiet else logging.INFO,
                server_header=False,
                date_header=False,
                access_log=not quiet,
                lifespan="on",
            )
        )
        server.run(sockets=[listener])


def parse_hosts(value: str) -> tuple[str, ...]:
    """The hosts of ``--allow-private-fetch``: comma-separated names or IP addresses, no scheme or port.

    >>> parse_hosts("images.internal, 10.0.0.5,[fd00::1]")
    ('images.internal', '10.0.0.5', 'fd00::1')
    """
    hosts = []
    for host in (item.strip() for item in value.split(",")):
        if not host:
            continue
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not re.fullmatch(r"[A-Za-z0-9._:-]+", bare) or "://" in host:
            raise ConfigError(
                f"--allow-private-fetch takes host names or IP addresses separated by commas "
                f"(no scheme, port or path), got {host!r}"
            )
        hosts.append(bare)
    return tuple(hosts)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (so a busy port is one clear error, before the model loads)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(
            f"--host {host!r} is not an address this machine can listen on ({exc})"
        ) from None
    listener = socket.socket(family, kind, proto)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
        listener.listen(2048)
    except OSError as exc:
        listener.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.set_inheritable(True)
    return listener
