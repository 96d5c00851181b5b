// gossipd dashboard: small SVG charts and the polling loops of the node and swarm pages.
// No dependencies and no network access beyond the page's own origin.
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d",
  "#4d7c0f", "#7c3aed", "#b45309"];
const SVG_NS = "http://www.w3.org/2000/svg";

function el(tag, attrs, parent) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function fmt(v, digits) {
  if (v === null || v === undefined || Number.isNaN(v)) return "-";
  if (typeof v !== "number") return String(v);
  if (Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0)) return v.toExponential(2);
  return v.toFixed(digits === undefined ? 3 : digits);
}

function axisFmt(v) {
  if (v === 0) return "0";
  if (Math.abs(v) < 0.01 || Math.abs(v) >= 1e5) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

// series: [{name, points: [[x, y], ...]}]; opts: {log: bool, title: str, yfmt: fn}
function lineChart(svg, series, opts) {
  opts = opts || {};
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 460, H = 180, L = 54, R = 10, T = 22, B = 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const t = el("text", {x: 4, y: 14, class: "title"}, svg);
  t.textContent = opts.title || "";
  const ok = (y) => y !== null && y !== undefined && Number.isFinite(y) && (!opts.log || y > 0);
  const pts = series.flatMap((s) => s.points.filter((p) => ok(p[1])));
  if (pts.length < 1) {
    const e = el("text", {x: W / 2, y: H / 2, class: "empty", "text-anchor": "middle"}, svg);
    e.textContent = "waiting for data";
    svg.dataset.points = "0";
    return;
  }
  const f = opts.log ? Math.log10 : (v) => v;
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  let y0 = Math.min(...pts.map((p) => f(p[1]))), y1 = Math.max(...pts.map((p) => f(p[1])));
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + (x - x0) / (x1 - x0) * (W - L - R);
  const sy = (y) => H - B - (f(y) - y0) / (y1 - y0) * (H - T - B);
  for (let i = 0; i <= 4; i += 1) {
    const yv = y0 + (y1 - y0) * i / 4, py = H - B - (H - T - B) * i / 4;
    el("line", {x1: L, x2: W - R, y1: py, y2: py, class: "grid"}, svg);
    const lab = el("text", {x: L - 4, y: py + 4, "text-anchor": "end", class: "axis"}, svg);
    const real = opts.log ? Math.pow(10, yv) : yv;
    lab.textContent = opts.yfmt ? opts.yfmt(real) : axisFmt(real);
  }
  const xl = el("text", {x: W - R, y: H - 6, "text-anchor": "end", class: "axis"}, svg);
  xl.textContent = `${fmt(x1, 0)} s`;
  const xs = el("text", {x: L, y: H - 6, class: "axis"}, svg);
  xs.textContent = `${fmt(x0, 0)} s`;
  series.forEach((s, i) => {
    const good = s.points.filter((p) => ok(p[1]));
    if (!good.length) return;
    const d = good.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`);
    el("path", {d: d.join(""), class: "line", stroke: s.color || COLORS[i % COLORS.length]}, svg);
  });
  if (series.length > 1) {
    series.forEach((s, i) => {
      const lt = el("text", {x: L + 6 + i * 62, y: T + 10, class: "legend",
        fill: s.color || COLORS[i % COLORS.length]}, svg);
      lt.textContent = s.name;
    });
  }
  svg.dataset.points = String(pts.length);
}

function rate(samples, key) {
  // per-minute rate of a cumulative counter between consecutive samples
  const out = [];
  for (let i = 1; i < samples.length; i += 1) {
    const dt = samples[i].t - samples[i - 1].t;
    const a = samples[i][key], b = samples[i - 1][key];
    if (dt > 0 && a !== null && b !== null) out.push([samples[i].t, (a - b) / dt * 60]);
  }
  return out;
}

function series(samples, key) {
  return samples.map((s) => [s.t, s[key]]);
}

async function getJSON(path) {
  const r = await fetch(path, {cache: "no-store"});
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

function setStale(stale, message) {
  const banner = document.getElementById("stale");
  if (!banner) return;
  banner.hidden = !stale;
  banner.textContent = message || "";
}

// ------------------------------------------------------------------ node page

const nodeState = {samples: [], lastT: -1};

async function nodeTick() {
  try {
    const [status, peers, hist] = await Promise.all([
      getJSON("/api/status"), getJSON("/api/peers"),
      getJSON(`/api/history?since=${nodeState.lastT}`)]);
    nodeState.samples.push(...hist.samples);
    nodeState.samples = nodeState.samples.slice(-2000);
    if (nodeState.samples.length) nodeState.lastT = nodeState.samples[nodeState.samples.length - 1].t;
    renderNode(status, peers, nodeState.samples);
    setStale(false);
  } catch (err) {
    setStale(true, `node not answering: ${err.message}`);
  }
}

function renderNode(s, peers, samples) {
  setText("peer-id", s.peer_id);
  setText("device", s.device || "-");
  setText("task", `${s.task}  shard ${s.shard} (${s.partition})`);
  setText("training", s.training || "-");
  setText("step", String(s.step));
  setText("loss", fmt(s.loss));
  setText("accuracy", fmt(s.accuracy, 4));
  setText("peers-count", `${s.live_peers} live / ${s.known_peers.length} known`);
  setText("exchanges", `${s.exchanges_ok + s.exchanges_served_ok} ok, ` +
    `${s.exchanges_failed + s.exchanges_served_failed} failed`);
  setText("traffic", `${bytes(s.bytes_sent)} out, ${bytes(s.bytes_received)} in`);
  setText("uptime", `${fmt(s.uptime_s, 0)} s`);
  lineChart(document.getElementById("chart-loss"), [{name: "loss", points: series(samples, "loss")}],
    {title: "training loss"});
  lineChart(document.getElementById("chart-accuracy"),
    [{name: "accuracy", points: series(samples, "accuracy")}], {title: "test accuracy"});
  lineChart(document.getElementById("chart-consensus"),
    [{name: "estimate", points: series(samples, "consensus_estimate")}],
    {title: "consensus distance estimate (log)", log: true});
  lineChart(document.getElementById("chart-rate"), [
    {name: "started", points: rate(samples, "exchanges_ok")},
    {name: "served", points: rate(samples, "exchanges_served_ok")}],
  {title: "exchanges per minute"});
  lineChart(document.getElementById("chart-latency"),
    [{name: "mean", points: series(samples, "exchange_seconds_mean")}],
    {title: "mean exchange time (s)"});
  lineChart(document.getElementById("chart-bytes"), [
    {name: "out", points: series(samples, "bytes_sent")},
    {name: "in", points: series(samples, "bytes_received")}],
  {title: "bytes (cumulative)", yfmt: bytes});
  const body = document.getElementById("peers-body");
  body.replaceChildren(...peers.map((p) => {
    const tr = document.createElement("tr");
    const state = p.banned ? "banned" : p.live ? "live" : "backing off";
    for (const v of [p.peer_id, state, p.exchanges_ok, p.exchanges_failed, p.strikes,
      p.last_ok_age_s === null ? "-" : `${fmt(p.last_ok_age_s, 1)} s ago`]) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    tr.className = state.replace(" ", "-");
    return tr;
  }));
}

// ------------------------------------------------------------------ swarm page

async function swarmTick() {
  try {
    renderSwarm(await getJSON("/api/swarm"));
    setStale(false);
  } catch (err) {
    setStale(true, `testnet dashboard not answering: ${err.message}`);
  }
}

function short(id) {
  return id ? `…${id.slice(-6)}` : "?";
}

function renderSwarm(data) {
  const names = Object.keys(data.nodes).sort();
  const rows = names.map((n) => data.nodes[n]);
  const up = rows.filter((r) => r.up);
  setText("node-count", `${up.length} of ${rows.length} nodes up`);
  const last = data.series.length ? data.series[data.series.length - 1] : null;
  setText("avg-accuracy", last ? fmt(last.avg_accuracy, 4) : "-");
  setText("consensus", last ? fmt(last.consensus_distance) : "-");
  renderGraph(document.getElementById("graph"), rows);
  // Node clocks differ: each node's series is on its own uptime axis, shifted to the
  // dashboard's clock by the node's current uptime.
  const perNode = (key) => rows.filter((r) => r.up).map((r) => {
    const shift = data.now - r.status.uptime_s;
    return {name: r.name, points: r.history.map((s) => [s.t + shift, s[key]])};
  });
  lineChart(document.getElementById("chart-node-accuracy"), perNode("accuracy"),
    {title: "test accuracy per node"});
  lineChart(document.getElementById("chart-node-loss"), perNode("loss"),
    {title: "training loss per node"});
  lineChart(document.getElementById("chart-avg"),
    [{name: "averaged model", points: data.series.map((p) => [p.t, p.avg_accuracy])}],
    {title: "averaged-model test accuracy"});
  lineChart(document.getElementById("chart-consensus"),
    [{name: "consensus", points: data.series.map((p) => [p.t, p.consensus_distance])}],
    {title: "consensus distance (log)", log: true});
  const body = document.getElementById("nodes-body");
  body.replaceChildren(...rows.map((r) => {
    const tr = document.createElement("tr");
    const s = r.status || {};
    const cells = r.up ? [r.name, short(s.peer_id), "up", s.step, fmt(s.loss), fmt(s.accuracy, 4),
      `${s.live_peers}`, s.exchanges_ok + s.exchanges_served_ok, bytes(s.bytes_sent)]
      : [r.name, "-", "down", "-", "-", "-", "-", "-", r.error || ""];
    for (const v of cells) {
      const td = document.createElement("td");
      td.textContent = String(v);
      tr.appendChild(td);
    }
    tr.className = r.up ? "live" : "down";
    tr.dataset.node = r.name;
    return tr;
  }));
}

function renderGraph(svg, rows) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const W = 420, H = 320, cx = W / 2, cy = H / 2, rad = Math.min(W, H) / 2 - 40;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const pos = {};
  rows.forEach((r, i) => {
    const a = -Math.PI / 2 + 2 * Math.PI * i / Math.max(rows.length, 1);
    const id = r.status ? r.status.peer_id : r.name;
    pos[id] = [cx + rad * Math.cos(a), cy + rad * Math.sin(a), r];
  });
  let edges = 0;
  for (const r of rows) {
    if (!r.up) continue;
    const me = r.status.peer_id;
    for (const p of r.peers || []) {
      if (!(p.peer_id in pos) || p.peer_id < me || !p.exchanges_ok) continue;
      const [x1, y1] = pos[me], [x2, y2] = pos[p.peer_id];
      const recent = p.last_ok_age_s !== null && p.last_ok_age_s < 5;
      el("line", {x1, y1, x2, y2, class: recent ? "edge recent" : "edge",
        "stroke-width": Math.min(1 + Math.log2(1 + p.exchanges_ok) / 2, 6).toFixed(1)}, svg);
      edges += 1;
    }
  }
  for (const [id, [x, y, r]] of Object.entries(pos)) {
    el("circle", {cx: x, cy: y, r: 18, class: r.up ? "node up" : "node down"}, svg);
    const t = el("text", {x, y: y + 4, "text-anchor": "middle", class: "node-label"}, svg);
    t.textContent = r.name;
    const u = el("text", {x, y: y + 32, "text-anchor": "middle", class: "axis"}, svg);
    u.textContent = r.up ? short(id) : "down";
  }
  svg.dataset.edges = String(edges);
}

function start(tick) {
  tick();
  setInterval(tick, 2000);
}
