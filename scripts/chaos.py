#!/usr/bin/env python3
"""Resilience scenarios as real multi-process testnets (scripts/testnet.py run), one table.

    scripts/chaos.py --nodes 4 --seconds 120 --out chaos-out
    scripts/chaos.py --scenarios churn,freeze,attacks --json
    scripts/chaos.py --quick --scenarios churn          # 4 nodes, short runs: a smoke test
    scripts/chaos.py --reuse --out chaos-out            # tabulate runs already in DIR

Every scenario is one `testnet.py run` (a subprocess, same --seed), compared where it says so
with a no-fault run of the same seed, size and length (the "baseline", run once):

* churn: every 60 s two nodes (never node 0, the bootstrap) are SIGKILLed and restarted 5 s
  later; they resume from their checkpoints (node.checkpoint_interval_s = 5 in every run).
  Metric: the averaged model's accuracy against the baseline's (target: within 1 point).
* freeze: the last node SIGSTOPped for 120 s (pause:I@20+120; shorter with --quick). Metric:
  the longest exchange of every other node (its exchange-duration histogram bucket) against
  its exchange deadline, and no hang: every other node's step keeps advancing (no stall over
  STALL_S between parameter polls) and every poll of its control socket is answered.
* partition (root only; --netns): nodes split in two halves for D seconds, then healed.
  Metric: consensus distance before / during / after (target: after <= 1.5 x before).
* attacks: the last node (the last --attackers nodes) sends forged vectors
  (averaging.attack = signflip, scaled, noise, alie, stale: one run each), the honest nodes
  run averaging.robust = "clip"; and a control: the --control-attack with averaging.robust =
  "none" everywhere (plain averaging). Metric: the honest nodes' mean and min accuracy against
  the baseline's (target: within 3 points; the control is expected to fail that).
* flood: an outside process (`chaos.py flooder`, a swarm member with its own key) opens and
  holds AVG_STREAMS averaging streams against node 0, reopening them as they end, from the
  start of the run to 10 s before its end. Metric: the exchanges the honest nodes initiated
  during the flood (from their history samples): the share that succeeded (target >= 95 %).
* soak: a long run (--soak-seconds) with churn on the upper half of the nodes (one node killed
  and restarted every 60 s), resident memory sampled every 10 s. Metric: RSS growth after the
  warm-up (the first quarter of the run) per node whose last incarnation spans at least half
  the run (target < 10 %), and zero crashes (no node exited that the schedule did not stop).

Every run is bounded (its testnet is SIGINTed past seconds + ready time + 300 s and SIGKILLed a
minute later); testnet.py ends its nodes by pid and removes its namespaces. Results: the table
on stdout (with --json: the JSON instead), DIR/chaos.json and DIR/chaos.md; each run's own
summary.json, timeseries.json and logs in DIR/SCENARIO/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTNET = ROOT / "scripts" / "testnet.py"
SCENARIOS = ("churn", "freeze", "partition", "attacks", "flood", "soak")
ATTACKS = ("signflip", "scaled", "noise", "alie", "stale")
COMMON_SET = ("node.checkpoint_interval_s=5",)
STALL_S = 20.0  # a node whose step does not move this long between polls counts as hung
AVG_STREAMS = 200
READY_S = 300.0


@dataclass
class Run:
    """One testnet run a scenario needs."""

    name: str
    seconds: float
    args: list[str] = field(default_factory=list)
    flood: bool = False
    netns: bool = False
    attackers: int = 0  # the last `attackers` nodes run the attack (attack runs only)


@dataclass
class Row:
    scenario: str
    metric: str
    value: str
    baseline: str = "-"
    target: str = "-"
    result: str = "-"  # pass | FAIL | expected-fail | skipped | error
    notes: str = ""
    data: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# plans


def churn_faults(nodes: int, seconds: float, every: float = 60.0, first: float = 30.0,
                 down_s: float = 5.0) -> list[str]:
    """Two nodes (of 1..N-1, in turn) killed every `every` s from `first` on, each restarted
    `down_s` later; none so late that it could not come back before the end."""
    out: list[str] = []
    pool = list(range(1, nodes)) or [0]
    k = 0
    t = first
    while t + down_s < seconds - 10:
        victims = sorted({pool[(2 * k) % len(pool)], pool[(2 * k + 1) % len(pool)]})
        for v in victims:
            out += ["--fault", f"kill:{v}@{t:g}", "--fault", f"restart:{v}@{t + down_s:g}"]
        k += 1
        t += every
    return out


def soak_faults(nodes: int, seconds: float, every: float = 60.0) -> list[str]:
    """One node of the upper half killed every `every` s, restarted 5 s later (the lower half
    runs the whole soak: its memory is the long-run measurement)."""
    pool = list(range(nodes // 2, nodes)) or [0]
    out: list[str] = []
    for k, t in enumerate(range(int(every), int(seconds - 40), int(every))):
        v = pool[k % len(pool)]
        out += ["--fault", f"kill:{v}@{t}", "--fault", f"restart:{v}@{t + 5}"]
    return out


def plan(args: argparse.Namespace) -> list[Run]:
    n, s = args.nodes, args.seconds
    last = n - 1
    runs: list[Run] = []
    wanted = set(args.scenarios)
    if wanted & {"churn", "attacks", "flood"}:
        runs.append(Run("baseline", s))
    if "churn" in wanted:
        runs.append(Run("churn", s, churn_faults(n, s)))
    if "freeze" in wanted:
        pause = 30.0 if args.quick else 120.0
        runs.append(Run("freeze", max(s, pause + 40), ["--fault", f"pause:{last}@20+{pause:g}"]))
    if "partition" in wanted:
        half = n // 2
        groups = f"0-{half - 1}/{half}-{last}"
        cut = 20.0 if args.quick else 40.0
        dur = args.partition_seconds or (30.0 if args.quick else 60.0)
        runs.append(Run("partition", max(s, cut + dur + 40),
                        ["--fault", f"partition:{groups}@{cut:g}+{dur:g}"], netns=True))
    if "attacks" in wanted:
        k = args.attackers
        bad = list(range(n - k, n))
        tag = "" if k == 1 else f"{k}x-"

        def liars(mode: str) -> list[str]:
            out: list[str] = []
            for v in bad:
                out += ["--node-set", f'{v}:averaging.attack="{mode}"']
            return out

        for mode in args.attacks:
            runs.append(Run(f"attack-{tag}{mode}", s, liars(mode), attackers=k))
        for mode in args.control_attack:
            runs.append(Run(f"attack-{tag}control-{mode}", s,
                            [*liars(mode), "--set", 'averaging.robust="none"'], attackers=k))
    if "flood" in wanted:
        runs.append(Run("flood", s, flood=True))
    if "soak" in wanted:
        ss = args.soak_seconds
        runs.append(Run("soak", ss, soak_faults(n, ss)))
    return runs


def testnet_argv(args: argparse.Namespace, run: Run, out: Path) -> list[str]:
    argv = [sys.executable, str(TESTNET), "run", "--nodes", str(args.nodes),
            "--seconds", f"{run.seconds:g}", "--seed", str(args.seed), "--out", str(out),
            "--ready-timeout", f"{READY_S:g}", "--partition", args.partition]
    for item in COMMON_SET:
        argv += ["--set", item]
    if run.name == "soak":
        argv += ["--sample-every", "10", "--report-every", "30"]
    else:
        argv += ["--sample-every", "2", "--report-every", "10"]
    if run.netns:
        argv.append("--netns")
    return argv + run.args


# ---------------------------------------------------------------------------------------------
# running


def _stop(proc: subprocess.Popen[str]) -> None:
    """A testnet past its time: SIGINT (it stops its nodes and cleans up), SIGKILL a minute
    later."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def flood_identity(out: Path) -> tuple[Path, str]:
    sys.path.insert(0, str(ROOT))
    from gossipd.identity import load_or_create_seed, peer_id_for_seed

    state = out / "flooder" / "state"
    return state, peer_id_for_seed(load_or_create_seed(state))


def execute(args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """Run one testnet (or reuse its results); {"summary", "timeseries", "rc", ...}."""
    out = (args.out / run.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    argv = testnet_argv(args, run, out)
    result: dict[str, Any] = {"name": run.name, "argv": argv, "attackers": run.attackers}
    summary_path = out / "summary.json"
    if args.reuse and summary_path.exists():
        result["reused"] = True
        return load_results(out, result)
    for stale in ("summary.json", "timeseries.json", "flood.json"):
        (out / stale).unlink(missing_ok=True)
    if run.netns and os.geteuid() != 0:
        result["skipped"] = "needs root (network namespaces)"
        return result
    flooder_argv: list[str] | None = None
    if run.flood:
        state, fid = flood_identity(out)
        argv += ["--extra-member", fid]
        flooder_argv = [sys.executable, str(Path(__file__).resolve()), "flooder",
                        "--testnet-dir", str(out), "--state", str(state),
                        "--seconds", f"{max(5.0, run.seconds - 10):g}",
                        "--streams", str(args.flood_streams), "--out", str(out / "flood.json")]
    (out / "command.txt").write_text(" ".join(argv) + "\n")
    print(f"chaos: {run.name}: {run.seconds:g} s, {args.nodes} nodes", flush=True)
    t0 = time.monotonic()
    env = dict(os.environ, MPLBACKEND="Agg")
    log = open(out / "run.log", "w")  # noqa: SIM115 (closed below, after the reader thread)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=ROOT)
    flooder: list[subprocess.Popen[str]] = []

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if args.verbose:
                print(f"  [{run.name}] {line}", end="", flush=True)
            if flooder_argv is not None and not flooder and "nodes ready" in line:
                flooder.append(subprocess.Popen(
                    flooder_argv, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                    cwd=ROOT))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    limit = run.seconds + READY_S + 300
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        result["timed_out"] = True
        _stop(proc)
    except KeyboardInterrupt:
        _stop(proc)
        for f in flooder:
            _stop(f)
        raise
    thread.join(timeout=30)
    for f in flooder:
        try:
            f.wait(timeout=30)
        except subprocess.TimeoutExpired:
            f.kill()
            f.wait()
    log.close()
    result["rc"] = proc.returncode
    result["wall_s"] = round(time.monotonic() - t0, 1)
    return load_results(out, result)


def load_results(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    for name in ("summary", "timeseries", "flood"):
        path = out / f"{name}.json"
        if path.exists():
            result[name] = json.loads(path.read_text())
    return result


# ---------------------------------------------------------------------------------------------
# metrics


def pts(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def history_window(series: dict[str, Any], node: int | str, lo: float,
                   hi: float) -> dict[str, int]:
    """Exchanges the node initiated (ok, failed) between run times lo and hi, from its
    history samples (cumulative per incarnation; a restart counts from zero)."""
    history = series.get("history", {})
    samples = history.get(str(node)) or history.get(node) or []
    ok = failed = 0
    prev: dict[str, Any] | None = None
    for s in samples:
        if prev is not None and prev.get("incarnation") != s.get("incarnation"):
            prev = None
        if prev is not None and lo <= float(s["t"]) <= hi + 1e-9 and float(prev["t"]) >= lo - 5:
            ok += max(0, int(s.get("exchanges_ok", 0)) - int(prev.get("exchanges_ok", 0)))
            failed += max(0, int(s.get("exchanges_failed", 0))
                          - int(prev.get("exchanges_failed", 0)))
        prev = s
    return {"ok": ok, "failed": failed}


def step_stalls(series: dict[str, Any], skip: set[int], lo: float = 0.0,
                hi: float = math.inf) -> dict[int, float]:
    """Per node not in skip: the longest time between polls over which its step did not move
    (polls it answered, run times lo..hi)."""
    last: dict[int, tuple[float, int]] = {}
    worst: dict[int, float] = {}
    for p in series.get("polls", []):
        t = float(p["t"])
        if not lo <= t <= hi:
            continue
        for key, step in p.get("steps", {}).items():
            i = int(key)
            if i in skip:
                continue
            worst.setdefault(i, 0.0)
            if i in last:
                t_moved, s_moved = last[i]
                if int(step) > s_moved:
                    last[i] = (t, int(step))
                else:
                    worst[i] = max(worst[i], t - t_moved)
            else:
                last[i] = (t, int(step))
    return worst


def node_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = summary.get("nodes", [])
    return rows


def stop_note(summary: dict[str, Any]) -> str:
    """How the nodes stopped at the end: the slowest SIGTERM exit, any SIGKILL."""
    rows = [r for r in node_rows(summary) if not r.get("killed")]
    stops = [r["stop_s"] for r in rows if r.get("stop_s") is not None]
    forced = [r["index"] for r in rows if r.get("exit_code") not in (0, None)]
    note = f"stop <= {max(stops):.1f}s" if stops else ""
    if forced:
        note += f"; exit!=0 on {forced}"
    return note


def eval_baseline(res: dict[str, Any], _base: dict[str, Any] | None) -> Row:
    s = res["summary"]
    return Row("baseline", "avg-model acc / honest mean,min", f"{pts(s['avg_model_accuracy'])}"
               f" / {pts(s['mean_node_accuracy'])},{pts(s['min_node_accuracy'])}",
               result="pass" if s.get("ok") else "FAIL", notes=stop_note(s))


def eval_churn(res: dict[str, Any], base: dict[str, Any] | None) -> Row:
    s = res["summary"]
    acc = s["avg_model_accuracy"]
    b = None if base is None else base["summary"]["avg_model_accuracy"]
    kills = sum(1 for f in s.get("faults", []) if f["action"] == "kill")
    resumed = [r["index"] for r in node_rows(s) if r.get("incarnations", 1) > 1]
    ok = acc is not None and b is not None and (b - acc) * 100 <= 1.0 and bool(s.get("ok"))
    return Row("churn", "avg-model acc (pts)", pts(acc), pts(b), "within 1 pt",
               "pass" if ok else "FAIL",
               f"{kills} kills, restarted {resumed}; delta "
               f"{'-' if acc is None or b is None else f'{100 * (acc - b):+.2f}'}; "
               + stop_note(s))


def _frozen(s: dict[str, Any]) -> set[int]:
    return {int(f["node"]) for f in s.get("faults", []) if f["action"] == "pause"}


def eval_freeze(res: dict[str, Any], _base: dict[str, Any] | None) -> Row:
    s, series = res["summary"], res.get("timeseries", {})
    frozen = _frozen(s)
    others = [r for r in node_rows(s) if r["index"] not in frozen]
    worst_le = 0.0
    beyond = False
    over = []
    for r in others:
        le, gt, dl = r.get("exchange_max_le_s"), r.get("exchange_max_gt_s"), \
            r.get("exchange_deadline_s")
        if le is None:
            beyond = True
        else:
            worst_le = max(worst_le, float(le))
        if gt is not None and dl is not None and float(gt) > float(dl):
            over.append(r["index"])
    deadlines = [float(r["exchange_deadline_s"]) for r in others
                 if r.get("exchange_deadline_s") is not None]
    timeouts = sum(int(r.get("exchanges_timed_out") or 0) for r in others)
    stalls = step_stalls(series, frozen)
    hung = sorted(i for i, v in stalls.items() if v > STALL_S)
    unanswered = sum(int(r.get("polls_unanswered", 0)) for r in others)
    # the frozen node itself after its resume: it must train again
    resumes = [float(f["at_s"]) for f in s.get("faults", []) if f["action"] == "resume"]
    after = step_stalls(series, set(), lo=max(resumes) + 5) if resumes else {}
    back = all(after.get(i, 0.0) <= STALL_S for i in frozen)
    ok = not over and not hung and unanswered == 0 and back and bool(s.get("ok"))
    worst_gt = max((float(r.get("exchange_max_gt_s") or 0) for r in others), default=0.0)
    value = f"({worst_gt:g}, {'inf' if beyond else f'{worst_le:g}'}] s"
    return Row("freeze", "max exchange (others)", value,
               target="<= deadline, 0 hangs",
               baseline=f"deadline {min(deadlines, default=0):g}-{max(deadlines, default=0):g}s",
               result="pass" if ok else "FAIL",
               notes=f"node {sorted(frozen)} paused; {timeouts} timed-out exchanges; "
               f"max step stall {max(stalls.values(), default=0):.0f}s; "
               f"{unanswered} unanswered polls; frozen node trains after resume: {back}; "
               + stop_note(s),
               data={"stalls": stalls, "over_deadline": over})


def eval_partition(res: dict[str, Any], _base: dict[str, Any] | None) -> Row:
    s = res["summary"]
    parts = s.get("partitions") or []
    if not parts:
        return Row("partition", "consensus distance", "-", result="error", notes="no partition")
    c = parts[0]["consensus"]

    def g(v: float | None) -> str:
        return "-" if v is None else f"{v:.3g}"

    ok = c["after"] is not None and c["before"] is not None and c["after"] <= 1.5 * c["before"]
    return Row("partition", "consensus before/during/after",
               f"{g(c['before'])}/{g(c['during'])}/{g(c['after'])}", target="after <= 1.5x before",
               result="pass" if ok else "FAIL",
               notes=f"{parts[0]['fault']}; back after {c['recovered_after_s']} s; "
               + stop_note(s))


def _attackers(res: dict[str, Any]) -> set[int]:
    """The attacking nodes: the last `attackers` (1 unless the run says otherwise)."""
    n = len(node_rows(res["summary"]))
    k = int(res.get("attackers") or 1)
    return set(range(n - k, n))


def honest_accs(s: dict[str, Any], attackers: set[int]) -> list[float]:
    return [float(r["accuracy"]) for r in node_rows(s)
            if r["index"] not in attackers and r.get("accuracy") is not None]


def last_poll(series: dict[str, Any], attackers: set[int]) -> dict[str, Any] | None:
    """The last parameter poll that reached an honest node (a run that ended early has no
    final collection)."""
    polls = [p for p in series.get("polls", [])
             if any(int(k) not in attackers for k in p.get("node_accuracy", {}))]
    return polls[-1] if polls else None


def eval_attack(res: dict[str, Any], base: dict[str, Any] | None) -> Row:
    s = res["summary"]
    attackers = _attackers(res)
    accs = honest_accs(s, attackers)
    early = ""
    if not accs:  # the run ended early (a node exited): the last poll's parameters
        poll = last_poll(res.get("timeseries", {}), attackers) or {}
        accs = [float(v) for k, v in poll.get("node_accuracy", {}).items()
                if int(k) not in attackers]
        exited = [r["index"] for r in node_rows(s) if r.get("exit_code") not in (0, None)]
        cd = poll.get("consensus_distance")
        early = (f"run ended early: node(s) {exited} exited with an error; accuracies at the "
                 f"last poll of the honest nodes (t={poll.get('t')} s), consensus distance "
                 f"then {'-' if cd is None else f'{cd:.3g}'}; ")
    b = [] if base is None else honest_accs(base["summary"], attackers)
    mean = sum(accs) / len(accs) if accs else None
    low = min(accs) if accs else None
    bmean = sum(b) / len(b) if b else None
    bmin = min(b) if b else None
    within = (mean is not None and low is not None and bmean is not None and bmin is not None
              and (bmean - mean) * 100 <= 3.0 and (bmin - low) * 100 <= 3.0)
    control = "control" in res["name"]
    if control:
        result = "expected-fail" if not within else "FAIL (control did not fail)"
    else:
        result = "pass" if within and s.get("ok") else "FAIL"
    att = [pts(r.get("accuracy")) for r in node_rows(s) if r["index"] in attackers]
    return Row(res["name"], "honest acc mean,min (pts)", f"{pts(mean)},{pts(low)}",
               f"{pts(bmean)},{pts(bmin)}", "within 3 pts" if not control else "fails",
               result, early + f"robust={'none' if control else 'clip'}; "
               f"{len(attackers)} attacker(s) {sorted(attackers)}, acc {','.join(att)}; "
               + stop_note(s))


def eval_flood(res: dict[str, Any], base: dict[str, Any] | None) -> Row:
    s, series = res["summary"], res.get("timeseries", {})
    fl = res.get("flood") or {}
    wall0 = float(series.get("started_wall", 0.0))
    lo = float(fl.get("started_wall", wall0)) - wall0
    hi = float(fl.get("ended_wall", wall0 + float(s["seconds"]))) - wall0
    ok = failed = 0
    for r in node_rows(s):
        w = history_window(series, r["index"], lo, hi)
        ok, failed = ok + w["ok"], failed + w["failed"]
    rate = ok / (ok + failed) if ok + failed else None
    brate = None
    if base is not None:
        bs = base["timeseries"]
        bo = bf = 0
        for r in node_rows(base["summary"]):
            w = history_window(bs, r["index"], lo, hi)
            bo, bf = bo + w["ok"], bf + w["failed"]
        brate = bo / (bo + bf) if bo + bf else None
        base_n = bo
    refused = node_rows(s)[0].get("exchange_outcomes", {}) if node_rows(s) else {}
    passed = rate is not None and rate >= 0.95 and bool(s.get("ok"))
    return Row("flood", "honest exchange success", "-" if rate is None else f"{100 * rate:.1f}%",
               "-" if brate is None else f"{100 * brate:.1f}%", ">= 95%",
               "pass" if passed else "FAIL",
               f"{ok} ok / {failed} failed in {hi - lo:.0f} s of flood"
               + (f" (baseline {base_n} ok)" if base is not None else "")
               + f"; flooder opened {fl.get('opened', '?')} streams, {fl.get('open_failed', '?')}"
               f" failed to open, {fl.get('reset', '?')} reset; node0 served outcomes {refused}; "
               + stop_note(s))


def eval_soak(res: dict[str, Any], _base: dict[str, Any] | None) -> Row:
    s = res["summary"]
    seconds = float(s["seconds"])
    long_lived = []
    per_node = []
    for r in node_rows(s):
        g = r.get("growth_pct")
        warm = r.get("rss_warm_s")
        since = r.get("rss_since_s")
        if since is None and warm is not None:  # the warm-up is a quarter of the incarnation
            since = (float(warm) - 0.25 * seconds) / 0.75
        span = seconds - max(0.0, float(since)) if since is not None else 0.0
        per_node.append(f"n{r['index']} {r.get('rss_first_mb')}->{r.get('rss_last_mb')} MiB "
                        f"{'-' if g is None else f'{g:+.1f}%'}"
                        + (f" (inc {r.get('incarnations')})" if r.get("incarnations", 1) > 1
                           else ""))
        if g is not None and span >= seconds / 2:
            long_lived.append(float(g))
    crashes = sum(len(r.get("early_exits", [])) for r in node_rows(s))
    crashes += sum(1 for r in node_rows(s) if not r.get("killed")
                   and r.get("exit_code") not in (0, None))
    worst = max(long_lived, default=None)
    ok = worst is not None and worst < 10.0 and crashes == 0 and bool(s.get("ok"))
    kills = sum(1 for f in s.get("faults", []) if f["action"] == "kill")
    return Row("soak", "max RSS growth (long-lived)",
               "-" if worst is None else f"{worst:+.1f}%", target="< 10%, 0 crashes",
               result="pass" if ok else "FAIL",
               notes=f"{seconds:g} s, {kills} kill/restarts, {crashes} crashes; "
               + "; ".join(per_node) + "; " + stop_note(s))


EVALUATORS: dict[str, Callable[[dict[str, Any], dict[str, Any] | None], Row]] = {
    "baseline": eval_baseline, "churn": eval_churn, "freeze": eval_freeze,
    "partition": eval_partition, "flood": eval_flood, "soak": eval_soak,
}


def evaluate(res: dict[str, Any], base: dict[str, Any] | None) -> Row:
    name = res["name"]
    if res.get("skipped"):
        return Row(name, "-", "-", result="skipped", notes=res["skipped"])
    if "summary" not in res:
        return Row(name, "-", "-", result="error",
                   notes=f"no summary (testnet exit {res.get('rc')}"
                   f"{', timed out' if res.get('timed_out') else ''}); see {name}/run.log")
    fn = eval_attack if name.startswith("attack-") else EVALUATORS[name]
    try:
        row = fn(res, base)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return Row(name, "-", "-", result="error", notes=f"{type(exc).__name__}: {exc}")
    s = res["summary"]
    row.data.update(seconds=s.get("seconds"), nodes=len(node_rows(s)), ok=s.get("ok"),
                    rc=res.get("rc"), wall_s=res.get("wall_s"))
    return row


# ---------------------------------------------------------------------------------------------
# table


COLUMNS = ("scenario", "nodes", "secs", "metric", "value", "baseline", "target", "result")


def render_table(rows: list[Row], markdown: bool = False) -> str:
    cells = [[r.scenario, str(r.data.get("nodes", "-")),
              "-" if r.data.get("seconds") is None else f"{r.data['seconds']:g}",
              r.metric, r.value, r.baseline, r.target, r.result] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " | notes |",
                 "|" + "---|" * (len(COLUMNS) + 1)]
        lines += ["| " + " | ".join(c) + f" | {r.notes} |" for c, r in zip(cells, rows,
                                                                           strict=True)]
        return "\n".join(lines) + "\n"
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(COLUMNS)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*COLUMNS), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*c) for c in cells]
    lines.append("")
    lines += [f"{r.scenario}: {r.notes}" for r in rows if r.notes]
    return "\n".join(lines) + "\n"


def report(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    return {"nodes": args.nodes, "seconds": args.seconds, "seed": args.seed,
            "rows": [{"scenario": r.scenario, "metric": r.metric, "value": r.value,
                      "baseline": r.baseline, "target": r.target, "result": r.result,
                      "notes": r.notes, **r.data} for r in rows]}


# ---------------------------------------------------------------------------------------------
# the flooder


def flooder_main(args: argparse.Namespace) -> int:
    """Hold `--streams` averaging streams open against node 0 of the testnet in --testnet-dir
    (reopening each as soon as it ends) for --seconds; counts into --out (JSON)."""
    import tomllib

    import trio

    sys.path.insert(0, str(ROOT))
    from gossipd.identity import load_or_create_seed, peer_id_for_seed
    from gossipd.transport import open_transport
    from protocol.messages import AVG_PROTOCOL_ID

    node0 = args.testnet_dir / "node0"
    cfg = tomllib.loads((node0 / "config.toml").read_text())
    target_addr = cfg["network"]["listen"][0]
    target = peer_id_for_seed(load_or_create_seed(node0 / "state"))
    seed = load_or_create_seed(args.state)
    counts = {"opened": 0, "open_failed": 0, "reset": 0, "held": 0}
    out: dict[str, Any] = {"target": target, "streams": args.streams}

    async def main() -> None:
        async with open_transport(seed, ["/ip4/127.0.0.1/tcp/0"]) as transport:
            with trio.move_on_after(30):
                await transport.connect(target, [target_addr])
            out["started_wall"] = time.time()
            deadline = trio.current_time() + args.seconds

            async def one() -> None:
                while trio.current_time() < deadline:
                    try:
                        if not transport.is_connected(target):
                            with trio.move_on_after(5):
                                await transport.connect(target, [target_addr])
                        stream = await transport.open_stream(target, AVG_PROTOCOL_ID)
                    except Exception:  # any failure: count it, try again
                        counts["open_failed"] += 1
                        await trio.sleep(0.2)
                        continue
                    counts["opened"] += 1
                    try:
                        with trio.move_on_after(args.hold_s):
                            data = await stream.receive_some(1)
                            if not data:
                                counts["reset"] += 1
                                continue
                        counts["held"] += 1
                    except Exception:
                        counts["reset"] += 1
                    finally:
                        with trio.move_on_after(1), trio.CancelScope(shield=True), \
                                contextlib.suppress(Exception):
                            await stream.aclose()

            async with trio.open_nursery() as nursery:
                for _ in range(args.streams):
                    nursery.start_soon(one)
            out["ended_wall"] = time.time()

    try:
        trio.run(main)
    finally:
        out.update(counts)
        args.out.write_text(json.dumps(out, indent=2))
    print(f"flooder: {out}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["flooder"]:
        p = argparse.ArgumentParser(prog="chaos.py flooder")
        p.add_argument("--testnet-dir", type=Path, required=True)
        p.add_argument("--state", type=Path, required=True)
        p.add_argument("--seconds", type=float, default=60)
        p.add_argument("--streams", type=int, default=AVG_STREAMS)
        p.add_argument("--hold-s", type=float, default=5.0)
        p.add_argument("--out", type=Path, required=True)
        a = p.parse_args(argv[1:])
        a.command = "flooder"
        return a
    p = argparse.ArgumentParser(prog="chaos.py", description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=None, help="default 8 (4 with --quick)")
    p.add_argument("--seconds", type=float, default=None,
                   help="length of each run but the soak (default 120; 40 with --quick)")
    p.add_argument("--soak-seconds", type=float, default=None,
                   help="length of the soak (default 1800; 90 with --quick)")
    p.add_argument("--scenarios", default=",".join(s for s in SCENARIOS if s != "partition"),
                   help=f"comma list of {', '.join(SCENARIOS)} (default: all but partition)")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="attack modes to run")
    p.add_argument("--control-attack", default="scaled",
                   help="the attack(s) the plain-averaging control runs against (comma list)")
    p.add_argument("--attackers", type=int, default=1,
                   help="how many nodes (the last ones) attack in each attack run (default 1)")
    p.add_argument("--partition-seconds", type=float, default=None,
                   help="how long the partition lasts (default 60; 30 with --quick)")
    p.add_argument("--flood-streams", type=int, default=AVG_STREAMS)
    p.add_argument("--partition", default="iid", help="data partition of every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 nodes, short runs (a smoke test)")
    p.add_argument("--out", type=Path, default=Path("chaos-out"))
    p.add_argument("--reuse", action="store_true",
                   help="a scenario whose DIR/NAME/summary.json exists is not run again")
    p.add_argument("--json", action="store_true", help="print the JSON report, not the table")
    p.add_argument("--verbose", action="store_true", help="echo the testnets' output")
    a = p.parse_args(argv)
    a.command = "chaos"
    a.nodes = a.nodes or (4 if a.quick else 8)
    a.seconds = a.seconds or (40.0 if a.quick else 120.0)
    a.soak_seconds = a.soak_seconds or (90.0 if a.quick else 1800.0)
    a.scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    a.attacks = [s.strip() for s in a.attacks.split(",") if s.strip()]
    a.control_attack = [s.strip() for s in a.control_attack.split(",") if s.strip()]
    bad = [s for s in a.scenarios if s not in SCENARIOS]
    bad += [m for m in a.attacks + a.control_attack if m not in ATTACKS]
    if bad:
        p.error(f"unknown scenario or attack: {', '.join(bad)}")
    if a.nodes < 2:
        p.error("--nodes must be >= 2")
    if "attacks" in a.scenarios and not 1 <= a.attackers < a.nodes - 1:
        p.error("--attackers must leave node 0 and at least one more node honest")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "flooder":
        return flooder_main(args)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    for run in plan(args):
        res = execute(args, run)
        results.append(res)
        if run.name == "baseline" and "summary" in res:
            base = res
    rows = [evaluate(r, base) for r in results]
    rep = report(rows, args)
    (args.out / "chaos.json").write_text(json.dumps(rep, indent=2, default=str))
    (args.out / "chaos.md").write_text(render_table(rows, markdown=True))
    if args.json:
        print(json.dumps(rep, indent=2, default=str))
    else:
        print(render_table(rows), end="")
    return 0 if all(r.result in ("pass", "expected-fail", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
