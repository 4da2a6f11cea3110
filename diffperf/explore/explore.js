// diffperf explorer: controls -> GET /api/<mode>?<CLI flags> -> numbers and SVG charts.
"use strict";

const FIELDS = {
  train: [
    ["gpus", "GPUs", 8], ["tp", "TP", 8], ["pp", "PP", 1], ["cp", "CP", 1],
    ["ep", "EP", 1], ["microbatch", "microbatch", 1], ["global_batch", "global batch", 16],
    ["seq_len", "sequence length", ""],
    ["recompute", "recompute", "none", ["none", "selective", "full"]],
    ["zero", "ZeRO", "1", ["0", "1", "2", "3"]],
    ["dtype", "dtype", "bf16", ["bf16", "fp16", "fp8", "fp4"]],
  ],
  infer: [
    ["gpus", "GPUs", 8], ["tp", "TP", 8], ["pp", "PP", 1], ["ep", "EP", 1],
    ["batch", "batch", 16], ["input_len", "input tokens", 1024],
    ["output_len", "output tokens", 128],
    ["dtype", "dtype", "bf16", ["bf16", "fp8", "int4"]],
    ["kv_dtype", "KV dtype", "", ["", "bf16", "fp8"]],
  ],
};
const COLORS = ["#3b6ea8", "#e07b39", "#5a9e5f", "#c8524e", "#8f6bb3", "#8c6d5a",
  "#d17ab8", "#7f8c8d", "#b5b23a", "#3aa6b5", "#27496d", "#a05a2c"];

const state = { mode: "train", leaves: [], offsets: {}, seq: 0, timer: null };
const $ = (id) => document.getElementById(id);

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1e-3) return (s * 1e6).toPrecision(4) + " µs";
  if (s < 1) return (s * 1e3).toPrecision(4) + " ms";
  return s.toPrecision(4) + " s";
}
function fmtSI(x, unit) {
  const p = [[1e15, "P"], [1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [v, s] of p) if (Math.abs(x) >= v) return (x / v).toPrecision(3) + " " + s + unit;
  if (Math.abs(x) > 0 && Math.abs(x) < 1e-3) return (x * 1e6).toPrecision(3) + " µ" + unit;
  return x.toPrecision(3) + " " + unit;
}
const UNITS = { flops: "FLOP/s", bandwidth: "B/s", capacity: "B", overhead: "s" };
function unitOf(path) {
  for (const [k, u] of Object.entries(UNITS)) if (path.includes(k)) return u;
  return "";
}

function el(tag, attrs = {}, text) {
  const ns = ["svg", "rect", "text", "line", "circle", "g", "title"].includes(tag)
    ? "http://www.w3.org/2000/svg" : null;
  const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function buildFields() {
  const box = $("job-fields");
  box.replaceChildren();
  const params = new URLSearchParams(location.search);
  for (const [name, label, dflt, choices] of FIELDS[state.mode]) {
    const init = params.get(name) ?? String(dflt);
    let input;
    if (choices) {
      input = el("select", { id: "f-" + name, name });
      for (const c of choices) input.append(el("option", { value: c }, c || "same"));
    } else {
      input = el("input", { id: "f-" + name, name, type: "number", min: "1", step: "1" });
    }
    input.value = init;
    input.addEventListener("change", schedule);
    const lab = el("label", {}, label + " ");
    lab.append(input);
    box.append(lab);
  }
}

async function getJSON(url, signal) {
  const r = await fetch(url, { signal });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

async function loadOptions() {
  const opts = await getJSON("/api/options");
  const params = new URLSearchParams(location.search);
  for (const [id, items, dflt] of [["hardware", opts.hardware, "dgx_h100"],
    ["model", opts.models, "llama3_8b"]]) {
    const sel = $(id);
    for (const [k, v] of Object.entries(items)) sel.append(el("option", { value: k }, `${k} (${v})`));
    sel.value = params.get(id) || dflt;
  }
  $("hardware").addEventListener("change", async () => { await loadLeaves(); schedule(); });
  $("model").addEventListener("change", schedule);
}

async function loadLeaves() {
  const out = await getJSON("/api/leaves?hardware=" + encodeURIComponent($("hardware").value));
  state.leaves = out.leaves;
  state.offsets = {};
  const box = $("sliders");
  box.replaceChildren();
  for (const leaf of out.leaves) {
    const id = "s-" + leaf.path.replaceAll(".", "-");
    const wrap = el("div", { class: "slider" });
    const name = el("div", { class: "name" });
    const shown = el("span", { id: id + "-value" }, fmtSI(leaf.value, unitOf(leaf.path)));
    name.append(el("span", {}, leaf.path), shown);
    // log2 of the factor on the datasheet value: 1/4x .. 4x
    const input = el("input", { id, type: "range", min: "-2", max: "2", step: "0.1",
      value: "0", "aria-label": leaf.path });
    input.addEventListener("input", () => {
      state.offsets[leaf.path] = Number(input.value);
      shown.textContent = fmtSI(leafValue(leaf), unitOf(leaf.path)) +
        (Number(input.value) ? ` (×${(2 ** Number(input.value)).toPrecision(3)})` : "");
      schedule();
    });
    wrap.append(name, input);
    box.append(wrap);
  }
}

function leafValue(leaf) {
  return leaf.value * 2 ** (state.offsets[leaf.path] || 0);
}

function query() {
  const q = new URLSearchParams();
  q.set("hardware", $("hardware").value);
  q.set("model", $("model").value);
  for (const [name] of FIELDS[state.mode]) {
    const v = $("f-" + name).value;
    if (v !== "") q.set(name, v);
  }
  for (const leaf of state.leaves) {
    if (state.offsets[leaf.path]) q.append("set", `${leaf.path}=${leafValue(leaf).toPrecision(6)}`);
  }
  return q.toString();
}

function schedule() {
  clearTimeout(state.timer);
  state.timer = setTimeout(update, 120);
}

let controller = null;
async function update() {
  if (controller) controller.abort();
  controller = new AbortController();
  const signal = controller.signal;
  const seq = ++state.seq;
  const q = query();
  $("status").textContent = "computing…";
  $("elasticities").classList.add("pending");
  $("pareto").classList.add("pending");
  try {
    const out = await getJSON(`/api/${state.mode}?${q}`, signal);
    if (seq !== state.seq) return;
    $("error").textContent = "";
    renderMain(out, q);
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
    const metric = state.mode === "train" ? "" : "&metric=tpot";
    const sens = await getJSON(`/api/sensitivity?job=${state.mode}&top=8${metric}&${q}`, signal);
    if (seq !== state.seq) return;
    renderElasticities(sens);
    const sweep = await getJSON(`/api/sweep?job=${state.mode}&${q}`, signal);
    if (seq !== state.seq) return;
    renderPareto(sweep);
  } catch (e) {
    if (e.name === "AbortError") return;
    if (seq === state.seq) { $("error").textContent = e.message; $("status").textContent = ""; }
  }
}

function renderMain(out, q) {
  const main = $("metric-main");
  main.dataset.query = q;
  if (state.mode === "train") {
    $("metric-label").textContent = "step time";
    main.dataset.value = String(out.step_time_s);
    main.textContent = fmtSeconds(out.step_time_s);
    $("metric2-label").textContent = "MFU";
    $("metric-2").textContent = (100 * out.mfu).toFixed(1) + " %";
    $("metric3-label").textContent = "tokens/s/GPU";
    $("metric-3").textContent = out.tokens_per_s_per_gpu.toPrecision(4);
    drawBars($("breakdown"), [["step", out.breakdown]], out.step_time_s);
  } else {
    $("metric-label").textContent = "TTFT";
    main.dataset.value = String(out.ttft_s);
    main.textContent = fmtSeconds(out.ttft_s);
    $("metric2-label").textContent = "TPOT";
    $("metric-2").textContent = fmtSeconds(out.tpot_s);
    $("metric3-label").textContent = "output tokens/s/GPU";
    $("metric-3").textContent = out.output_tokens_per_s_per_gpu.toPrecision(4);
    drawBars($("breakdown"), [["prefill", out.breakdown.prefill],
      ["decode step", out.breakdown.decode_step]], null);
  }
  drawMemory(out.memory_per_gpu_bytes, out.memory_capacity_bytes, out.feasible);
}

function drawMemory(used, cap, fits) {
  const W = 640, H = 34, svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const frac = Math.min(used / cap, 1.5);
  svg.append(el("rect", { x: 0, y: 4, width: W * 2 / 3, height: 16, fill: "#e8ecf1" }));
  svg.append(el("rect", { x: 0, y: 4, width: (W * 2 / 3) * Math.min(frac, 1.5) / 1,
    height: 16, fill: fits ? "#5a9e5f" : "#c8524e" }));
  svg.append(el("line", { x1: W * 2 / 3, x2: W * 2 / 3, y1: 0, y2: 24, stroke: "#33475f" }));
  svg.append(el("text", { x: 4, y: 32 },
    `${(used / 1e9).toFixed(1)} GB of ${(cap / 1e9).toFixed(0)} GB — ${fits ? "fits" : "does not fit"}`));
  $("memory").replaceChildren(svg);
}

function drawBars(box, rows, total) {
  const W = 640, rowH = 26, names = [];
  for (const [, terms] of rows) {
    for (const [k, v] of Object.entries(terms)) if (v > 0 && !names.includes(k)) names.push(k);
  }
  const legendRows = Math.ceil(names.length / 4);
  const H = rows.length * rowH + 8 + legendRows * 16;
  const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  rows.forEach(([label, terms], r) => {
    const sum = Object.values(terms).reduce((a, b) => a + Math.max(b, 0), 0) || 1;
    let x = 90;
    svg.append(el("text", { x: 0, y: r * rowH + 16 }, label));
    for (const name of names) {
      const v = Math.max(terms[name] || 0, 0), w = (W - 100) * v / sum;
      if (w <= 0) continue;
      const rect = el("rect", { x, y: r * rowH + 4, width: w, height: 18,
        fill: COLORS[names.indexOf(name) % COLORS.length] });
      rect.append(el("title", {}, `${name}: ${fmtSeconds(v)} (${(100 * v / sum).toFixed(1)} %)`));
      svg.append(rect);
      x += w;
    }
  });
  names.forEach((name, i) => {
    const x = (i % 4) * 160, y = rows.length * rowH + 8 + Math.floor(i / 4) * 16;
    svg.append(el("rect", { x, y, width: 10, height: 10, fill: COLORS[i % COLORS.length] }));
    svg.append(el("text", { x: x + 14, y: y + 9 }, name));
  });
  box.replaceChildren(svg);
  if (total !== null) box.title = "total " + fmtSeconds(total);
}

function renderElasticities(out) {
  const rows = out.top, W = 420, rowH = 18, H = rows.length * rowH + 20;
  const max = Math.max(...rows.map((r) => Math.abs(r.elasticity)), 1e-9);
  const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const mid = 300;
  rows.forEach((r, i) => {
    const w = 110 * Math.abs(r.elasticity) / max, y = i * rowH + 4;
    svg.append(el("text", { x: 0, y: y + 11 }, r.leaf.replace("hardware.", "").slice(0, 40)));
    svg.append(el("rect", { x: r.elasticity < 0 ? mid - w : mid, y, width: w, height: 13,
      fill: r.elasticity < 0 ? "#3b6ea8" : "#e07b39" }));
    svg.append(el("text", { x: mid + (r.elasticity < 0 ? 4 : -44), y: y + 11 },
      r.elasticity.toFixed(2)));
  });
  svg.append(el("text", { x: 0, y: H - 2 }, `binding: ${out.binding_resource.leaf}`));
  $("elasticities").replaceChildren(svg);
  $("elasticities").classList.remove("pending");
}

function renderPareto(out) {
  const W = 420, H = 260, pad = 44;
  const pts = out.points.filter((p) => p.feasible && p[out.x] > 0 && p[out.y] > 0);
  $("pareto-axes").textContent = `${out.x} vs ${out.y}`;
  const svg = el("svg", { width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!pts.length) {
    svg.append(el("text", { x: 10, y: 20 }, "no feasible configuration"));
    $("pareto").replaceChildren(svg);
    $("pareto").classList.remove("pending");
    return;
  }
  const lx = pts.map((p) => Math.log10(p[out.x])), ly = pts.map((p) => Math.log10(p[out.y]));
  const [x0, x1] = [Math.min(...lx), Math.max(...lx) + 1e-9];
  const [y0, y1] = [Math.min(...ly), Math.max(...ly) + 1e-9];
  const sx = (v) => pad + (W - pad - 10) * (Math.log10(v) - x0) / (x1 - x0);
  const sy = (v) => H - pad + 10 - (H - pad - 10) * (Math.log10(v) - y0) / (y1 - y0);
  svg.append(el("line", { x1: pad, x2: W - 10, y1: H - pad + 10, y2: H - pad + 10, stroke: "#999" }));
  svg.append(el("line", { x1: pad, x2: pad, y1: 10, y2: H - pad + 10, stroke: "#999" }));
  svg.append(el("text", { x: pad, y: H - 8 }, out.x + " (log)"));
  svg.append(el("text", { x: 2, y: 12 }, out.y + " (log)"));
  const tick = (v) => Number(10 ** v).toPrecision(3);
  svg.append(el("text", { x: pad, y: H - pad + 24 }, tick(x0)));
  svg.append(el("text", { x: W - 50, y: H - pad + 24 }, tick(x1)));
  svg.append(el("text", { x: 2, y: H - pad + 10 }, tick(y0)));
  svg.append(el("text", { x: 2, y: 26 }, tick(y1)));
  const cur = currentKey();
  for (const p of pts) {
    const c = el("circle", { cx: sx(p[out.x]), cy: sy(p[out.y]), r: p.pareto ? 4 : 2.5,
      fill: p.pareto ? "#3b6ea8" : "#b8c2cc" });
    const label = Object.entries(p).filter(([k]) => !["feasible", "pareto"].includes(k))
      .map(([k, v]) => `${k}=${typeof v === "number" ? v.toPrecision(4) : v}`).join(" ");
    c.append(el("title", {}, label));
    svg.append(c);
    if (cur(p)) svg.append(el("circle", { cx: sx(p[out.x]), cy: sy(p[out.y]), r: 7,
      fill: "none", stroke: "#c8524e", "stroke-width": 2 }));
  }
  $("pareto").replaceChildren(svg);
  $("pareto").classList.remove("pending");
}

function currentKey() {
  const v = (n) => Number($("f-" + n).value);
  if (state.mode === "train") {
    return (p) => p.tp === v("tp") && p.pp === v("pp") && p.microbatch === v("microbatch");
  }
  return (p) => p.batch === v("batch");
}

function setMode(mode) {
  state.mode = mode;
  for (const b of document.querySelectorAll("#modes button")) {
    b.classList.toggle("active", b.dataset.mode === mode);
  }
  buildFields();
  schedule();
}

async function start() {
  const params = new URLSearchParams(location.search);
  state.mode = params.get("mode") === "infer" ? "infer" : "train";
  for (const b of document.querySelectorAll("#modes button")) {
    b.addEventListener("click", () => setMode(b.dataset.mode));
    b.classList.toggle("active", b.dataset.mode === state.mode);
  }
  $("reset").addEventListener("click", async () => { await loadLeaves(); schedule(); });
  try {
    await loadOptions();
    buildFields();
    await loadLeaves();
    update();
  } catch (e) {
    $("error").textContent = e.message;
  }
}

start();
