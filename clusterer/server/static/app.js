"use strict";
// The clusterer page: plain script over the JSON API, no libraries, nothing from the network
// but this server. With a token, it is kept in sessionStorage and sent as a bearer token.

const PAGE = 20;
const state = { run: null, clusters: [], selected: null, offset: 0, map: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

function colour(label) {
  if (label === null || label === undefined) return "#c3c7cf";
  const hue = (label * 137.508) % 360;
  return `hsl(${hue.toFixed(1)}, 62%, 48%)`;
}

function sim(v) { return v === null || v === undefined ? "  -  " : v.toFixed(3); }

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  const token = sessionStorage.getItem("clusterer-token");
  if (token) opts.headers["Authorization"] = "Bearer " + token;
  if (opts.body && typeof opts.body !== "string") {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(opts.body);
  }
  const res = await fetch(path, opts);
  const data = await res.json().catch(() => ({ error: res.statusText }));
  if (res.status === 401) { $("token-form").hidden = false; }
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function say(message) { $("status").textContent = message || ""; }

async function loadRuns() {
  const { runs } = await api("/runs?limit=50");
  const select = $("run-select");
  select.replaceChildren(...runs.filter((r) => r.status === "finished" || r.finished_at)
    .map((r) => el("option", { value: r.id }, `${r.id} · ${r.method} · ${r.clusters} clusters`)));
  if (!select.options.length) { say("No clustering run yet: run `clusterer cluster` or POST /runs."); return; }
  state.run = Number(select.value);
  await loadClusters();
}

async function loadClusters() {
  const level = $("level-select").value;
  const data = await api(`/clusters?run=${state.run}` + (level ? `&level=${level}` : ""));
  state.clusters = data.clusters;
  const r = data.run;
  $("run-summary").textContent = `${r.clusters} clusters · ${r.assigned}/${r.sentences} assigned`;
  $("level-label").hidden = !data.clusters.some((c) => "level" in c);
  const body = $("clusters");
  body.replaceChildren(...data.clusters.map((c) => el("tr", { class: "cluster-row", "data-id": c.id, onclick: () => showCluster(c.id, 0) },
    el("td", {}, el("input", { type: "checkbox", class: "merge-check", value: c.id, onclick: (e) => e.stopPropagation(), onchange: mergeChoice })),
    el("td", {}, el("span", { class: "swatch", style: `background:${colour(c.id)}` }), c.id),
    el("td", {}, c.size),
    el("td", { class: "kw" }, c.label ? el("strong", { class: "cluster-label" }, c.label + " · ") : "", (c.keywords || []).slice(0, 6).join(", ")),
    el("td", {}, c.centre_text || ""))));
  say("");
  mergeChoice();
  loadMap();
}

// -- curation: merge, split, label, unmerge; the granularity control ----------------------

function mergeChoice() {
  $("merge-button").disabled = document.querySelectorAll(".merge-check:checked").length < 2;
}

async function edit(path, options, show) {
  try {
    const d = await api(path, Object.assign({ method: "POST" }, options));
    await loadClusters();
    say(editText(d));
    if (show !== null && show !== undefined) await showCluster(typeof show === "function" ? show(d) : show, 0);
    return d;
  } catch (err) {
    say(err.message);
    return null;
  }
}

function editText(d) {
  if (d.kind === "merge") return `merged ${d.related.join(", ")} into ${d.cluster_id}`;
  if (d.kind === "split") return `split ${d.cluster_id} into ${d.related.join(", ")}`;
  if (d.kind === "unmerge") return `undid the merge into ${d.cluster_id}: ${d.related.join(", ")} back`;
  return d.label ? `cluster ${d.cluster_id} labelled "${d.label}"` : `cluster ${d.cluster_id}: label removed`;
}

function mergeSelected() {
  const ids = [...document.querySelectorAll(".merge-check:checked")].map((b) => Number(b.value));
  return edit("/clusters/merge", { body: { ids } }, (d) => d.cluster_id);
}

function curationTools(info) {
  const id = info.id;
  const labelBox = el("input", { id: "label-input", type: "text", maxlength: "200", placeholder: "name this cluster" });
  labelBox.value = info.label || "";
  const resBox = el("input", { id: "split-resolution", type: "number", min: "0.01", step: "any", placeholder: "1" });
  const tools = [
    el("form", { id: "label-form", onsubmit: (e) => { e.preventDefault(); edit(`/clusters/${id}/label`, { method: "PUT", body: { label: labelBox.value } }, id); } },
      labelBox, el("button", { id: "label-save" }, "save label"),
      el("button", { id: "label-clear", type: "button", onclick: () => edit(`/clusters/${id}/label`, { method: "DELETE" }, id) }, "clear")),
  ];
  if (info.level !== "coarse") {
    tools.push(el("form", { id: "split-form", onsubmit: (e) => {
      e.preventDefault();
      const body = resBox.value ? { resolution: Number(resBox.value) } : {};
      edit(`/clusters/${id}/split`, { body }, (d) => d.related[0]);
    } }, "resolution ", resBox, el("button", { id: "split-button" }, "split")),
    el("button", { id: "unmerge-button", type: "button", onclick: () => edit(`/clusters/${id}/unmerge`, {}, id) }, "undo merge"));
  }
  return el("div", { id: "curation", class: "card" }, ...tools);
}

async function recluster(event) {
  event.preventDefault();
  const value = $("resolution-input").value;
  try {
    const { job } = await api("/recluster", { method: "POST", body: value ? { resolution: Number(value) } : {} });
    say(`reclustering (job ${job.id})…`);
    let state_ = job;
    while (!["done", "failed", "cancelled"].includes(state_.state)) {
      await new Promise((r) => setTimeout(r, 500));
      state_ = await api(`/jobs/${job.id}`);
    }
    if (state_.state !== "done") { say(`recluster ${state_.state}: ${state_.error || ""}`); return; }
    state.selected = null;
    await loadRuns();
    say(`run ${state_.result.run.id}: ${state_.result.run.clusters} clusters`);
  } catch (err) {
    say(err.message);
  }
}

async function showCluster(id, offset) {
  state.selected = id;
  state.offset = offset;
  for (const row of document.querySelectorAll("tr.cluster-row")) row.classList.toggle("selected", Number(row.dataset.id) === id);
  const [info, page, hist] = await Promise.all([
    api(`/clusters/${id}?run=${state.run}&limit=0`),
    api(`/clusters/${id}/members?run=${state.run}&offset=${offset}&limit=${PAGE}`),
    api(`/clusters/${id}/history`).catch(() => ({ events: [] })),
  ]);
  const detail = $("detail");
  const parts = [
    el("h2", {}, el("span", { class: "swatch", style: `background:${colour(id)}` }), `cluster ${info.id} · ${info.size} sentences`,
      info.label ? el("span", { class: "cluster-label", id: "detail-label" }, ` “${info.label}”`) : ""),
    curationTools(info),
    el("p", { class: "kw" }, (info.keywords || []).join(", ")),
    el("p", {}, "centre: ", el("em", {}, info.centre_text || "-")),
  ];
  if (info.parent !== undefined && info.parent !== null) {
    const p = info.parent_cluster;
    const label = p ? `${p.id} · ${(p.keywords || []).slice(0, 4).join(", ")}` : info.parent;
    parts.push(el("p", {}, "topic: ", el("span", { class: "link", onclick: () => showCluster(info.parent, 0) }, label)));
  }
  const kids = info.child_clusters || info.children;
  if (kids && kids.length) {
    parts.push(el("h3", {}, "children"), el("ul", { id: "children" }, ...kids.map((c) => {
      const cid = typeof c === "object" ? c.id : c;
      const label = typeof c === "object" && c.keywords ? `${cid} · ${c.size ?? ""} · ${c.keywords.slice(0, 4).join(", ")}` : cid;
      return el("li", {}, el("span", { class: "link", onclick: () => showCluster(cid, 0) }, label));
    })));
  }
  parts.push(el("h3", {}, `members ${offset + 1}–${offset + page.members.length}`),
    el("ul", { id: "members" }, ...page.members.map((m) => el("li", {}, el("span", { class: "sim" }, sim(m.similarity)), el("span", { class: "text" }, m.text)))),
    el("div", { class: "pager" },
      el("button", { id: "prev-page", onclick: () => showCluster(id, Math.max(0, offset - PAGE)), ...(offset ? {} : { disabled: "" }) }, "previous"),
      el("button", { id: "next-page", onclick: () => showCluster(id, offset + PAGE), ...(offset + PAGE < info.size ? {} : { disabled: "" }) }, "next")),
    el("h3", {}, "history"),
    el("ul", { id: "history" }, ...hist.events.map((e) => el("li", {}, `${e.at || ""} run ${e.run_id}: ${e.kind}, size ${e.size}` + (e.related && e.related.length ? ` (related ${e.related.join(", ")})` : "")))));
  detail.replaceChildren(...parts);
  drawMap();
}

async function lookup(event) {
  event.preventDefault();
  const text = $("search-input").value.trim();
  if (!text) return;
  const out = $("lookup-result");
  out.replaceChildren(el("p", { class: "hint" }, "looking up…"));
  try {
    const d = await api("/lookup", { method: "POST", body: { text, members: 3 } });
    const c = d.cluster;
    const head = c
      ? el("div", { class: "card", id: "lookup-cluster" }, "would join ",
          el("span", { class: "link", onclick: () => showCluster(c.id, 0) }, `cluster ${c.id}`),
          ` (${c.size} sentences, similarity ${sim(d.similarity)}): `, el("span", { class: "kw" }, (c.keywords || []).slice(0, 6).join(", ")))
      : el("div", { class: "card", id: "lookup-cluster" }, "fits none of the current clusters");
    out.replaceChildren(head, el("ul", { id: "nearest" }, ...d.nearest.map((n) =>
      el("li", {}, el("span", { class: "sim" }, sim(n.similarity)), n.text, n.cluster === null ? " (unassigned)" : ` (cluster ${n.cluster})`))));
  } catch (err) {
    out.replaceChildren(el("p", { class: "hint" }, err.message));
  }
}

async function loadMap() {
  state.map = null;
  drawMap();
  const run = state.run;
  try {
    let m = await api(`/map?run=${run}`);
    while (m.state === "computing" && run === state.run) {
      $("map-tip").textContent = "laying out the map…";
      await new Promise((r) => setTimeout(r, 1000));
      m = await api(`/map?run=${run}`);
    }
    if (run !== state.run) return;
    state.map = m;
  } catch (err) {
    $("map-tip").textContent = "map: " + err.message;
    return;
  }
  const pts = state.map.points;
  const xs = pts.map((p) => p.x), ys = pts.map((p) => p.y);
  state.map.bounds = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  $("map-tip").textContent = `${state.map.sampled} of ${state.map.total} sentences (${state.map.projection.toUpperCase()})`;
  drawMap();
}

function toCanvas(p, canvas) {
  const [x0, x1, y0, y1] = state.map.bounds, pad = 10;
  const w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  return [pad + ((p.x - x0) / ((x1 - x0) || 1)) * w, pad + (1 - (p.y - y0) / ((y1 - y0) || 1)) * h];
}

function drawMap() {
  const canvas = $("map"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.map) return;
  const sel = state.selected;
  for (const pass of [0, 1]) {
    for (const p of state.map.points) {
      const chosen = sel !== null && p.cluster === sel;
      if ((pass === 1) !== chosen) continue;
      const [x, y] = toCanvas(p, canvas);
      ctx.globalAlpha = sel === null || chosen ? 0.85 : 0.25;
      ctx.fillStyle = colour(p.cluster);
      ctx.beginPath();
      ctx.arc(x, y, chosen ? 3 : 2, 0, 2 * Math.PI);
      ctx.fill();
    }
  }
  ctx.globalAlpha = 1;
}

function nearestPoint(event) {
  if (!state.map) return null;
  const canvas = $("map"), rect = canvas.getBoundingClientRect();
  const mx = (event.clientX - rect.left) * (canvas.width / rect.width), my = (event.clientY - rect.top) * (canvas.height / rect.height);
  let best = null, bestD = 64;
  for (const p of state.map.points) {
    const [x, y] = toCanvas(p, canvas), d = (x - mx) ** 2 + (y - my) ** 2;
    if (d < bestD) { best = p; bestD = d; }
  }
  return best;
}

function init() {
  $("run-select").addEventListener("change", (e) => { state.run = Number(e.target.value); state.selected = null; loadClusters().catch((err) => say(err.message)); });
  $("level-select").addEventListener("change", () => loadClusters().catch((err) => say(err.message)));
  $("search-form").addEventListener("submit", lookup);
  $("merge-button").addEventListener("click", () => mergeSelected());
  $("granularity-form").addEventListener("submit", recluster);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("clusterer-token", $("token-input").value);
    $("token-form").hidden = true;
    loadRuns().catch((err) => say(err.message));
  });
  $("map").addEventListener("mousemove", (e) => {
    const p = nearestPoint(e);
    $("map-tip").textContent = p ? `[${p.id}] ${p.text} (${p.cluster === null ? "unassigned" : "cluster " + p.cluster + (p.label ? ` “${p.label}”` : "")})` : "";
  });
  $("map").addEventListener("click", (e) => { const p = nearestPoint(e); if (p && p.cluster !== null) showCluster(p.cluster, 0); });
  loadRuns().catch((err) => say(err.message));
}

init();
