"""Logging: syslog priority prefixes for journald, the human format elsewhere, run-time levels, and
py-libp2p's routine noise kept out unless debugging."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TextIO, cast

import pytest

from gossipd import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    noisy = {n: (logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in logs.NOISY_LOGGERS}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)
    for n, (lv, propagate) in noisy.items():
        logging.getLogger(n).setLevel(lv)
        logging.getLogger(n).propagate = propagate


def journal_env(stream: IO[str]) -> dict[str, str]:
    info = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}"}


def emit_all() -> None:
    log = logging.getLogger("gossipd.test")
    log.debug("dbg")
    log.info("hello")
    log.warning("careful")
    log.error("broken")
    log.critical("dead")


def test_journal_lines_carry_the_syslog_priority_and_no_timestamp(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w+") as stream:
        logs.setup_logging("debug", stream=stream, environ=journal_env(stream))
        emit_all()
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines == [
        "<7>gossipd.test: dbg",
        "<6>gossipd.test: hello",
        "<4>gossipd.test: careful",
        "<3>gossipd.test: broken",
        "<2>gossipd.test: dead",
    ]


def test_every_line_of_a_traceback_gets_the_prefix(tmp_path: Path) -> None:
    with open(tmp_path / "err", "w+") as stream:
        logs.setup_logging("info", stream=stream, environ=journal_env(stream))
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("gossipd.test").exception("it failed")
        stream.seek(0)
        lines = stream.read().splitlines()
    assert len(lines) > 3
    assert all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


@pytest.mark.parametrize("env", [{}, {"JOURNAL_STREAM": "1:2"}, {"JOURNAL_STREAM": "garbage"}])
def test_human_format_unless_stderr_is_the_announced_journal_stream(
    tmp_path: Path, env: dict[str, str],
) -> None:
    # JOURNAL_STREAM is inherited by children whose stderr may go elsewhere: only a match counts.
    with open(tmp_path / "err", "w+") as stream:
        logs.setup_logging("info", stream=stream, environ=env)
        logging.getLogger("gossipd.test").warning("careful")
        stream.seek(0)
        line = stream.read().strip()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING gossipd.test: careful", line)


def test_a_stream_without_a_file_descriptor_gets_the_human_format() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", stream=cast(TextIO, stream), environ={"JOURNAL_STREAM": "1:2"})
    logging.getLogger("gossipd.test").info("hello")
    assert stream.getvalue().rstrip().endswith("INFO gossipd.test: hello")


def test_the_level_changes_at_run_time() -> None:
    stream = io.StringIO()
    logs.setup_logging("warning", stream=stream, environ={})
    log = logging.getLogger("gossipd.test")
    log.info("hidden")
    logging.getLogger().setLevel("DEBUG")  # what a config reload does
    log.debug("shown")
    logging.getLogger().setLevel("ERROR")
    log.warning("hidden too")
    text = stream.getvalue()
    assert "shown" in text and "hidden" not in text


def test_setup_replaces_earlier_handlers() -> None:
    first, second = io.StringIO(), io.StringIO()
    logs.setup_logging("info", stream=first, environ={})
    logs.setup_logging("info", stream=second, environ={})
    logging.getLogger("gossipd.test").info("once")
    assert first.getvalue() == "" and second.getvalue().count("once") == 1


def test_libp2p_noise_is_dropped_unless_debugging() -> None:
    stream = io.StringIO()
    logs.setup_logging("info", stream=stream, environ={})
    for name in ("libp2p.network.swarm", "multiaddr", "async_service.base", "jax._src.xla_bridge",
                 "absl"):
        logging.getLogger(name).error("routine failure from %s", name)
    logging.getLogger("libp2p.host").critical("really bad")
    logging.getLogger("libp2pextra").error("not libp2p")  # a prefix match is not enough
    text = stream.getvalue()
    assert "routine failure" not in text
    assert "really bad" in text and "not libp2p" in text
    logging.getLogger().setLevel("DEBUG")  # a reload to debug shows them again
    logging.getLogger("libp2p.network.swarm").error("now visible")
    assert "now visible" in stream.getvalue()


def test_libp2p_records_on_the_root_logger_are_dropped_too() -> None:
    # py-libp2p calls logging.warning(...) directly in places; those records are named "root"
    # and recognised by the file they come from.
    stream = io.StringIO()
    logs.setup_logging("info", stream=stream, environ={})
    handler = logging.getLogger().handlers[0]
    tame = next(f for f in handler.filters if isinstance(f, logs.TameNoisyLibraries))
    assert tame.dirs, "libp2p is installed, so its directory must be known"
    inside = os.path.join(tame.dirs[0], "network", "connection", "swarm_connection.py")
    for path, msg in ((inside, "from libp2p"), ("/srv/app/mine.py", "from elsewhere")):
        record = logging.LogRecord("root", logging.WARNING, path, 1, msg, None, None)
        logging.getLogger().handle(record)
    text = stream.getvalue()
    assert "from libp2p" not in text and "from elsewhere" in text


def test_priority_mapping_covers_custom_levels() -> None:
    assert logs.syslog_priority(logging.WARNING + 5) == 4
    assert logs.syslog_priority(logging.DEBUG - 5) == 7
    assert logs.syslog_priority(logging.CRITICAL + 10) == 2


def test_libp2p_detaching_its_logger_on_import_is_undone(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("LIBP2P_DEBUG", raising=False)
    stream = io.StringIO()
    logs.setup_logging("info", stream=stream, environ={})
    import libp2p.utils.logging

    libp2p.utils.logging.setup_logging()  # what `import libp2p` runs
    lib = logging.getLogger("libp2p")
    assert not lib.propagate  # what it does: records would skip our handler...
    logging.getLogger("libp2p.network").critical("raw")
    assert "raw" in capsys.readouterr().err and "raw" not in stream.getvalue()  # ...go raw
    logs.reclaim_library_loggers()
    logging.getLogger("libp2p.network").critical("handled")
    logging.getLogger("libp2p.network").error("routine")
    assert "CRITICAL libp2p.network: handled" in stream.getvalue()
    assert "routine" not in stream.getvalue() and "routine" not in capsys.readouterr().err


def test_python_warnings_become_records(tmp_path: Path) -> None:
    import warnings

    with open(tmp_path / "err", "w+") as stream:
        logs.setup_logging("info", stream=stream, environ=journal_env(stream))
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("deprecated thing", DeprecationWarning, stacklevel=1)
        stream.seek(0)
        lines = stream.read().splitlines()
    assert lines and all(line.startswith("<4>") for line in lines)
    assert "py.warnings" in lines[0] and "deprecated thing" in lines[0]
