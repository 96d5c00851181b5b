"""The control socket: one JSON request line in, one JSON response line out, over a Unix socket.

Request:  {"cmd": "status"}            Response: {"ok": true, "result": {...}}
          {"cmd": "peers.ban", "peer": ...}       {"ok": false, "error": "what went wrong"}
(every command and its arguments: gossipd/commands.py)

Why JSON lines rather than HTTP: one line each way is all a local admin channel needs, it works
with `socat - UNIX:/run/gossipd/control.sock` or `nc -U` as well as gossipctl, and it keeps an
HTTP parser out of the daemon's control path. (The optional Prometheus listener speaks HTTP,
because scrapers do.)

Rules:
- The socket is created with mode 0660 (owner and the gossipd group; see systemd/) and removed on
  exit. A leftover file from a crashed daemon is replaced; a live daemon on the same path is an
  error naming the path, never silently stolen.
- Each client gets a deadline to send its request (10 s) and a 64 KiB request cap; a command gets
  its own deadline (60 s: `average-now` waits for a whole exchange); a bad request gets an error
  response and the daemon goes on. At most MAX_CLIENTS are served at once; more wait in accept.
- Handlers are plain functions of the command's arguments (or coroutine functions, for commands
  that wait); this module knows no daemon internals.
"""

from __future__ import annotations

import contextlib
import errno
import inspect
import json
import logging
import os
import socket as stdlib_socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stale trio stubs shadow trio's own types and lack
    # trio.TaskStatus; trio_typing.TaskStatus is the same protocol.
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.control")

MAX_REQUEST = 64 * 1024
CLIENT_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
MAX_CLIENTS = 32

Handler = Callable[[dict[str, Any]], Any]  # returns a result, or an awaitable of one


class ControlSocketError(Exception):
    """The control socket cannot be created; the message names the path and the fix."""


class ClientError(Exception):
    """A request this daemon cannot serve; sent back to the client as the error text."""


def _socket_in_use(path: Path) -> bool:
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


async def bind_control_socket(path: Path) -> trio.SocketListener:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if _socket_in_use(path):
            raise ControlSocketError(
                f"control socket {path} is in use by a running daemon; stop it first "
                "(gossipctl --socket PATH status shows which node it is)"
            )
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
    except OSError as exc:
        sock.close()
        hint = " (path too long for a Unix socket: use a shorter one)" if exc.errno in (
            errno.ENAMETOOLONG, errno.EINVAL) else ""
        raise ControlSocketError(f"cannot bind control socket {path}: {exc}{hint}") from exc
    os.chmod(path, 0o660)
    sock.listen(16)
    return trio.SocketListener(sock)


def remove_socket(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def _read_line(stream: trio.SocketStream) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ClientError(f"request larger than {MAX_REQUEST} bytes")
    return bytes(buf.split(b"\n", 1)[0])


async def _dispatch(handlers: dict[str, Handler], line: bytes) -> dict[str, Any]:
    try:
        request = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ClientError(f"request is not JSON: {type(exc).__name__}: {exc}"[:300]) from exc
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise ClientError('request must be a JSON object like {"cmd": "status"}')
    cmd = request["cmd"]
    handler = handlers.get(cmd)
    if handler is None:
        raise ClientError(f"unknown command {cmd!r}; known: {', '.join(sorted(handlers))}")
    result = handler(request)
    if inspect.isawaitable(result):
        with trio.fail_after(COMMAND_TIMEOUT_S):
            result = await result
    return {"ok": True, "result": result}


async def serve_control(
    listener: trio.SocketListener,
    handlers: dict[str, Handler],
    *,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    slots = trio.Semaphore(MAX_CLIENTS)

    async def client(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                with trio.fail_after(CLIENT_TIMEOUT_S):
                    line = await _read_line(stream)
                try:
                    response = await _dispatch(handlers, line)
                except ClientError as exc:
                    response = {"ok": False, "error": str(exc)}
                except trio.TooSlowError:
                    response = {"ok": False, "error": f"command took over {COMMAND_TIMEOUT_S:g} s"}
                except Exception as exc:  # a handler bug must not kill the daemon
                    log.exception("control command failed")
                    response = {"ok": False, "error": f"internal error: {exc!r}"}
                with trio.fail_after(CLIENT_TIMEOUT_S):
                    await stream.send_all(json.dumps(response).encode() + b"\n")
            except ClientError as exc:  # oversized request: say so, best effort
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                         trio.TooSlowError), trio.fail_after(1):
                    await stream.send_all(
                        json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.debug("control client dropped: %s", exc)
            finally:
                slots.release()

    async with listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            await slots.acquire()
            stream = await listener.accept()
            nursery.start_soon(client, stream)
