#!/usr/bin/env python3
"""Plots and a Markdown report of one testnet run, from DIR/summary.json and DIR/timeseries.json.

    scripts/report.py DIR        # (re)writes DIR/*.png and DIR/report.md

scripts/testnet.py run calls write_report() at the end of every run. The PNGs (matplotlib, Agg
backend, no display needed):

  accuracy.png   test accuracy of every node and of the averaged model over time (parameter
                 polls of all nodes at the same moments, evaluated by the testnet)
  consensus.png  consensus distance (mean squared L2 distance of the nodes to their mean) over
                 time, log scale; dotted: each node's own estimate from its pair distances
  bytes.png      bytes sent and received per node over time (node histories)
  latency.png    mean duration of the exchanges in each history interval, per node
  provenance.png how many vectors each node merged from each other node during the run, from
                 the receipts in their ledgers (summary.json "provenance"; runs before it had
                 none, and get none)

Faults of the schedule are drawn as vertical lines (a pause as a shaded span). A node that was
killed simply has no points after its death; a restarted node's counters start again from 0.
Without matplotlib (`pip install -e '.[report]'`) only report.md is written.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any

PLOTS = (
    ("accuracy.png", "Test accuracy of each node and of the averaged model"),
    ("consensus.png", "Consensus distance (log scale)"),
    ("bytes.png", "Bytes sent and received per node"),
    ("latency.png", "Exchange latency per node"),
    ("provenance.png", "Vectors merged, from the ledgers' receipts"),
)
FAULT_COLOURS = {"kill": "tab:red", "stop": "tab:orange", "restart": "tab:green",
                 "pause": "tab:gray", "resume": "tab:gray"}
TARGETS = (0.9, 0.95)


def _key(d: dict[Any, Any], i: int) -> Any:
    """JSON turns int keys into strings; accept both."""
    return d.get(i, d.get(str(i)))


def _segments(samples: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """History samples split by incarnation (a restarted node starts its counters at 0)."""
    out: list[list[dict[str, Any]]] = []
    for s in samples:
        if not out or out[-1][-1].get("incarnation") != s.get("incarnation"):
            out.append([])
        out[-1].append(s)
    return out


def window_latency(seg: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Mean exchange duration (ms) within each pair of consecutive samples: the node reports a
    running mean over n exchanges, so the interval's mean is the change of mean*n over that of
    n."""
    ts, ms = [], []
    prev = None
    for s in seg:
        n = (s.get("exchanges_ok") or 0) + (s.get("exchanges_served_ok") or 0)
        mean = s.get("exchange_seconds_mean")
        total = None if mean is None else mean * n
        if prev is not None and total is not None and n > prev[0]:
            ts.append(s["t"])
            ms.append(1000.0 * (total - prev[1]) / (n - prev[0]))
        if total is not None:
            prev = (n, total)
    return ts, ms


def broken(pts: list[tuple[float, float]], gap: float) -> tuple[list[float], list[float]]:
    """x, y lists with a NaN wherever consecutive points are more than `gap` apart, so that a
    line is not drawn across the time a node was down or paused."""
    xs: list[float] = []
    ys: list[float] = []
    for t, v in pts:
        if xs and t - xs[-1] > gap:
            xs.append(math.nan)
            ys.append(math.nan)
        xs.append(t)
        ys.append(v)
    return xs, ys


def time_to(polls: list[dict[str, Any]], target: float, key: str) -> float | None:
    for p in polls:
        if key == "avg" and (p.get("avg_model_accuracy") or 0) >= target:
            return float(p["t"])
        accs = list(p.get("node_accuracy", {}).values())
        if key == "min" and accs and min(accs) >= target:
            return float(p["t"])
    return None


def _mark_faults(ax: Any, faults: list[dict[str, Any]]) -> None:
    for f in faults:
        if f.get("skipped") or f.get("auto"):  # a timed pause's resume is the span's end
            continue
        colour = FAULT_COLOURS.get(f["action"], "black")
        if f["action"] == "pause" and f.get("duration_s"):
            ax.axvspan(f["at_s"], f["at_s"] + f["duration_s"], color=colour, alpha=0.15, lw=0)
        else:
            ax.axvline(f["at_s"], color=colour, ls="--", lw=1)
        ax.annotate(f"{f['action']} {f['node']}", (f["at_s"], 1.0), xycoords=("data", "axes "
                    "fraction"), xytext=(2, -10), textcoords="offset points", fontsize=7,
                    color=colour)


def plot(out: Path, summary: dict[str, Any], series: dict[str, Any]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_nodes = int(series["nodes"])
    polls = series.get("polls", [])
    history = series.get("history", {})
    faults = series.get("faults", [])
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(n_nodes)]
    # A node is missing from polls while it is down or paused; history samples come every
    # train.eval_interval_s (2 s by default).
    poll_gap = 2.5 * float(series.get("sample_every_s") or 2.0)
    steps = sorted(b["t"] - a["t"] for seg in history.values()
                   for a, b in itertools.pairwise(seg))
    hist_gap = 2.5 * (steps[len(steps) // 2] if steps else 2.0)  # the median sample interval
    written = []

    def finish(fig: Any, ax: Any, name: str, ylabel: str) -> None:
        ax.set_xlabel("seconds since all nodes were ready")
        ax.set_ylabel(ylabel)
        _mark_faults(ax, faults)
        ax.grid(True, alpha=0.3)
        handles, _labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(fontsize=7, ncol=2 if len(handles) > 6 else 1, loc="best")
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    # accuracy
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n_nodes):
        pts = [(p["t"], _key(p["node_accuracy"], i)) for p in polls]
        pts = [(t, a) for t, a in pts if a is not None]
        if not pts:  # no polls (a failed run): the node's own evaluations
            pts = [(s["t"], s["accuracy"]) for s in history.get(str(i), history.get(i, []))
                   if s.get("accuracy") is not None]
        if pts:
            ax.plot(*broken(pts, poll_gap), color=colours[i], lw=1, marker=".", ms=3,
                    label=f"node {i}")
    avg = [(p["t"], p["avg_model_accuracy"]) for p in polls
           if p.get("avg_model_accuracy") is not None]
    if avg:
        ax.plot(*zip(*avg, strict=True), color="black", lw=2.2, label="averaged model")
    ax.set_ylim(0, 1.01)
    ax.set_title(PLOTS[0][1], fontsize=10)
    finish(fig, ax, PLOTS[0][0], "test accuracy")

    # consensus distance
    fig, ax = plt.subplots(figsize=(7, 4))
    cd = [(p["t"], p["consensus_distance"]) for p in polls
          if p.get("consensus_distance") and len(p.get("node_accuracy", {})) >= 2]
    if cd:
        ax.plot(*zip(*cd, strict=True), color="black", lw=2, marker=".", ms=4,
                label="all polled nodes")
    num_params = series.get("num_params")
    if num_params and n_nodes >= 2:
        # E||x_i - x_j||^2 = 2N/(N-1) D for random pairs (gossipd/metrics.py pair_distance)
        scale = num_params * (n_nodes - 1) / (2 * n_nodes)
        for i in range(n_nodes):
            pts = [(s["t"], s["consensus_estimate"] * scale)
                   for s in history.get(str(i), history.get(i, []))
                   if s.get("consensus_estimate")]
            if pts:
                ax.plot(*broken(pts, hist_gap), color=colours[i], lw=0.8, ls=":",
                        label=f"node {i} estimate")
    if cd or ax.lines:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no consensus data (fewer than 2 nodes polled)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_title(PLOTS[1][1], fontsize=10)
    finish(fig, ax, PLOTS[1][0], "mean squared distance to the mean")

    # bytes
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n_nodes):
        for k, seg in enumerate(_segments(history.get(str(i), history.get(i, [])))):
            t = [s["t"] for s in seg]
            ax.plot(t, [(s.get("bytes_sent") or 0) / 1e6 for s in seg], color=colours[i],
                    lw=1.2, label=f"node {i} sent" if k == 0 else None)
            ax.plot(t, [(s.get("bytes_received") or 0) / 1e6 for s in seg], color=colours[i],
                    lw=1, ls="--", label=f"node {i} received" if k == 0 else None)
    ax.set_title(PLOTS[2][1] + " (restarted nodes count from 0)", fontsize=10)
    finish(fig, ax, PLOTS[2][0], "MB (10^6 bytes), cumulative")

    # latency
    fig, ax = plt.subplots(figsize=(7, 4))
    for i in range(n_nodes):
        for k, seg in enumerate(_segments(history.get(str(i), history.get(i, [])))):
            t, ms = window_latency(seg)
            if t:
                ax.plot(*broken(list(zip(t, ms, strict=True)), hist_gap), color=colours[i],
                        lw=1, marker=".", ms=3, label=f"node {i}" if k == 0 else None)
    if not ax.lines:
        ax.text(0.5, 0.5, "no exchanges" + (" (local-only)" if series.get("local_only") else ""),
                ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(bottom=0)
    ax.set_title(PLOTS[3][1] + " (mean per history interval, both roles)", fontsize=10)
    finish(fig, ax, PLOTS[3][0], "ms per exchange")
    merged = (summary.get("provenance") or {}).get("merged")
    if merged:
        written.append(plot_provenance(out, merged, plt))
    return written


def plot_provenance(out: Path, merged: dict[str, dict[str, int]], plt: Any) -> Path:
    """provenance.png: a matrix of the vectors each node merged from each other node during
    the run, as its ledger's receipts say (a refused vector does not count)."""
    names = sorted(set(merged) | {p for row in merged.values() for p in row},
                   key=lambda n: (len(n), n))
    grid = [[merged.get(r, {}).get(c, 0) for c in names] for r in names]
    size = 2.2 + 0.45 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(grid, cmap="Blues", vmin=0)
    short = [n.removeprefix("node") for n in names]
    ax.set_xticks(range(len(names)), short, fontsize=8)
    ax.set_yticks(range(len(names)), short, fontsize=8)
    ax.set_xlabel("contributor (node)")
    ax.set_ylabel("merged into (node)")
    top = max((v for row in grid for v in row), default=0)
    if len(names) <= 16:  # the counts themselves, where they fit
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if i != j:
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if v > 0.6 * top else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="vectors merged")
    ax.set_title(PLOTS[4][1], fontsize=10)
    fig.tight_layout()
    path = out / PLOTS[4][0]
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return str(v)


def markdown(summary: dict[str, Any], series: dict[str, Any], plots: list[Path]) -> str:
    polls = series.get("polls", [])
    faults = summary.get("faults", [])
    mode = "local-only" if summary["local_only"] else "gossip"
    lines = [
        "# Testnet report", "",
        f"{len(summary['nodes'])} nodes, task {summary['task']}, partition "
        f"{summary['partition']}, {mode}, {summary['seconds']:g} s, seed {summary['seed']}. "
        f"Faults: {', '.join(f['fault'] + (' (skipped)' if f.get('skipped') else '') for f in faults) or 'none'}. "  # noqa: E501
        f"Outcome: {'ok' if summary['ok'] else 'NOT ok'}.", "",
        "| measure | value |", "|---|---|",
        f"| averaged-model accuracy | {_fmt(summary['avg_model_accuracy'])} |",
        f"| mean node accuracy | {_fmt(summary['mean_node_accuracy'])} |",
        f"| min node accuracy | {_fmt(summary['min_node_accuracy'])} |",
        f"| consensus distance | {summary['consensus_distance']:.3g} |",
    ]
    for target in TARGETS:
        lines.append(f"| seconds to {target:g}: averaged model / every polled node | "
                     f"{_fmt(time_to(polls, target, 'avg'), 1)} / "
                     f"{_fmt(time_to(polls, target, 'min'), 1)} |")
    lines.append(f"| parameter polls | {len(polls)} (every {series.get('sample_every_s')} s) |")
    lines += ["", "| node | accuracy | step | exchanges ok | failed | served ok | MB sent | "
              "MB received | incarnations | exit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in summary["nodes"]:
        note = " (killed)" if n.get("killed") else " (stopped)" if n.get("stopped") else ""
        lines.append(
            f"| {n['index']}{note} | {_fmt(n['accuracy'])} | {n['step']} | {n['exchanges_ok']} "
            f"| {n['exchanges_failed']} | {n.get('exchanges_served_ok', 0)} | "
            f"{n['bytes_sent'] / 1e6:.2f} | {n['bytes_received'] / 1e6:.2f} | "
            f"{n.get('incarnations', 1)} | {n['exit_code']} |")
    left = summary.get("leftovers", {})
    lines += ["", f"Left behind after the stop: {left}.", ""]
    prov = summary.get("provenance")
    if prov:  # (summaries of older runs have none)
        excused = (f", {prov['unmatched_excused']} of them cut by a fault or the stop"
                   if prov["unmatched_excused"] else "")
        lines += [f"Provenance: {prov['verified']} of {prov['ledgers']} ledgers verify (every "
                  f"link and signature); {prov['receipts_matched']} exchange receipts are on "
                  f"both peers' ledgers, identically signed; "
                  f"{prov['receipts_unmatched']} unmatched{excused}; "
                  f"{prov['bytes_per_receipt']} ledger bytes per receipt.", ""]
    titles = dict(PLOTS)
    if plots:
        for p in plots:
            lines += [f"## {titles.get(p.name, p.stem)}", "", f"![{p.stem}]({p.name})", ""]
    else:
        lines += ["No plots: matplotlib is not installed (`pip install -e '.[report]'`).", ""]
    lines += ["Counters of a node come from its last incarnation (a restart starts them at 0). "
              "Accuracies are on the shared 450-image test set, evaluated by the testnet from "
              "parameters it polled; consensus distance is the mean squared L2 distance of "
              "the polled nodes' parameters to their mean.", ""]
    return "\n".join(lines)


def write_report(out: Path, summary: dict[str, Any], series: dict[str, Any]) -> list[Path]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("report: matplotlib is not installed (pip install -e '.[report]'); no plots",
              file=sys.stderr)
        plots: list[Path] = []
    else:
        plots = plot(out, summary, series)
    path = out / "report.md"
    path.write_text(markdown(summary, series, plots))
    return [*plots, path]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: report.py DIR   (a testnet run's --out directory)", file=sys.stderr)
        return 2
    out = Path(args[0])
    try:
        summary = json.loads((out / "summary.json").read_text())
        series = json.loads((out / "timeseries.json").read_text())
    except FileNotFoundError as exc:
        print(f"report: {exc.filename} missing: is {out} a testnet run's --out?", file=sys.stderr)
        return 2
    for p in write_report(out, summary, series):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
