// ragserve console: plain JavaScript over the HTTP API, no build step, no external files.
"use strict";

const KEY_STORE = "ragserve-console-key";
const PAGES = ["collections", "search", "figures"];
const STATS_EVERY_MS = 2000;
let statsTimer = null;
let statsPolls = 0;

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c));
  return node;
}

function setStatus(text) { $("status").textContent = text; }

class ApiError extends Error {
  constructor(status, type, message) {
    super(message);
    this.status = status;
    this.type = type;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(method, path, body) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const err = data.error || {};
    if (r.status === 401) askForKey(err.message);
    throw new ApiError(r.status, err.type || "error", err.message || r.statusText);
  }
  return data;
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-error").textContent = sessionStorage.getItem(KEY_STORE) ? (message || "") : "";
  setStatus("API key needed");
  $("key").focus();
}

// ------------------------------------------------------------------ pages

function showPage() {
  const name = PAGES.includes(location.hash.slice(1)) ? location.hash.slice(1) : "collections";
  for (const p of PAGES) {
    $(`page-${p}`).hidden = p !== name;
    const link = $(`nav-${p}`);
    if (p === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${name[0].toUpperCase()}${name.slice(1)} · ragserve console`;
  if (name === "figures") startStats(); else stopStats();
  if (name !== "figures") loadCollections();
}

// ------------------------------------------------------------------ collections

async function loadCollections() {
  let data;
  try {
    data = await api("GET", "/v1/collections");
  } catch (e) {
    if (e.status !== 401) setStatus(`Could not list collections: ${e.message}`);
    return;
  }
  $("key-form").hidden = true;
  const body = $("collections-table").querySelector("tbody");
  body.replaceChildren();
  for (const c of data.collections) {
    body.append(el("tr", {},
      el("th", { scope: "row" }, c.name),
      el("td", { class: "num" }, c.documents),
      el("td", { class: "num" }, c.chunks),
      el("td", {}, c.embedder)));
  }
  $("collections-empty").hidden = data.collections.length > 0;
  for (const select of document.querySelectorAll(".collection-select")) {
    const keep = select.value;
    select.replaceChildren(...data.collections.map((c) => el("option", { value: c.name }, c.name)));
    if (data.collections.some((c) => c.name === keep)) select.value = keep;
  }
  setStatus(`${data.collections.length} collection(s)`);
}

async function createCollection(event) {
  event.preventDefault();
  const name = $("create-name").value.trim();
  try {
    const c = await api("POST", "/v1/collections", { name });
    $("create-result").textContent = `Created ${c.name} (${c.embedder}, ${c.dimension}-d).`;
    $("create-name").value = "";
    await loadCollections();
    for (const select of document.querySelectorAll(".collection-select")) select.value = c.name;
  } catch (e) {
    $("create-result").textContent = `Not created: ${e.message}`;
  }
}

function upload(event) {
  event.preventDefault();
  const name = $("upload-collection").value;
  const files = $("upload-files").files;
  if (!name || !files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const bar = $("upload-progress");
  const list = $("upload-results");
  bar.value = 0;
  list.replaceChildren(el("li", {}, `Uploading ${files.length} file(s)…`));
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `/v1/collections/${encodeURIComponent(name)}/documents`);
  for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
  };
  xhr.onload = () => {
    let data = {};
    try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
    if (xhr.status === 401) askForKey();
    list.replaceChildren();
    if (data.error) list.append(el("li", { class: "error" }, `${data.error.type}: ${data.error.message}`));
    for (const r of data.results || []) {
      const text = r.status === "failed" ? `${r.id}: failed: ${r.error}` : `${r.id}: ${r.status} (${r.chunks} chunks)`;
      list.append(el("li", { class: r.status === "failed" ? "error" : "" }, text));
    }
    bar.value = 100;
    setStatus(`Upload finished (HTTP ${xhr.status})`);
    loadCollections();
  };
  xhr.onerror = () => list.replaceChildren(el("li", { class: "error" }, "Upload failed: network error"));
  xhr.send(form);
}

// ------------------------------------------------------------------ search

// [start, end) ranges of the query's terms in a hit's text, from the server's highlights
// (passage offsets in the text, match offsets in the passage).
function markRanges(hit) {
  const ranges = [];
  for (const p of hit.highlights || []) {
    for (const [s, e] of p.matches) ranges.push([p.start + s, p.start + e]);
  }
  return ranges;
}

function highlighted(text, ranges) {
  const out = el("p", { class: "text" });
  ranges.sort((a, b) => a[0] - b[0]);
  let at = 0;
  for (const [s, e] of ranges) {
    if (s < at) continue;
    out.append(text.slice(at, s), el("mark", {}, text.slice(s, e)));
    at = e;
  }
  out.append(text.slice(at));
  return out;
}

const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");

function scores(hit) {
  const list = el("dl", { class: "scores" });
  const add = (label, value, cls) => list.append(el("div", { class: cls }, el("dt", {}, label), el("dd", {}, value)));
  add("score", fmt(hit.score, 4), "leg-score");
  const x = hit.explain;
  if (x) {
    add("dense", x.dense ? `${fmt(x.dense.score)} (#${x.dense.rank})` : "–", "leg-dense");
    add("BM25", x.lexical ? `${fmt(x.lexical.score)} (#${x.lexical.rank})` : "–", "leg-bm25");
    add("fused", x.fused ? `${fmt(x.fused.score, 4)} (#${x.fused.rank})` : "–", "leg-fused");
    add("rerank", x.rerank ? `${fmt(x.rerank.logit)} (#${x.rerank.rank})` : "–", "leg-rerank");
  }
  return list;
}

function timingChart(timings) {
  const stages = Object.entries(timings).filter(([k]) => k !== "total");
  const most = Math.max(...stages.map(([, v]) => v), 0.001);
  const bars = $("timings-bars");
  bars.replaceChildren();
  for (const [stage, ms] of stages) {
    const fill = el("div", { class: "fill" });
    fill.style.width = `${(100 * ms) / most}%`;
    bars.append(el("div", { class: "bar", role: "listitem", "aria-label": `${stage}: ${ms.toFixed(1)} ms` },
      el("span", {}, stage), el("div", { "aria-hidden": "true" }, fill), el("span", { class: "ms" }, ms.toFixed(1))));
  }
  $("timings").querySelector("figcaption").textContent =
    `Time per stage (ms)${timings.total !== undefined ? `, total ${timings.total.toFixed(1)} ms` : ""}`;
  $("timings").hidden = stages.length === 0;
}

async function search(event) {
  event.preventDefault();
  const name = $("search-collection").value;
  const body = {
    query: $("search-query").value,
    mode: $("search-mode").value,
    top_k: Number($("search-top-k").value) || 5,
    rerank: $("search-rerank").checked,
  };
  const filter = $("search-filter").value.trim();
  $("search-error").textContent = "";
  if (filter) {
    try { body.filter = JSON.parse(filter); } catch (e) {
      $("search-error").textContent = `The filter is not JSON: ${e.message}`;
      return;
    }
  }
  let out;
  try {
    const path = `/v1/collections/${encodeURIComponent(name)}/search`;
    out = await api("POST", path, { ...body, explain: true, highlight: true });
  } catch (e) {
    $("search-error").textContent = `${e.type}: ${e.message}`;
    return;
  }
  timingChart(out.timings_ms || {});
  const hits = $("hits");
  hits.replaceChildren();
  if (!out.results.length) hits.append(el("li", {}, "No hits."));
  for (const h of out.results) {
    hits.append(el("li", { class: "hit" },
      el("h3", {}, `${h.rank}. ${h.document_id}`),
      highlighted(h.text, markRanges(h)),
      scores(h)));
  }
  setStatus(`${out.results.length} hit(s)`);
}

// ------------------------------------------------------------------ figures

function rows(tableId, entries) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...entries.map((cells) => el("tr", {},
    el("th", { scope: "row" }, cells[0]), ...cells.slice(1).map((c) => el("td", { class: "num" }, c)))));
}

function latencyRows(series) {
  return Object.entries(series).map(([name, l]) =>
    [name, l.count, fmt(l.p50_ms, 1), fmt(l.p95_ms, 1), fmt(l.p99_ms, 1)]);
}

async function pollStats() {
  let s;
  try {
    s = await api("GET", "/v1/stats");
  } catch (e) {
    if (e.status !== 401) setStatus(`Could not read /v1/stats: ${e.message}`);
    return;
  }
  statsPolls += 1;
  const mib = s.memory_rss_bytes ? `${(s.memory_rss_bytes / 1048576).toFixed(0)} MiB` : "–";
  $("fig-memory").textContent = mib;
  $("fig-requests").textContent = s.requests.recent;
  $("fig-errors").textContent = s.requests.error_rate === null ? "–" : `${(100 * s.requests.error_rate).toFixed(2)} %`;
  $("fig-uptime").textContent = `${Math.round(s.uptime_seconds)} s`;
  rows("fig-routes", latencyRows(s.routes));
  rows("fig-stages", latencyRows(s.stages));
  rows("fig-caches", Object.entries(s.caches).map(([name, c]) =>
    [name, c.hit_rate === null ? "–" : `${(100 * c.hit_rate).toFixed(1)} %`, c.hits, c.misses, c.entries]));
  rows("fig-models", Object.entries(s.models).map(([name, m]) => [name, m.kind, fmt(m.load_seconds, 2)]));
  $("figures-updated").textContent = `Last update ${new Date().toLocaleTimeString()} (update ${statsPolls}).`;
  $("figures-updated").dataset.polls = String(statsPolls);
}

function startStats() {
  if (statsTimer === null) {
    pollStats();
    statsTimer = setInterval(pollStats, STATS_EVERY_MS);
  }
}

function stopStats() {
  if (statsTimer !== null) clearInterval(statsTimer);
  statsTimer = null;
}

// ------------------------------------------------------------------ start

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key").value);
    $("key").value = "";
    $("key-form").hidden = true;
    showPage();
  });
  $("create-form").addEventListener("submit", createCollection);
  $("upload-form").addEventListener("submit", upload);
  $("search-form").addEventListener("submit", search);
  window.addEventListener("hashchange", () => {
    showPage();
    const page = document.querySelector("section:not([hidden]) h2");
    if (page) { page.setAttribute("tabindex", "-1"); page.focus(); }
  });
  showPage();
});
