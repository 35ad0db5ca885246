"""The labeling page of ``moola label serve``: one self-contained HTML file (inline CSS and JS, an SVG
chart drawn by hand), so it needs no network, CDN or build step."""

from __future__ import annotations

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>moola · label windows</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  :root { --bg:#f6f7f9; --panel:#fff; --ink:#1f2937; --muted:#6b7280; --line:#e5e7eb;
          --up:#16a34a; --down:#dc2626; --c0:#2563eb; --c1:#ea580c; }
  * { box-sizing: border-box; }
  html, body { margin:0; height:100%; background:var(--bg); color:var(--ink);
               font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
  body { display:grid; grid-template-rows: 56px 1fr 34px; }
  header { display:flex; align-items:center; gap:24px; padding:0 20px; background:var(--panel);
           border-bottom:1px solid var(--line); }
  header h1 { font-size:16px; margin:0; font-weight:650; white-space:nowrap; }
  header h1 span { color:var(--muted); font-weight:400; }
  .progress { flex:1; display:flex; align-items:center; gap:14px; }
  .bar { flex:1; max-width:520px; height:10px; background:var(--line); border-radius:5px; overflow:hidden;
         display:flex; }
  .bar i { display:block; height:100%; }
  .bar .lab { background:#10b981; } .bar .skp { background:#cbd5e1; }
  #progress { font-weight:600; white-space:nowrap; }
  #progress-detail { color:var(--muted); white-space:nowrap; }
  #file { color:var(--muted); font-size:12px; white-space:nowrap; overflow:hidden; text-overflow:ellipsis;
          max-width:300px; }
  main { display:grid; grid-template-columns: 1fr 310px; gap:16px; padding:16px 20px 0; min-height:0; }
  .card { background:var(--panel); border:1px solid var(--line); border-radius:10px; min-height:0; }
  #chart-card { display:flex; flex-direction:column; padding:12px 14px 8px; }
  #wininfo { display:flex; align-items:baseline; gap:12px; }
  #symbol { font-size:20px; font-weight:700; }
  #dates, #position { color:var(--muted); }
  #position { margin-left:auto; }
  #readout { height:20px; color:var(--muted); font-variant-numeric: tabular-nums; font-size:13px; }
  #chart { flex:1; width:100%; min-height:0; display:block; user-select:none; cursor:crosshair; }
  #done { display:none; flex:1; align-items:center; justify-content:center; text-align:center;
          color:var(--muted); font-size:16px; }
  aside { display:flex; flex-direction:column; gap:12px; padding:14px; overflow:auto; }
  aside h2 { font-size:12px; text-transform:uppercase; letter-spacing:.06em; color:var(--muted);
             margin:0 0 6px; }
  .classes { display:flex; flex-direction:column; gap:8px; }
  button { font:inherit; border-radius:8px; border:1px solid var(--line); background:#fff; color:var(--ink);
           padding:8px 12px; cursor:pointer; text-align:left; }
  button:hover:not(:disabled) { border-color:#9ca3af; }
  button:disabled { opacity:.45; cursor:default; }
  kbd { display:inline-block; min-width:20px; padding:0 5px; border:1px solid #d1d5db;
        border-bottom-width:2px; border-radius:4px; font:12px/18px ui-monospace, monospace;
        text-align:center; color:#374151; background:#f9fafb; margin-right:6px; }
  .cls { display:flex; align-items:center; gap:4px; padding:10px 12px; }
  .cls b { font-weight:600; } .cls small { display:block; color:var(--muted); font-size:12px; }
  .cls.on { color:#fff; } .cls.on small { color:#e5e7eb; } .cls.on kbd { background:transparent; color:#fff; }
  .cls[data-k="0"].on { background:var(--c0); border-color:var(--c0); }
  .cls[data-k="1"].on { background:var(--c1); border-color:var(--c1); }
  .pts { display:grid; grid-template-columns: 44px 1fr; gap:4px 8px; font-variant-numeric: tabular-nums; }
  .pts span:nth-child(odd) { color:var(--muted); }
  #hint { background:#eff6ff; color:#1e40af; border-radius:8px; padding:8px 10px; font-weight:500; }
  #hint.ready { background:#ecfdf5; color:#065f46; }
  .actions { display:grid; grid-template-columns: 1fr 1fr; gap:8px; }
  #save { grid-column: 1 / span 2; background:var(--ink); color:#fff; border-color:var(--ink);
          font-weight:600; text-align:center; }
  #save kbd { background:transparent; color:#fff; border-color:#6b7280; }
  #last { color:var(--muted); font-size:13px; min-height:36px; }
  .keys { display:grid; grid-template-columns: auto 1fr auto 1fr; gap:5px 4px; color:var(--muted);
          font-size:13px; align-items:center; }
  footer { display:flex; align-items:center; padding:0 20px; color:var(--muted); font-size:13px; }
  #toast.err { color:var(--down); font-weight:600; } #toast.ok { color:#047857; }
</style>
</head>
<body>
<header>
  <h1>moola <span>· label windows</span></h1>
  <div class="progress">
    <div class="bar" title="labeled / skipped / left">
      <i class="lab" id="bar-lab"></i><i class="skp" id="bar-skp"></i>
    </div>
    <span id="progress">– / – labeled</span><span id="progress-detail"></span>
  </div>
  <span id="file"></span>
</header>
<main>
  <section class="card" id="chart-card">
    <div id="wininfo"><span id="symbol">…</span><span id="dates"></span><span id="position"></span></div>
    <div id="readout"></div>
    <svg id="chart" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="candlestick chart"></svg>
    <div id="done"></div>
  </section>
  <aside class="card">
    <div id="hint">Loading…</div>
    <div><h2>1 · Class</h2><div class="classes" id="classes"></div></div>
    <div><h2>2 · Start and end bars</h2>
      <div class="pts">
        <span>start</span><span id="pt-start">–</span><span>end</span><span id="pt-end">–</span>
      </div>
    </div>
    <div class="actions">
      <button id="save" disabled><kbd>Enter</kbd>Save label</button>
      <button id="skip"><kbd>s</kbd>Skip</button>
      <button id="undo"><kbd>u</kbd>Undo</button>
      <button id="clear" style="grid-column:1 / span 2"><kbd>Esc</kbd>Clear selection</button>
    </div>
    <div><h2>Last saved</h2><div id="last">–</div></div>
    <div><h2>Keys</h2><div class="keys" id="keys"></div></div>
  </aside>
</main>
<footer><span id="toast">Pick a class, click the pattern's first and last bars, then save.</span></footer>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const NS = "http://www.w3.org/2000/svg";
const INFO = { consolidation: "range that holds an impulse", retracement: "pullback against an impulse" };
const S = { state: null, win: null, cls: null, start: null, end: null, hover: null, busy: false,
            layers: null };

async function api(method, path, body) {
  const opt = { method, headers: {} };
  if (body !== undefined) {
    opt.headers["Content-Type"] = "application/json";
    opt.body = JSON.stringify(body);
  }
  const r = await fetch(path, opt);
  const j = await r.json();
  if (!r.ok) throw new Error(j.error || r.statusText);
  return j;
}
function toast(msg, kind) { const t = $("toast"); t.textContent = msg; t.className = kind || ""; }
function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v) {
  return Math.abs(v) >= 1000 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(2) : v.toPrecision(4);
}
function vol(v) { return v >= 1e9 ? (v / 1e9).toFixed(2) + "B" : v >= 1e6 ? (v / 1e6).toFixed(2) + "M" :
                  v >= 1e3 ? (v / 1e3).toFixed(1) + "k" : String(Math.round(v)); }

// ------------------------------------------------------------------ state and panel
function classColor(c) {
  const k = S.state ? S.state.classes.indexOf(c) : -1;
  return k === 1 ? "var(--c1)" : "var(--c0)";
}
function buildPanel() {
  const box = $("classes"); box.innerHTML = "";
  S.state.classes.forEach((c, k) => {
    const b = document.createElement("button");
    b.className = "cls"; b.id = "class-" + c; b.dataset.k = k; b.dataset.cls = c;
    const name = c[0].toUpperCase() + c.slice(1);
    b.innerHTML = `<kbd>${k + 1}</kbd><span><b>${name}</b><small>${INFO[c] || ""}</small></span>`;
    b.onclick = () => setClass(c);
    box.appendChild(b);
  });
  const keys = [[S.state.classes.map((_, k) => k + 1).join("/"), "class"], ["click", "start, end"],
                ["Enter", "save"], ["s", "skip"], ["u", "undo"], ["Esc", "clear"]];
  $("keys").innerHTML = keys.map(([k, v]) => `<kbd>${k}</kbd><span>${v}</span>`).join("");
  $("file").textContent = S.state.out; $("file").title = S.state.out;
}
function renderProgress() {
  const s = S.state, pct = (n) => (s.total ? (100 * n / s.total) : 0) + "%";
  $("progress").textContent = `${s.labeled} / ${s.total} labeled`;
  $("progress-detail").textContent = `${s.skipped} skipped · ${s.remaining} left`;
  $("bar-lab").style.width = pct(s.labeled); $("bar-skp").style.width = pct(s.skipped);
  $("undo").disabled = !s.can_undo;
  const l = s.last;
  $("last").textContent = l ? `${l.symbol} ${l.end_ts.slice(0, 10)}: ${l.label}, `
                              + `bars ${l.pointer_start}–${l.pointer_end}` : "–";
}
function ready() { return S.win && S.cls !== null && S.start !== null && S.end !== null; }
function renderPanel() {
  document.querySelectorAll(".cls").forEach((b) => b.classList.toggle("on", b.dataset.cls === S.cls));
  const day = (i) => (i === null || !S.win ? "–" : `bar ${i} · ${S.win.days[i]}`);
  $("pt-start").textContent = day(S.start); $("pt-end").textContent = day(S.end);
  $("save").disabled = !ready() || S.busy; $("skip").disabled = !S.win || S.busy;
  const h = $("hint");
  h.className = ready() ? "ready" : "";
  h.textContent = !S.win ? "Nothing left to label." : S.cls === null ? "Pick a class: 1 or 2"
    : S.start === null ? "Click the pattern's first bar" : S.end === null ? "Click the pattern's last bar"
    : "Press Enter to save (or click again to restart)";
}
function clearSel() { S.cls = null; S.start = null; S.end = null; }
function setClass(c) { if (!S.win || S.busy) return; S.cls = c; renderPanel(); drawSelection(); }
function onBar(i) {
  if (!S.win || S.busy) return;
  if (S.start === null || S.end !== null) { S.start = i; S.end = null; }
  else { S.end = Math.max(S.start, i); S.start = Math.min(S.start, i); }
  renderPanel(); drawSelection();
}

async function refresh(prefill) {
  const st = await api("GET", "/api/state");
  const first = !S.state; S.state = st;
  if (first) buildPanel();
  renderProgress();
  if (st.current === null) { S.win = null; clearSel(); showDone(); renderPanel(); return; }
  if (!S.win || S.win.index !== st.current) S.win = await api("GET", "/api/window/" + st.current);
  clearSel();
  if (prefill && prefill.kind === "label" && prefill.index === st.current) {
    S.cls = prefill.label; S.start = Number(prefill.pointer_start); S.end = Number(prefill.pointer_end);
  }
  $("done").style.display = "none"; $("chart").style.display = "block";
  const w = S.win;
  $("symbol").textContent = w.symbol;
  $("dates").textContent = `${w.days[0]} → ${w.days[w.days.length - 1]} · ${w.bars.length} daily bars`;
  $("position").textContent = `window ${w.position} of ${w.total}`;
  $("chart").dataset.index = w.index;
  drawChart(); renderPanel();
}
function showDone() {
  $("chart").style.display = "none"; const d = $("done"); d.style.display = "flex";
  const s = S.state;
  d.innerHTML = `<div><b>All ${s.total} windows done</b><br>${s.labeled} labeled, ${s.skipped} skipped, `
                + `written to ${s.out}</div>`;
  $("symbol").textContent = "Done";
  for (const id of ["dates", "position", "readout"]) $(id).textContent = "";
}
async function act(fn) {
  if (S.busy) return;
  S.busy = true; renderPanel();
  try { await fn(); } catch (e) { toast(e.message, "err"); }
  finally { S.busy = false; renderPanel(); }
}
function save() {
  if (!ready()) {
    toast(S.cls === null ? "Pick a class first (1 or 2)" : "Click the start and end bars first", "err");
    return;
  }
  act(async () => {
    const body = { index: S.win.index, label: S.cls, pointer_start: S.start, pointer_end: S.end };
    const v = (await api("POST", "/api/label", body)).saved;
    toast(`Saved ${v.symbol} ${v.end_ts.slice(0, 10)} as ${v.label} `
          + `(bars ${v.pointer_start}–${v.pointer_end})`, "ok");
    await refresh();
  });
}
function skip() {
  if (!S.win) return;
  act(async () => {
    const r = await api("POST", "/api/skip", { index: S.win.index });
    toast(`Skipped ${r.skipped.symbol} ${r.skipped.end_ts.slice(0, 10)}`, "ok");
    await refresh();
  });
}
function undo() {
  act(async () => {
    const r = await api("POST", "/api/undo", {}), u = r.undone;
    toast(u.kind === "label" ? `Undid ${u.symbol} ${u.end_ts.slice(0, 10)} ${u.label}: it is back on screen`
                             : `Undid the skip of ${u.symbol} ${u.end_ts.slice(0, 10)}`, "ok");
    S.win = null; await refresh(u);
  });
}

// ------------------------------------------------------------------ chart
function geometry() {
  const svg = $("chart"), W = Math.max(300, svg.clientWidth), H = Math.max(200, svg.clientHeight);
  const m = { l: 8, r: 70, t: 22, b: 26 }, n = S.win.bars.length;
  const inner = H - m.t - m.b, ph = Math.round(inner * 0.8), vh = inner - ph - 12;
  const bw = (W - m.l - m.r) / n;
  let lo = Infinity, hi = -Infinity, vmax = 0;
  for (const [, h, l, , v] of S.win.bars) {
    lo = Math.min(lo, l); hi = Math.max(hi, h); vmax = Math.max(vmax, v || 0);
  }
  const pad = (hi - lo || Math.abs(hi) || 1) * 0.05; lo -= pad; hi += pad;
  return { W, H, m, n, ph, vh, bw, vmax, x: (i) => m.l + i * bw, y: (p) => m.t + (hi - p) / (hi - lo) * ph,
           vy: m.t + ph + 12, lo, hi };
}
function niceTicks(lo, hi, n) {
  const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
  const step = (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * mag, out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi; v += step) out.push(v);
  return out;
}
function drawChart() {
  const svg = $("chart"); svg.innerHTML = "";
  const g = geometry(); S.geo = g;
  svg.setAttribute("viewBox", `0 0 ${g.W} ${g.H}`);
  const axes = el("g", {}, svg), sel = el("g", {}, svg), candles = el("g", {}, svg), marks = el("g", {}, svg);
  const hits = el("g", {}, svg);
  S.layers = { sel, marks };
  const right = g.W - g.m.r;
  for (const v of niceTicks(g.lo, g.hi, 6)) {
    const y = g.y(v);
    el("line", { x1: g.m.l, x2: right, y1: y, y2: y, stroke: "#eef0f3" }, axes);
    el("text", { x: right + 8, y: y + 4, fill: "#6b7280", "font-size": 12 }, axes).textContent = fmt(v);
  }
  el("line", { x1: g.m.l, x2: right, y1: g.vy + g.vh, y2: g.vy + g.vh, stroke: "#d1d5db" }, axes);
  el("text", { x: right + 8, y: g.vy + 12, fill: "#9ca3af", "font-size": 11 }, axes).textContent = "volume";
  let month = null;
  S.win.days.forEach((d, i) => {
    const mo = d.slice(0, 7);
    if (mo !== month) {
      if (month !== null && g.x(i) < right - 28) {  // no month name under the price axis
        const x = g.x(i);
        el("line", { x1: x, x2: x, y1: g.m.t, y2: g.vy + g.vh, stroke: "#f1f2f4" }, axes);
        const name = new Date(d + "T00:00:00Z").toLocaleString("en", { month: "short", timeZone: "UTC" });
        el("text", { x: x + 3, y: g.H - 8, fill: "#6b7280", "font-size": 12 }, axes).textContent =
          d.slice(5, 7) === "01" ? `${name} ${d.slice(0, 4)}` : name;
      }
      month = mo;
    }
  });
  el("text", { x: g.m.l, y: g.H - 8, fill: "#6b7280", "font-size": 12 }, axes).textContent = S.win.days[0];
  const bodyW = Math.max(1, g.bw * 0.66);
  S.win.bars.forEach(([o, h, l, c, v], i) => {
    const cx = g.x(i) + g.bw / 2, up = c >= o, col = up ? "var(--up)" : "var(--down)";
    el("line", { x1: cx, x2: cx, y1: g.y(h), y2: g.y(l), stroke: col, "stroke-width": 1 }, candles);
    const top = g.y(Math.max(o, c)), hgt = Math.max(1, g.y(Math.min(o, c)) - top);
    el("rect", { x: cx - bodyW / 2, y: top, width: bodyW, height: hgt, fill: col }, candles);
    if (g.vmax > 0) {
      const vh = (v || 0) / g.vmax * g.vh;
      el("rect", { x: cx - bodyW / 2, y: g.vy + g.vh - vh, width: bodyW, height: vh, fill: col,
                   opacity: 0.35 }, candles);
    }
    const hit = el("rect", { x: g.x(i), y: g.m.t, width: g.bw + 0.01, height: g.vy + g.vh - g.m.t,
                             fill: "transparent", class: "hit", "data-bar": i }, hits);
    hit.addEventListener("mouseenter", () => { S.hover = i; readout(i); drawSelection(); });
    hit.addEventListener("click", () => onBar(i));
  });
  svg.onmouseleave = () => { S.hover = null; readout(null); drawSelection(); };
  drawSelection();
}
function readout(i) {
  if (i === null || !S.win) { $("readout").textContent = ""; return; }
  const [o, h, l, c, v] = S.win.bars[i];
  $("readout").textContent = `bar ${i} · ${S.win.days[i]}   O ${fmt(o)}  H ${fmt(h)}  L ${fmt(l)}  `
                             + `C ${fmt(c)}  V ${vol(v || 0)}`;
}
function drawSelection() {
  if (!S.layers || !S.win) return;
  const g = S.geo, { sel, marks } = S.layers;
  sel.innerHTML = ""; marks.innerHTML = "";
  const bottom = g.vy + g.vh, col = S.cls ? classColor(S.cls) : "#64748b";
  if (S.hover !== null) {
    const cx = g.x(S.hover) + g.bw / 2;
    el("line", { x1: cx, x2: cx, y1: g.m.t, y2: bottom, stroke: "#94a3b8", "stroke-dasharray": "3 3" },
       marks);
  }
  if (S.start === null) return;
  const other = S.end !== null ? S.end : (S.hover !== null ? S.hover : S.start);
  const a = Math.min(S.start, other), b = Math.max(S.start, other);
  el("rect", { x: g.x(a), y: g.m.t, width: g.x(b + 1) - g.x(a), height: bottom - g.m.t, fill: col,
               opacity: S.end !== null ? 0.16 : 0.08 }, sel);
  const edge = (i, name) => {
    const x = g.x(i) + g.bw / 2;
    el("line", { x1: x, x2: x, y1: g.m.t - 4, y2: bottom, stroke: col, "stroke-width": 2 }, marks);
    const t = el("text", { x, y: g.m.t - 8, fill: col, "font-size": 12, "font-weight": 600,
                           "text-anchor": "middle" }, marks);
    t.textContent = name;
  };
  edge(a, "start");
  if (S.end !== null) edge(b, "end");
}

// ------------------------------------------------------------------ wiring
$("save").onclick = save; $("skip").onclick = skip; $("undo").onclick = undo;
$("clear").onclick = () => { clearSel(); renderPanel(); drawSelection(); };
document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || !S.state) return;
  const k = e.key, n = Number(k);
  if (Number.isInteger(n) && n >= 1 && n <= S.state.classes.length) setClass(S.state.classes[n - 1]);
  else if (k === "Enter") save();
  else if (k === "s" || k === "S") skip();
  else if (k === "u" || k === "U") undo();
  else if (k === "Escape") { clearSel(); renderPanel(); drawSelection(); }
  else return;
  e.preventDefault();
});
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => S.win && drawChart(), 80);
});
refresh().catch((e) => toast("Could not reach the labeling server: " + e.message, "err"));
</script>
</body>
</html>
"""
