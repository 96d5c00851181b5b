"""Killing a node mid-append loses at most the torn record: a real process writing its ledger as
the daemon does is SIGKILLed at arbitrary moments, restarted on the same ledger, killed again;
every record it reported written survives each kill, and the ledger verifies whole at the end.
A power cut can tear the last record at any byte: each such cut loses that record alone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossipd.ledger import Ledger, LedgerError, iter_records, read_records, verify_file
from tests.ledger_writer import ID_A, SEED_A, receipt
from tests.test_integration import ROOT, env

pytestmark = pytest.mark.integration


def run_and_kill(path: Path, after_lines: int) -> tuple[int, str]:
    """Start a writer on `path`, SIGKILL it once it has reported `after_lines` records (it is
    mid-loop then: writing, sealing or fsyncing), return the last record it reported."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.ledger_writer", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env())
    assert proc.stdout is not None
    lines: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(lines) < after_lines and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    lines += rest.splitlines(keepends=True)
    assert len(lines) >= after_lines, err.decode()[-2000:]
    seq, head = lines[-1].split()
    return int(seq), head.decode()


def test_sigkill_mid_append_loses_nothing_reported_written(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    kept = -1
    for kill_after in (15, 60, 33, 120, 7, 90):
        seq, head = run_and_kill(path, kill_after)
        assert seq > kept
        records, good = read_records(path)
        assert good == path.stat().st_size  # a kill does not tear a write: the kernel has it
        assert len(records) > seq and records[seq].hash.hex() == head  # and all before it
        ledger = Ledger(path, SEED_A, ID_A)  # the restart: checks the tail, seals it
        assert ledger.dropped_bytes == 0 and len(ledger) >= seq + 1
        ledger.close()
        kept = len(ledger) - 1
    records = verify_file(path)  # every link, signature and both signatures of each receipt
    assert sum(r.kind == "receipt" for r in records) > 250
    assert all(r.seq == i for i, r in enumerate(records))


def test_a_tear_at_any_byte_of_the_last_record_loses_that_record_alone(tmp_path: Path) -> None:
    path = tmp_path / "ledger.bin"
    ledger = Ledger(path, SEED_A, ID_A)
    for n in range(3):
        ledger.append("receipt", receipt(n, ledger.head)[0], fsync=False, sign=False)
    ledger.close()  # sealed
    ledger = Ledger(path, SEED_A, ID_A)
    ledger.append("receipt", receipt(3, ledger.head)[0], fsync=False, sign=False)
    before = ledger.head
    ledger.append("checkpoint", {"params_hash": bytes(32), "step": 9}, fsync=False)
    ledger.close()
    whole = path.read_bytes()
    offsets = [(o, e) for o, e, _r in iter_records(whole)]
    last_start = offsets[-1][0]
    for cut in range(last_start + 1, len(whole)):
        path.write_bytes(whole[:cut])
        with pytest.raises(LedgerError):
            verify_file(path)  # an export must be whole
        torn = Ledger(path, SEED_A, ID_A)  # the start after the power cut
        assert torn.dropped_bytes == cut - last_start
        # the records before the torn one are all there; the unsigned receipt is sealed
        assert torn.head[0] == before[0] + 1
        assert read_records(path)[0][before[0]].hash == before[1]
        torn.close()
        assert [r.kind for r in verify_file(path)][-2:] == ["receipt", "seal"]


def test_one_pass_open_learns_the_same_peer_heads(tmp_path: Path) -> None:
    """Provenance.open reads the ledger once (the ledger's own scan hands it the receipts):
    the peers' heads it learns are those a second pass finds, and the ledger keeps only the
    newest digests and the last record of each kind."""
    from gossipd.provenance import Provenance
    from tests.ledger_writer import ID_B

    path = tmp_path / "ledger.bin"
    ledger = Ledger(path, SEED_A, ID_A)
    for n in range(40):
        ledger.append("receipt", receipt(n, ledger.head)[0], fsync=False, sign=False)
    ledger.append("checkpoint", {"params_hash": bytes(32), "step": 40})
    ledger.close()
    heard: list[int] = []
    one = Provenance.open(path, SEED_A, ID_A, progress=heard.append, every=10)
    assert heard == [10, 20, 30, 40]  # records checked so far, while opening
    two = Provenance(Ledger(path, SEED_A, ID_A))
    assert one.peer_head(ID_B) == two.peer_head(ID_B) == (39, b"\x22" * 32)
    assert one.ledger.head == two.ledger.head and len(one.ledger) == 42  # + genesis
    assert one.ledger.last_of_kind["checkpoint"].data["step"] == 40
    assert one.ledger.digests_since(0) == [r.digest for r in read_records(path)[0][1:]]
