"""A minimal sd_notify(3) client: readiness, status, watchdog and stop/reload notifications.

Rules:
- No systemd library: the protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines sent
  to $NOTIFY_SOCKET (a path, or '@name' for the abstract namespace).
- Without $NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every call is a no-op.
- Nothing here blocks the event loop or raises into the daemon: the socket is non-blocking, a
  failed send is logged once and then only counted. A lost notification must never stop training.
- The watchdog interval comes from $WATCHDOG_USEC, and only applies to this process when
  $WATCHDOG_PID is unset or names it (systemd's rule, so a child never pings for its parent).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("gossipd.sdnotify")


def _address(value: str) -> str | None:
    """The socket address of a $NOTIFY_SOCKET value, or None for a form we do not speak."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None  # e.g. vsock:CID:PORT, used only for VMs


class Notifier:
    """Sends notifications to the service manager; a no-op when there is none."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self.failures = 0
        self._address: str | None = None
        self._sock: socket.socket | None = None
        if not raw:
            return
        address = _address(raw)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not a Unix socket address; not notifying systemd",
                        raw)
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
        except OSError as exc:
            log.warning("cannot create the sd_notify socket: %s; not notifying systemd", exc)
            return
        self._address = address
        self._sock = sock

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        """Send one datagram of KEY=VALUE fields; True if it was handed to the kernel."""
        if self._sock is None or self._address is None:
            return False
        # A field is one line: a newline inside a value would start a bogus field.
        message = "\n".join(" ".join(f.splitlines()) for f in fields).encode("utf-8", "replace")
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            self.failures += 1
            if self.failures == 1:
                log.warning("sd_notify to %s failed: %s (further failures are not logged)",
                            self._address.replace("\0", "@"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float, status: str) -> bool:
        """Ask for `seconds` more than TimeoutStartSec= from now (systemd >= 236), while a
        long start (a long ledger to check) is still making progress."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets Type=notify-reload (systemd >= 253) match this reload to its request;
        # plain Type=notify ignores it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading config")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(environ: Mapping[str, str] | None = None,
                      pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd expects pings within, or None if off."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog pings off", raw)
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000
