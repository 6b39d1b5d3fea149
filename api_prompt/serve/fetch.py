"""Fetching an http(s) image URL for the proxy (``--allow-url-fetch``), never into the private network.

**What is fetched.** An ``http://`` or ``https://`` URL whose host resolves only to public
(globally routable, unicast) addresses, with a plain ``GET``, following at most
:data:`MAX_REDIRECTS` redirects to http(s) URLs that pass the same check; the answer must be
``200``, arrive within ``timeout`` seconds in all, and be at most ``max_bytes`` long.

**What is refused, before a byte is sent.** Any other scheme; any host with *one* address that
is loopback, private (RFC 1918, ULA), link-local (``169.254.0.0/16``: cloud metadata services;
``fe80::/10``), shared (``100.64.0.0/10``), multicast, reserved, unspecified (``0.0.0.0``,
``::``), documentation or benchmarking ranges, or an IPv6 form that embeds an IPv4 address
(IPv4-mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d``; 6to4 and NAT64 addresses whose
IPv4 address is not public). Hosts the operator names with ``--allow-private-fetch`` skip the
address check (and only they).

**How: the check happens where the socket is opened.** The fetch client's connections go
through :class:`PublicOnlyBackend`, an httpcore network backend. For every connection (the
first URL's and each redirect's) it resolves the host name *once*, checks every address it got,
and then connects to one of exactly those checked addresses, so DNS rebinding (a name that is
public when checked and private when connected) has no second lookup to exploit. TLS still
verifies the certificate against the URL's host name, and the ``Host`` header is the URL's.

**One error for everything.** A refused address, a name that does not resolve, a refused or
timed-out connection, a non-200 status, a redirect to elsewhere, a body over the limit, and
(in the proxy) a body that is not an image all give the same message
(:func:`fetch_failed`), so a client cannot use the proxy to learn which hosts and ports exist
behind it. The reason is logged on the proxy (host name only, never the full URL).

>>> is_public_address("93.184.216.34"), is_public_address("169.254.169.254")
(True, False)
>>> [is_public_address(a) for a in ("::ffff:8.8.8.8", "10.0.0.1", "224.0.0.1", "::")]
[False, False, False, False]
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import httpcore
import httpx

from .messages import RequestError, read_limited

__all__ = [
    "AddressRefused",
    "MAX_REDIRECTS",
    "PublicOnlyBackend",
    "fetch_client",
    "fetch_failed",
    "fetch_image",
    "is_public_address",
]

logger = logging.getLogger("api_prompt.serve")

MAX_REDIRECTS = 3

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052 NAT64).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class AddressRefused(httpcore.ConnectError):
    """A connection the fetch guard refused before opening a socket (httpx maps it to ConnectError)."""


def is_public_address(address: str | Address) -> bool:
    """Whether connecting to ``address`` stays on the public internet (see the module docs)."""
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if address.version == 6:
        if (
            address.ipv4_mapped is not None or int(address) >> 32 == 0
        ):  # ::ffff:a.b.c.d, ::a.b.c.d, ::, ::1
            return False
        embedded = address.sixtofour
        if embedded is None and any(address in network for network in _NAT64):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and not is_public_address(embedded):
            return False
        if address.is_site_local:
            return False
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_loopback
        and not address.is_link_local
        and not address.is_unspecified
        and not address.is_private
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for ``host`` (IP literals as they are)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _canonical_host(host: str) -> str:
    host = host.strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class PublicOnlyBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked public addresses.

    ``connect_tcp(host, port)`` resolves ``host`` once (``resolver``), refuses with
    :class:`AddressRefused` unless every address is public (or ``host`` is one of
    ``allowed_hosts``), then connects to those exact addresses, in order, through ``inner``
    (httpcore's own backend) until one answers. Unix sockets are always refused.
    """

    def __init__(
        self,
        allowed_hosts: Iterable[str] = (),
        *,
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.allowed_hosts = frozenset(_canonical_host(host) for host in allowed_hosts)
        self.resolver = resolver
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options=None,
    ) -> httpcore.AsyncNetworkStream:
        name = _canonical_host(host)
        try:
            addresses = [str(ipaddress.ip_address(name))]
        except ValueError:
            try:
                addresses = await self.resolver(name, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"{name} does not resolve ({exc})") from None
        if not addresses:
            raise httpcore.ConnectError(f"{name} does not resolve")
        if name not in self.allowed_hosts:
            refused = [address for address in addresses if not is_public_address(address)]
            if refused:
                raise AddressRefused(
                    f"{name} resolves to a non-public address ({refused[0]}); not connected"
                )
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options=None
    ):
        raise AddressRefused("unix sockets are never fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and error mapping), over a pool that uses ``backend``."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, ssl_context: ssl.SSLContext) -> None:
        super().__init__(verify=ssl_context, trust_env=False)
        if not isinstance(
            getattr(self, "_pool", None), httpcore.AsyncConnectionPool
        ):  # fail closed
            raise RuntimeError(f"httpx {httpx.__version__} is not supported by the URL fetch guard")
        # No keep-alive: every fetch opens (and checks) its own connection.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_keepalive_connections=0, network_backend=backend
        )


def fetch_client(
    timeout: float, allowed_hosts: Iterable[str] = (), *, resolver: Resolver = system_resolver
) -> httpx.AsyncClient:
    """The http client for image URLs: every connection it opens goes through :class:`PublicOnlyBackend`."""
    backend = PublicOnlyBackend(allowed_hosts, resolver=resolver)
    return httpx.AsyncClient(
        transport=_GuardedTransport(backend, httpx.create_ssl_context()),
        trust_env=False,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        headers={"Accept-Encoding": "identity", "User-Agent": "api-prompt-serve"},
    )


def fetch_failed(*, max_bytes: int, timeout: float, param: str | None = None) -> RequestError:
    """The one error every refused or failed fetch gives (no oracle for what is behind the proxy)."""
    return RequestError(
        400,
        f"the image URL could not be fetched as an image: this proxy fetches only http(s) URLs on public "
        f"addresses that answer 200 within {timeout:g} s with an image of at most {max_bytes:,} bytes; "
        "otherwise send the image as a base64 data URL",
        param=param,
        code="image_fetch_failed",
    )


class _Failed(Exception):
    """Why a fetch failed, for the proxy's log only."""


async def fetch_image(
    client: httpx.AsyncClient, url: str, *, max_bytes: int, timeout: float, param: str | None = None
) -> bytes:
    """The bytes at ``url``; :func:`fetch_failed` (400) for anything that goes wrong."""
    try:
        return await asyncio.wait_for(_fetch(client, url, max_bytes), timeout)
    except (asyncio.TimeoutError, httpx.HTTPError, httpx.InvalidURL, _Failed, RequestError) as exc:
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        logger.info("image fetch from host %r failed: %s", _host_of(url), reason)
        raise fetch_failed(max_bytes=max_bytes, timeout=timeout, param=param) from None


def _host_of(url: str) -> str:
    try:
        return httpx.URL(url).host
    except httpx.InvalidURL:
        return "?"


async def _fetch(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    target = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        if target.scheme not in ("http", "https"):
            raise _Failed(f"scheme {target.scheme!r} is not fetched")
        async with client.stream("GET", target) as response:
            if response.is_redirect and response.headers.get("location"):
                target = target.join(response.headers["location"])
                continue
            if response.status_code != 200:
                raise _Failed(f"answered HTTP {response.status_code}")
            return await read_limited(
                response.aiter_bytes(),
                response.headers.get("content-length", ""),
                max_bytes,
                what="the image",
                code="image_too_large",
            )
    raise _Failed(f"redirected more than {MAX_REDIRECTS} times")
