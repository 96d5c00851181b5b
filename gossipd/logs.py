"""Logging to stderr: syslog priority prefixes under journald, a human format everywhere else.

Rules:
- Under systemd with stderr connected to the journal ($JOURNAL_STREAM names stderr's device and
  inode, see systemd.exec(5)), every line starts with its syslog priority (`<3>` error, `<4>`
  warning, `<6>` info, `<7>` debug) so `journalctl -p warning` selects by severity, and carries no
  timestamp (journald stamps each line itself). Each line of a multi-line record (a traceback)
  gets the prefix, since journald reads every line as its own entry.
- Otherwise (a terminal, a file, a test harness): `time LEVEL logger: message`.
- Python warnings (warnings.warn) become records of the "py.warnings" logger, like all the rest.
- One handler on the root logger, with no level of its own: the root logger's level decides, so
  `logging.getLogger().setLevel(...)` (config reload) changes verbosity at run time.
- py-libp2p and friends log routine dial and connection failures at ERROR/WARNING, some of it on
  the root logger; the daemon reports those failures itself, once, with the peer named. Their
  records below CRITICAL pass only while the root level is DEBUG, decided per record so a reload
  to or from debug takes effect.
- `import libp2p` detaches its "libp2p" logger (level WARNING, no handlers, propagate off) unless
  $LIBP2P_DEBUG is set; its records would then bypass the handler here and reach stderr raw, via
  logging.lastResort, with no priority prefix. reclaim_library_loggers() undoes that: call it
  after libp2p is imported (gossipd/main.py does, right after importing the transport).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

HUMAN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(name)s: %(message)s"

NOISY_LOGGERS = ("libp2p", "multiaddr", "async_service", "jax", "absl")


def syslog_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message`, the prefix repeated on every line of the record."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())


def _package_dirs(names: tuple[str, ...]) -> tuple[str, ...]:
    """Source directories of the installed noisy packages, to catch their root-logger calls."""
    import importlib.util

    dirs: list[str] = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            # co_filename keeps the path as imported; match it with and without symlinks
            dirs += {str(Path(location)) + os.sep, str(Path(location).resolve()) + os.sep}
    return tuple(dirs)


class TameNoisyLibraries(logging.Filter):
    """Drops records below CRITICAL from NOISY_LOGGERS (by logger name, or by source file for
    records they log on the root logger) unless the root logger is at DEBUG."""

    def __init__(self, names: tuple[str, ...] = NOISY_LOGGERS) -> None:
        super().__init__()
        self.names = names
        self.dirs = _package_dirs(names)

    def _noisy(self, record: logging.LogRecord) -> bool:
        name = record.name
        if any(name == n or name.startswith(n + ".") for n in self.names):
            return True
        return name == "root" and bool(self.dirs) and record.pathname.startswith(self.dirs)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL or not self._noisy(record):
            return True
        return logging.getLogger().level <= logging.DEBUG


def journal_stream(stream: TextIO, environ: Mapping[str, str]) -> bool:
    """True if `stream` is the journal connection that systemd announced in $JOURNAL_STREAM."""
    value = environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        info = os.fstat(stream.fileno())
        return (info.st_dev, info.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):  # no real fd (captured), or a malformed value
        return False


def setup_logging(level: str, stream: TextIO | None = None,
                  environ: Mapping[str, str] | None = None) -> logging.Handler:
    """Route all logging to `stream` (stderr) at `level`; returns the one root handler."""
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    handler = logging.StreamHandler(out)
    handler.setFormatter(JournalFormatter() if journal_stream(out, env)
                         else logging.Formatter(HUMAN_FORMAT))
    handler.addFilter(TameNoisyLibraries())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level.upper())
    # warnings.warn() from libraries would print raw to stderr; as records they get a priority.
    logging.captureWarnings(True)
    reclaim_library_loggers()
    return handler


def reclaim_library_loggers(environ: Mapping[str, str] | None = None) -> None:
    """Make the noisy libraries' loggers inherit the root level and propagate to the root handler,
    so TameNoisyLibraries is the one place that decides what they show."""
    env = os.environ if environ is None else environ
    for name in NOISY_LOGGERS:
        if name == "libp2p" and env.get("LIBP2P_DEBUG"):
            continue  # the operator asked for py-libp2p's own debug logging
        logger = logging.getLogger(name)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
