"""Short run of scripts/fuzz_protocol.py: 20 000 mutated inputs, no unexpected exception.

The full run (a million inputs, a few minutes) is `python scripts/fuzz_protocol.py`; this
keeps the harness itself working and catches regressions that the short run already hits.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fuzz_protocol.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_protocol", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_fuzz_script_short_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    fuzz = _load()
    rc = fuzz.main(["--frames", "20000", "--seed", "1", "--json", "--out", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert report["unexpected"] == 0, report["findings"]
    assert rc == 0
    assert report["frames"] == 20000 and not report["stopped_early"]
    assert report["controls"] > 0  # unmutated inputs ran, and were all accepted
    # The mutations reach every layer: framing, validation, handshake, AEAD, payload, replay.
    codes = set(report["rejected_by_code"])
    for code in ("decode", "frame-too-large", "limit", "auth", "integrity", "spec", "replay"):
        assert code in codes, f"no input was rejected with {code!r}: {sorted(codes)}"
    targets = report["targets"]
    for target in ("frame", "message", "hello", "params", "params_stream", "tensors", "restore"):
        assert targets[target].get("ok", 0) > 0, f"{target} never accepted anything"
    assert json.loads((tmp_path / "summary.json").read_text())["frames"] == 20000


def test_fuzz_script_replays_inputs_alone() -> None:
    # Per-input randomness depends on (seed, index) only: inputs 250..259 run on their own
    # count exactly what they added inside a run from 0.
    fuzz = _load()
    whole = fuzz.Fuzzer(3)
    for index in range(250):
        whole.fuzz_input(index)
    before = {t: Counter(c) for t, c in whole.stats.targets.items()}
    for index in range(250, 260):
        whole.fuzz_input(index)
    alone = fuzz.Fuzzer(3)
    for index in range(250, 260):
        alone.fuzz_input(index)
    added = {t: +(c - before.get(t, Counter())) for t, c in whole.stats.targets.items()}
    assert {t: c for t, c in added.items() if c} == {
        t: c for t, c in alone.stats.targets.items() if c
    }


def test_fuzz_script_seconds_cap(capsys: pytest.CaptureFixture[str]) -> None:
    fuzz = _load()
    assert fuzz.main(["--frames", "10000000", "--seconds", "0.5", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stopped_early"] is True
    assert 0 < report["frames"] < 10_000_000
