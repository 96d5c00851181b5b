"""A minimal read-only HTTP/1.1 server: Prometheus scrapes (`GET /metrics`) and the dashboard.

Rules:
- Loopback only by default: metrics and the dashboard name the peer ID and reveal training
  progress and traffic, so exposing them beyond the machine is an explicit choice
  (`allow_remote=True`).
- GET only, one request per connection (`Connection: close`), no request bodies, no keep-alive.
  The request head is parsed by hand: with read-only routes, only the request line matters and
  the headers are read only to drain them. h11 would bring framing this endpoint never uses (bodies,
  keep-alive, pipelining) and is only a transitive dependency here, so it would need pinning of
  its own.
- A client gets CLIENT_TIMEOUT_S for the whole exchange (request and response), a request head
  of at most MAX_REQUEST bytes, and at most MAX_CLIENTS run at once; every failure is caught
  per client, so a malformed, slow, half-open or hostile client only loses its own connection.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from gossipd.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own types and lack
    # trio.TaskStatus; trio_typing.TaskStatus is the same protocol.
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.metrics_http")

CLIENT_TIMEOUT_S = 5.0
MAX_REQUEST = 8 * 1024
MAX_CLIENTS = 16
METRICS_PATH = b"/metrics"
# accept() errors that mean "out of resources now", not "listener broken": wait and retry.
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 431: "Request Header Fields Too Large",
            500: "Internal Server Error"}

# A route answers (content type, body) for the query string of a GET; ValueError -> 400.
Route = Callable[[str], tuple[str, bytes]]


def _response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> bytes:
    head = (f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode("ascii") + body


def _bind_address(host: str, allow_remote: bool) -> tuple[socket.AddressFamily, str]:
    """The socket family and literal address for `host`; ValueError for a non-loopback host
    unless `allow_remote`. Names other than 'localhost' are not resolved: what a name resolves
    to can change, so only a literal address is proven loopback."""
    literal = "127.0.0.1" if host == "localhost" else host
    try:
        ip = ipaddress.ip_address(literal.strip("[]"))
    except ValueError:
        raise ValueError(
            f"metrics listen host {host!r} is not an IP address; use 127.0.0.1, ::1 or localhost"
        ) from None
    if not ip.is_loopback and not allow_remote:
        raise ValueError(
            f"metrics listen host {host!r} is not a loopback address; bind 127.0.0.1 or ::1, "
            "or pass allow_remote=True to expose metrics beyond this machine")
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return family, str(ip)


async def _read_head(stream: trio.SocketStream) -> bytes:
    """Bytes up to the blank line that ends the request head."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")  # bare-LF clients (RFC 9112 section 2.2 allows them)
        if end >= 0:
            return bytes(buf[:end])
        if len(buf) >= MAX_REQUEST:
            raise _BadRequest(431, f"request head over {MAX_REQUEST} bytes")
        data = await stream.receive_some(MAX_REQUEST - len(buf))
        if not data:
            raise _BadRequest(400, "connection closed before the end of the request head")
        buf += data


def _route(head: bytes, routes: dict[str, Route]) -> bytes:
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise _BadRequest(400, "malformed request line")
    method, target = parts[0], parts[1].decode("ascii", "replace")
    path, _, query = target.partition("?")
    route = routes.get(path) if method == b"GET" else None
    if route is None:
        return _response(404, f"not found; served: GET {', '.join(sorted(routes))}\n".encode())
    try:
        content_type, body = route(query)
    except ValueError as exc:
        return _response(400, f"{exc}\n".encode())
    except Exception:  # a route bug answers 500 and is logged; it never stops the server
        log.exception("route %s failed", path)
        return _response(500, b"internal error; see the daemon log\n")
    return _response(200, body, content_type)


def metrics_routes(render: Callable[[], bytes]) -> dict[str, Route]:
    return {METRICS_PATH.decode(): lambda _query: (CONTENT_TYPE, render())}


async def _client(stream: trio.SocketStream, routes: dict[str, Route], timeout_s: float
                  ) -> None:
    async with stream:
        try:
            with trio.fail_after(timeout_s):
                try:
                    reply = _route(await _read_head(stream), routes)
                except _BadRequest as exc:
                    log.debug("metrics client: %s", exc)
                    reply = _response(exc.status, f"{exc}\n".encode())
                await stream.send_all(reply)
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError,
                OSError) as exc:
            log.debug("metrics client dropped: %s: %s", type(exc).__name__, exc)
        except Exception:  # whatever a client does, only its own connection ends
            log.exception("metrics client failed")


async def serve_metrics(
    host: str,
    port: int,
    render: Callable[[], bytes],
    *,
    allow_remote: bool = False,
    client_timeout_s: float = CLIENT_TIMEOUT_S,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `render()` at GET /metrics on host:port until cancelled; reports the bound port
    through task_status (so port 0 picks a free one)."""
    await serve_http(host, port, metrics_routes(render), allow_remote=allow_remote,
                     client_timeout_s=client_timeout_s, task_status=task_status, what="metrics")


async def serve_http(
    host: str,
    port: int,
    routes: dict[str, Route],
    *,
    allow_remote: bool = False,
    client_timeout_s: float = CLIENT_TIMEOUT_S,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    what: str = "http",
) -> None:
    """Serve `routes` (path -> Route) on host:port until cancelled; reports the bound port
    through task_status."""
    family, address = _bind_address(host, allow_remote)
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        await sock.bind((address, port))
        sock.listen(64)
    except BaseException:
        sock.close()
        raise
    listener = trio.SocketListener(sock)
    actual_port: int = sock.getsockname()[1]
    log.info("%s at http://%s:%d/", what, f"[{address}]" if family == socket.AF_INET6
             else address, actual_port)
    active = 0

    async def run_client(stream: trio.SocketStream) -> None:
        nonlocal active
        try:
            await _client(stream, routes, client_timeout_s)
        finally:
            active -= 1

    async with listener, trio.open_nursery() as nursery:
        task_status.started(actual_port)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_RETRY_ERRNOS:
                    raise
                log.warning("metrics listener: %s; retrying in 0.1 s", exc)
                await trio.sleep(0.1)
                continue
            if active >= MAX_CLIENTS:
                await stream.aclose()  # the scraper retries at its next interval
                continue
            active += 1
            nursery.start_soon(run_client, stream)
