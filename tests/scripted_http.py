"""A raw TCP server on 127.0.0.1 (or ::1) that answers each connection with a scripted behaviour.

Unlike ``http.server``, a handler may misbehave the way real servers and middleboxes do: break
off a body, drip bytes slowly, speak another protocol, redirect elsewhere. Each connection reads
one HTTP request (recorded in ``requests``), then runs the next handler of ``script`` (or
``default``) and closes. Every wait is bounded, so a broken client cannot hang the tests.

>>> with RawServer() as server:                                  # doctest: +SKIP
...     server.script = [truncated(b'{"choices"', declared=100), respond(200, {"ok": 1})]
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable

Handler = Callable[[socket.socket, dict], None]


class RawServer:
    """``host`` is 127.0.0.1 or ::1; ``connections`` counts every connection accepted, even one
    that sends no request (so a test can tell that nothing connected at all)."""

    def __init__(self, default: Handler | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sock = socket.create_server(
            (host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        self.sock.settimeout(0.05)
        self.script: list[Handler] = []
        self.requests: list[dict] = []
        self.connections = 0
        self.default = default or respond(200, completion("ok"))
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    @property
    def origin(self) -> str:
        return (
            f"http://[{self.host}]:{self.port}"
            if ":" in self.host
            else f"http://{self.host}:{self.port}"
        )

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            request = read_request(conn)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
                handler = self.script.pop(0) if self.script else self.default
            handler(conn, request)
        except OSError:
            pass  # the client went away: fine for a misbehaving server
        finally:
            conn.close()


def read_request(conn: socket.socket) -> dict | None:
    """One HTTP/1.1 request: method, path, headers (lower-case names), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return {
        "method": method,
        "path": path,
        "headers": headers,
        "body": body,
        "json": json.loads(body)
        if body and headers.get("content-type", "").startswith("application/json")
        else None,
    }


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Scripted"] + [
        f"{name}: {value}" for name, value in headers.items()
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def respond(status: int, payload, headers: dict[str, str] | None = None) -> Handler:
    """A complete answer: ``payload`` as JSON (or raw bytes), with Content-Length."""
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()

    def handler(conn: socket.socket, request: dict) -> None:
        all_headers = {
            "Content-Type": "application/json",
            "Content-Length": str(len(data)),
            "Connection": "close",
            **(headers or {}),
        }
        conn.sendall(_head(status, all_headers) + data)

    return handler


def truncated(data: bytes, *, declared: int) -> Handler:
    """A 200 that promises ``declared`` bytes, sends ``data`` (fewer), and closes."""

    def handler(conn: socket.socket, request: dict) -> None:
        conn.sendall(
            _head(
                200,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(declared),
                    "Connection": "close",
                },
            )
            + data
        )

    return handler


def not_http(banner: bytes = b"SSH-2.0-OpenSSH_9.6\r\n") -> Handler:
    """Another protocol on the port: a banner, then the connection closes."""

    def handler(conn: socket.socket, request: dict) -> None:
        conn.sendall(banner)

    return handler


def drip(payload, *, chunk: int = 4, every: float = 0.25) -> Handler:
    """A complete 200 whose body arrives ``chunk`` bytes every ``every`` seconds."""
    data = json.dumps(payload).encode()

    def handler(conn: socket.socket, request: dict) -> None:
        conn.sendall(
            _head(
                200,
                {
                    "Content-Type": "application/json",
                    "Content-Length": str(len(data)),
                    "Connection": "close",
                },
            )
        )
        for start in range(0, len(data), chunk):
            time.sleep(every)
            conn.sendall(data[start : start + chunk])  # raises once the client has gone

    return handler


def redirect(status: int, location: str) -> Handler:
    def handler(conn: socket.socket, request: dict) -> None:
        conn.sendall(
            _head(status, {"Location": location, "Content-Length": "0", "Connection": "close"})
        )

    return handler


def completion(content, **message) -> dict:
    """A chat-completions answer whose message content is ``content`` (any JSON value)."""
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "test",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, **message},
                "finish_reason": "stop",
            }
        ],
    }
