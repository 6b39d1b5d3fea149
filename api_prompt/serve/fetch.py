"""Fetching an http(s) image URL for the proxy, with byte and time limits (``--allow-url-fetch``).

The URL a client names is fetched as given: the operator opted in to fetching what clients ask
for. Redirects are followed by hand, at most :data:`MAX_REDIRECTS`, and only to hosts whose
every address is public, so a page elsewhere cannot bounce the proxy into the private network
(loopback, RFC 1918, link-local such as cloud metadata services, ...). The body is read in
chunks and abandoned as soon as it passes ``max_bytes``; ``timeout`` bounds the whole fetch.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpx

from .messages import RequestError, read_limited

__all__ = ["fetch_image", "is_public_host", "MAX_REDIRECTS"]

MAX_REDIRECTS = 3


async def is_public_host(host: str) -> bool:
    """Whether every address ``host`` resolves to is a public (global) one.

    >>> import asyncio
    >>> asyncio.run(is_public_host("127.0.0.1")), asyncio.run(is_public_host("169.254.169.254"))
    (False, False)
    """
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return False
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    return bool(addresses) and all(address.is_global for address in addresses)


async def fetch_image(client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout: float,
                      param: str | None = None) -> bytes:
    """The bytes at ``url``; RequestError 400 (unreachable, refused, not 200, too slow) or 413."""
    try:
        return await asyncio.wait_for(_fetch(client, url, max_bytes, param), timeout)
    except asyncio.TimeoutError:
        raise RequestError(400, f"the image URL did not answer completely within {timeout:g} s", param=param) from None
    except httpx.HTTPError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise RequestError(400, f"the image URL could not be fetched ({reason})", param=param) from None


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int, param: str | None) -> bytes:
    target = httpx.URL(url)
    for hop in range(MAX_REDIRECTS + 1):
        async with client.stream("GET", target, follow_redirects=False) as response:
            if response.is_redirect and response.headers.get("location"):
                location = target.join(response.headers["location"])
                if location.scheme not in ("http", "https"):
                    raise RequestError(400, "the image URL redirected to a non-http(s) address", param=param)
                if not await is_public_host(location.host):
                    raise RequestError(400, "the image URL redirected to a private address; not followed",
                                       param=param)
                target = location
                continue
            if response.status_code != 200:
                raise RequestError(400, f"the image URL answered HTTP {response.status_code}", param=param)
            return await read_limited(response.aiter_bytes(), response.headers.get("content-length", ""),
                                      max_bytes, what="the image", code="image_too_large", param=param)
    raise RequestError(400, f"the image URL redirected more than {MAX_REDIRECTS} times", param=param)
