// nemo_frames explorer front end: plain DOM, no framework. Every list is one page asked of the server.
"use strict";
const $ = (s) => document.querySelector(s);
const esc = (v) => (v === null || v === undefined ? "" : String(v)).replace(/[&<>"']/g,
  (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toPrecision(4)) : esc(v));
const state = {meta: null, offset: 0, limit: 48, chosen: {}, loaded: {}, seq: 0, quantiles: [], ranges: []};
window.nfState = state;  // for tests and the curious

async function api(path) {
  const r = await fetch(path);
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (e) { /* not JSON */ }
    throw new Error(path + ": " + msg);
  }
  return (r.headers.get("Content-Type") || "").startsWith("application/json") ? r.json() : r.text();
}

function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

function card(r, extra) {
  const cls = ["card", r.nf_status || "ok"].concat(extra && extra.cls ? [extra.cls] : []).join(" ");
  const lines = (extra && extra.lines) || [r.nf_reason || r.nf_error || r.caption || ""];
  const img = r.nf_row === null || r.nf_row === undefined ? "" :
    `<img loading="lazy" alt="${esc(r.key)}" src="/api/thumb/${r.nf_row}?px=160">`;
  return `<div class="${cls}" data-row="${esc(r.nf_row)}" title="${esc(r.key)}">${img}` +
    `<div class="k">${extra && extra.badge ? extra.badge : ""}${esc(r.key)}</div>` +
    lines.map((l) => `<div class="s">${esc(l)}</div>`).join("") + "</div>";
}

function fillSelect(sel, items, label) {
  for (const it of items) {
    const o = document.createElement("option");
    o.value = it.name; o.textContent = label ? label(it) : it.name;
    sel.appendChild(o);
  }
}

// ------------------------------------------------------------------ samples
function query() {
  const p = new URLSearchParams();
  for (const [id, k] of [["#f-status", "status"], ["#f-reason", "reason"], ["#f-error", "error"], ["#f-text", "q"],
    ["#f-sort", "sort"]]) { const v = $(id).value; if (v) p.set(k, v); }
  if ($("#f-desc").checked) p.set("desc", "1");
  for (const r of state.ranges) p.append("range", `${r.col}:${r.lo}:${r.hi}`);
  const col = $("#f-range-col").value;
  if (col && ($("#f-range-lo").value !== "" || $("#f-range-hi").value !== ""))
    p.append("range", `${col}:${$("#f-range-lo").value}:${$("#f-range-hi").value}`);
  p.set("offset", state.offset); p.set("limit", state.limit);
  return p;
}

async function loadGrid() {
  const seq = ++state.seq;
  const res = await api("/api/samples?" + query());
  if (seq !== state.seq) return;  // a newer request superseded this one
  $("#total").textContent = res.total.toLocaleString();
  $("#page").textContent = res.total ? `${state.offset + 1}–${state.offset + res.rows.length}` : "";
  const sort = $("#f-sort").value;
  $("#grid").innerHTML = res.rows.map((r) => card(r, sort && r[sort] !== undefined ?
    {lines: [`${sort}=${fmt(r[sort])}`, r.nf_reason || r.nf_error || r.caption || ""]} : null)).join("") ||
    "<p>no samples match</p>";
  $("#grid").dataset.total = res.total;
  $("#grid").dataset.loaded = String(seq);
}

function drawRanges() {
  $("#f-ranges").innerHTML = state.ranges.map((r, i) =>
    `<span class="chip" data-i="${i}">${esc(r.lo)} ≤ ${esc(r.col)} ≤ ${esc(r.hi)} <button data-drop="${i}">✕</button></span>`).join("");
}

function addRange() {
  const col = $("#f-range-col").value, lo = $("#f-range-lo").value, hi = $("#f-range-hi").value;
  if (!col || (lo === "" && hi === "")) return;
  state.ranges = state.ranges.filter((r) => r.col !== col).concat([{col, lo, hi}]);
  $("#f-range-col").value = ""; $("#f-range-lo").value = ""; $("#f-range-hi").value = "";
  drawRanges(); resetAndLoad();
}

function resetAndLoad() { state.offset = 0; loadGrid().catch(report); }

// ------------------------------------------------------------------ detail
async function openDetail(row) {
  const d = await api(`/api/sample/${row}`);
  const r = d.row;
  $("#detail-title").textContent = r.key;
  $("#detail-img").src = `/api/image/${row}`;
  $("#detail-caption").textContent = r.caption || "";
  $("#detail-ledger").innerHTML = `<b>${esc(r.nf_status)}</b> ${esc(r.nf_reason || r.nf_error || "")}`;
  $("#detail-cols").innerHTML = Object.entries(r).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${fmt(v)}</td></tr>`).join("");
  $("#detail-sidecar").textContent = d.sidecar ? JSON.stringify(d.sidecar, null, 1) : (d.sidecar_error || "none");
  $("#detail-groups").innerHTML = d.groups.map((g) =>
    `<div class="group" data-group="${esc(g.group_id)}"><div class="label">${esc(g.method)} duplicate group ` +
    `${esc(g.group_id)} (${g.members.length} members; similarity to the matched key, and to this sample where the ` +
    `run has what it needs: pHash for perceptual)</div><div class="grid">` +
    g.members.map((m) => card({...m, nf_status: m.is_survivor ? "ok" : "filtered"}, {
      cls: m.is_survivor ? "survivor" : "dup",
      badge: m.is_survivor ? '<span class="badge">survivor</span> ' : '<span class="badge dup">removed</span> ',
      lines: [m.is_survivor ? "kept" : `dup of ${m.matched_key}`, `similarity ${fmt(m.max_similarity)}`].concat(
        m.similarity_to_this !== undefined && m.similarity_to_this !== null ? [`to this one ${fmt(m.similarity_to_this)}`] : [])
    })).join("") +
    "</div></div>").join("");
  $("#detail").classList.remove("hidden");
  $("#detail").dataset.row = String(row);
}

// ------------------------------------------------------------------ thresholds
function thresholdColumns() {
  const cols = state.meta.numeric || [];
  const byName = Object.fromEntries(cols.map((c) => [c.name, c]));
  const fromFilters = (state.meta.filters || []).filter((f) => byName[f.column]);
  const seen = new Set();
  const out = [];
  for (const f of fromFilters) { if (!seen.has(f.column)) { seen.add(f.column); out.push({...byName[f.column], op: f.op, value: f.value, filter: f.name}); } }
  for (const c of cols) if (!seen.has(c.name)) out.push({...c, op: ">=", value: c.min});
  return out;
}

// The slider moves through the column's quantiles (0 … 100 %), so a long-tailed score is as easy to
// scan as a uniform one; the number field holds the value itself.
function sliderToValue(pos) {
  const q = state.quantiles, i = Math.floor(pos), f = pos - i;
  return i >= q.length - 1 ? q[q.length - 1] : q[i] + f * (q[i + 1] - q[i]);
}

function valueToSlider(v) {
  const q = state.quantiles;
  if (!q.length || v <= q[0]) return 0;
  for (let i = 1; i < q.length; i++) {
    if (v <= q[i]) return i - 1 + (q[i] > q[i - 1] ? (v - q[i - 1]) / (q[i] - q[i - 1]) : 1);
  }
  return q.length - 1;
}

async function selectThresholdColumn() {
  const c = state.tcols.find((x) => x.name === $("#t-col").value);
  if (!c) return;
  state.quantiles = (await api("/api/quantiles?column=" + encodeURIComponent(c.name))).quantiles;
  const chosen = state.chosen[c.name];
  $("#t-op").value = chosen ? chosen.op : c.op;
  const s = $("#t-slider");
  s.min = 0; s.max = Math.max(state.quantiles.length - 1, 1); s.step = 0.1;
  const v = chosen ? chosen.value : c.value;
  s.value = valueToSlider(v); $("#t-value").value = v;
  await loadWhatIf();
}

async function loadWhatIf() {
  const p = new URLSearchParams({column: $("#t-col").value, op: $("#t-op").value, value: $("#t-value").value, k: 12});
  const seq = ++state.seq;
  const w = await api("/api/whatif?" + p);
  if (seq !== state.seq) return;
  $("#t-keep").textContent = w.keep.toLocaleString();
  $("#t-remove").textContent = w.remove.toLocaleString();
  $("#t-scope").textContent = w.scope.toLocaleString();
  $("#t-run").textContent = w.run_keep === null ? "—" : w.run_keep.toLocaleString();
  $("#t-run-label").textContent = "the run would keep, with its other filters" +
    (w.run_kept_now !== null && w.run_kept_now !== undefined ? ` (now ${w.run_kept_now.toLocaleString()})` : "");
  const line = (r) => ({lines: [`${w.column}=${fmt(r[w.column])}`, r.nf_reason || ""]});
  $("#t-kept").innerHTML = w.kept_nearest.map((r) => card(r, line(r))).join("") || "<p>none</p>";
  $("#t-removed").innerHTML = w.removed_nearest.map((r) => card(r, line(r))).join("") || "<p>none</p>";
  $("#t-keep").dataset.value = String(w.value);
}

async function loadFragment() {
  const specs = Object.values(state.chosen);
  $("#t-yaml").textContent = specs.length ? await api("/api/fragment?t=" + encodeURIComponent(JSON.stringify(specs))) :
    "# move a threshold and press “use this threshold”";
}

// ------------------------------------------------------------------ duplicates and sweep
async function loadDups() {
  const cols = await Promise.all(state.meta.dup_methods.map((m) => api(`/api/dups?method=${encodeURIComponent(m)}&limit=20`)));
  $("#d-columns").innerHTML = cols.map((c) => `<div class="method" data-method="${esc(c.method)}"><h3>${esc(c.method)}: ` +
    `${c.total} groups, largest first</h3>` + c.groups.map((g) =>
      `<div class="group" data-group="${esc(g.group_id)}"><div class="label">group ${esc(g.group_id)}: ${g.size} images, ` +
      `min similarity ${fmt(g.min_similarity)}</div><div class="grid">` + g.members.map((m) =>
        card({...m, nf_status: m.is_survivor ? "ok" : "filtered"}, {cls: m.is_survivor ? "survivor" : "",
          badge: m.is_survivor ? '<span class="badge">survivor</span> ' : "",
          lines: [m.is_survivor ? "kept" : `sim ${fmt(m.max_similarity)}`]})).join("") + "</div></div>").join("") +
    "</div>").join("") || "<p>this run has no duplicate tables</p>";
}

function sweepSvg(rows, y, mark) {
  const W = 460, H = 230, ml = 50, mr = 14, mt = 16, mb = 36, pw = W - ml - mr, ph = H - mt - mb;
  if (!rows.length) return "<p>no sweep rows</p>";
  const xs = rows.map((r) => r.eps), ys = rows.map((r) => r[y] || 0);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) > x0 ? Math.max(...xs) : x0 + 1, y1 = Math.max(...ys, 1e-9);
  const px = (a) => ml + (a - x0) / (x1 - x0) * pw, py = (b) => mt + ph - b / y1 * ph;
  let s = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-size="10" font-family="sans-serif">`;
  s += `<line x1="${ml}" y1="${mt + ph}" x2="${ml + pw}" y2="${mt + ph}" stroke="#333"/><line x1="${ml}" y1="${mt}" x2="${ml}" y2="${mt + ph}" stroke="#333"/>`;
  s += `<polyline fill="none" stroke="#1f3a5f" stroke-width="2" points="${rows.map((r, i) => `${px(xs[i])},${py(ys[i])}`).join(" ")}"/>`;
  rows.forEach((r, i) => { s += `<circle cx="${px(xs[i])}" cy="${py(ys[i])}" r="3" fill="#1f3a5f"><title>eps ${xs[i]}: ${fmt(ys[i])}</title></circle>` +
    `<text x="${px(xs[i])}" y="${mt + ph + 13}" text-anchor="middle">${xs[i]}</text>`; });
  if (mark !== null && mark !== undefined) s += `<line x1="${px(mark)}" y1="${mt}" x2="${px(mark)}" y2="${mt + ph}" stroke="#d0342c" stroke-dasharray="5,3"/>`;
  s += `<text x="${ml - 4}" y="${mt + 8}" text-anchor="end">${fmt(y1)}</text><text x="${ml + pw / 2}" y="${H - 4}" text-anchor="middle">eps (${esc(y)})</text></svg>`;
  return s;
}

async function loadSweep() {
  const s = await api("/api/sweep");
  $("#s-chart").innerHTML = sweepSvg(s.rows, s.y, s.eps);
  $("#s-galleries").innerHTML = s.galleries.map((g) => `<h3>eps ${g.eps}: pairs that join at this eps</h3>` +
    (g.covered ? `<div class="grid">${g.pairs.map((p) => card({...p, nf_status: "filtered"},
      {lines: [`dup of ${p.matched_key}`, `cosine ${fmt(p.max_similarity)}`]})).join("") || "<p>none</p>"}</div>` :
      `<p class="note">above this run's eps (${s.eps}): its pairs were not kept; rerun with a larger eps to see them</p>`)).join("");
}

// ------------------------------------------------------------------ documents
async function loadDocs() {
  const q = $("#doc-search").value;
  const d = await api("/api/docs?limit=200" + (q ? "&q=" + encodeURIComponent(q) : ""));
  $("#doc-list").innerHTML = `<p>${d.total} documents (with drops first)</p>` + d.docs.map((x) =>
    `<div data-doc="${esc(x.sample_id)}">${esc(x.sample_id)} — ${x.texts} texts, ${x.images} images` +
    (x.dropped ? `, <span class="why">${x.dropped} dropped</span>` : "") + "</div>").join("");
  if (d.docs.length && !q) openDoc(d.docs[0].sample_id).catch(report);
}

async function openDoc(id) {
  const d = await api("/api/doc?id=" + encodeURIComponent(id));
  document.querySelectorAll("#doc-list div[data-doc]").forEach((e) => e.classList.toggle("on", e.dataset.doc === id));
  $("#doc-view").innerHTML = `<h3>${esc(d.sample_id)}</h3>` + d.items.map((it) => {
    const dropped = it.nf_status !== "ok";
    const cls = ["item", it.modality, dropped ? "dropped" : "", it.nf_status === "error" ? "error" : ""].join(" ");
    const why = dropped ? `<div class="why">dropped: ${esc(it.nf_reason || it.nf_error || it.nf_status)}</div>` : "";
    let body = "";
    if (it.modality === "text") body = `<p>${esc(it.text_content)}</p>`;
    else if (it.modality === "image") body = `<img alt="image at ${esc(it.nf_input_position)}" src="/api/item_image/${it.nf_row}?px=320">`;
    else body = `<small>metadata</small><table class="t">` + Object.entries(d.fields || {}).map(([k, v]) =>
      `<tr><td>${esc(k)}</td><td>${fmt(v)}</td></tr>`).join("") + "</table>";
    return `<div class="${cls}" data-row="${it.nf_row}">${why}${body}</div>`;
  }).join("");
  $("#doc-view").dataset.doc = id;
}

// ------------------------------------------------------------------ wiring
function report(err) { console.error(String(err)); const n = document.createElement("div"); n.className = "note"; n.textContent = String(err.message || err); $("main").prepend(n); }

function showTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("on", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((t) => t.classList.toggle("on", t.id === "tab-" + name));
  if (state.loaded[name]) return;
  state.loaded[name] = true;
  const load = {thresholds: () => Promise.all([selectThresholdColumn(), loadFragment()]), dups: loadDups, sweep: loadSweep, docs: loadDocs}[name];
  if (load) Promise.resolve(load()).catch(report);
}

async function init() {
  const m = state.meta = await api("/api/meta");
  $("#run").textContent = m.run_dir;
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  for (const [tab, ok] of [["samples", m.has_samples], ["thresholds", m.has_samples], ["dups", m.dup_methods.length],
    ["sweep", m.sweep], ["docs", m.has_items]]) document.querySelector(`nav button[data-tab=${tab}]`).classList.toggle("hidden", !ok);
  if (m.has_samples) {
    $("#counts").textContent = Object.entries(m.counts).map(([k, v]) => `${k} ${v}`).join(" · ") + " —";
    fillSelect($("#f-reason"), m.reasons, (r) => `${r.name} (${r.n})`);
    fillSelect($("#f-error"), m.errors, (r) => `${r.name} (${r.n})`);
    fillSelect($("#f-range-col"), m.numeric);
    fillSelect($("#f-sort"), m.numeric);
    state.tcols = thresholdColumns();
    fillSelect($("#t-col"), state.tcols, (c) => c.filter ? `${c.name} (filter ${c.filter})` : c.name);
  }
  for (const id of ["#f-status", "#f-reason", "#f-error", "#f-sort", "#f-desc", "#f-range-col"]) $(id).addEventListener("change", resetAndLoad);
  for (const id of ["#f-text", "#f-range-lo", "#f-range-hi"]) $(id).addEventListener("input", debounce(resetAndLoad, 200));
  $("#f-range-add").addEventListener("click", addRange);
  $("#f-ranges").addEventListener("click", (e) => {
    const i = e.target.dataset.drop;
    if (i !== undefined) { state.ranges.splice(Number(i), 1); drawRanges(); resetAndLoad(); }
  });
  $("#doc-search").addEventListener("input", debounce(() => loadDocs().catch(report), 200));
  $("#prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadGrid().catch(report); });
  $("#next").addEventListener("click", () => { if (state.offset + state.limit < Number($("#grid").dataset.total || 0)) { state.offset += state.limit; loadGrid().catch(report); } });
  document.addEventListener("click", (e) => {
    const c = e.target.closest(".card[data-row]");
    if (c && c.dataset.row !== "" && c.dataset.row !== "undefined" && c.dataset.row !== "null") openDetail(c.dataset.row).catch(report);
    const d = e.target.closest("#doc-list div[data-doc]");
    if (d) openDoc(d.dataset.doc).catch(report);
  });
  $("#detail-close").addEventListener("click", () => $("#detail").classList.add("hidden"));
  $("#detail").addEventListener("click", (e) => { if (e.target.id === "detail") $("#detail").classList.add("hidden"); });
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") $("#detail").classList.add("hidden"); });
  $("#t-col").addEventListener("change", () => selectThresholdColumn().catch(report));
  $("#t-op").addEventListener("change", () => loadWhatIf().catch(report));
  $("#t-slider").addEventListener("input", debounce(() => {
    $("#t-value").value = Number(sliderToValue(Number($("#t-slider").value)).toPrecision(5)); loadWhatIf().catch(report); }, 60));
  $("#t-value").addEventListener("input", debounce(() => { $("#t-slider").value = valueToSlider(Number($("#t-value").value)); loadWhatIf().catch(report); }, 150));
  $("#t-add").addEventListener("click", () => {
    const c = state.tcols.find((x) => x.name === $("#t-col").value);
    state.chosen[c.name] = {column: c.name, op: $("#t-op").value, value: Number($("#t-value").value), name: c.filter || c.name};
    loadFragment().catch(report);
  });
  if (m.has_samples) { state.loaded.samples = true; await loadGrid(); }
  else showTab("docs");
  document.body.dataset.ready = "1";
}

init().catch(report);
