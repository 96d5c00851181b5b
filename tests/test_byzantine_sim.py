"""The Byzantine simulation in its --quick form: robust mixing holds, plain averaging breaks."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "byzantine_sim.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("byzantine_sim", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["byzantine_sim"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_meets_the_target(capsys: pytest.CaptureFixture[str]) -> None:
    sim = _load()
    assert sim.main(["--quick", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = doc["rows"]
    assert doc["target_met"], rows

    def cell(mode: str, rule: str) -> dict[str, Any]:
        return next(r for r in rows if r["mode"] == mode and r["rule"] == rule
                    and not r["absent"] and r["f"] == (0 if mode == "none" else 1))

    ref = cell("none", "plain")["mean_acc"]
    assert ref > 0.9
    # The control visibly fails where the attack is not subtle ...
    for mode in ("signflip", "nan"):
        assert cell(mode, "plain")["min_acc"] < ref - 0.1, mode
    assert cell("nan", "plain")["poisoned"] == 7
    # ... and robust mixing keeps every honest node close to the no-attack swarm.
    for mode in sim.HOSTILE_MODES:
        assert cell(mode, "robust")["min_acc"] >= cell("none", "plain")["min_acc"] - 0.03, mode
    # Far-off vectors are seen: the NaN sender is recommended for a ban by every honest node.
    assert cell("nan", "robust")["flagged"] == 1.0
    assert all(r["false_bans"] == 0 for r in rows)
