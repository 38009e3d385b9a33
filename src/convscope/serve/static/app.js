// convscope serve: the page. Every number and picture comes from the JSON API (computed in Python);
// this file only routes (#/model, #/layer/L, #/channel/L/C, #/images, #/image/ID), draws and polls jobs.
"use strict";

const store = {
  get(key, fallback) { try { const v = localStorage.getItem("convscope." + key); return v === null ? fallback : JSON.parse(v); } catch (e) { return fallback; } },
  set(key, value) { try { localStorage.setItem("convscope." + key, JSON.stringify(value)); } catch (e) { /* private mode */ } },
};
const state = { model: null, methods: null, images: null, image: store.get("image", null), jobsSeen: {} };
// what the browser measured (read by the tests): channel switches and map requests, in ms
window.convscopeTimings = { channel: [], map: [] };

class ApiError extends Error {
  constructor(body, status) { super(body.error || ("HTTP " + status)); this.fix = body.fix; this.status = status; }
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body;
  try { body = await response.json(); } catch (e) { body = { error: "HTTP " + response.status }; }
  if (!response.ok) throw new ApiError(body, response.status);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const q = (path, params) => path + "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== null && v !== undefined && v !== "")).toString();
const fmt = (x) => (x === null || x === undefined) ? "–" : (Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3));
const shape = (s) => s ? s.join("×") : "–";
const enc = encodeURIComponent;

function showError(where, error) {
  where.replaceChildren(el("p", { class: "error", role: "alert" }, error.message), error.fix ? el("p", { class: "muted" }, error.fix) : null);
}

function loaded(img) {
  return new Promise((resolve) => {
    if (img.complete && img.naturalWidth) return resolve(img);
    img.addEventListener("load", () => resolve(img), { once: true });
    img.addEventListener("error", () => resolve(img), { once: true });
  });
}

function setImage(id) {
  state.image = id;
  store.set("image", id);
  drawCurrentImage();
}

function drawCurrentImage() {
  const link = document.getElementById("current-image");
  if (!state.image) { link.replaceChildren("no image chosen"); return; }
  link.href = "#/image/" + enc(state.image);
  link.replaceChildren(el("img", { src: "api/image/" + enc(state.image) + ".png", alt: "current image" }), "image " + state.image);
}

// --- views ------------------------------------------------------------------------------------

async function modelView(view) {
  const m = state.model;
  const withChannels = m.layers.filter((r) => r.channels);
  const rows = m.layers.map((r) => el("tr", { class: "layer-row", "data-layer": r.name },
    el("td", {}, "\u00a0".repeat(2 * (r.depth - 1)), r.channels ? el("a", { href: "#/layer/" + enc(r.name) }, r.name) : r.name),
    el("td", {}, r.kind), el("td", { class: "num" }, shape(r.shape)), el("td", { class: "num" }, r.params.toLocaleString("en")),
    el("td", { class: "num" }, r.field ? r.field.size + " px" + (r.field.stride ? ", stride " + r.field.stride : "") : "–"),
    el("td", {}, m.atlas_layers.includes(r.name) ? "atlas" : "")));
  const picks = withChannels.map((r) => el("label", {}, el("input", { type: "checkbox", value: r.name, class: "atlas-layer" }), " " + r.name));
  const message = el("p", { id: "atlas-message", class: "muted" });
  view.replaceChildren(
    el("h1", {}, m.name),
    el("p", { class: "muted", id: "model-summary" }, `${m.params.toLocaleString("en")} parameters, input ${m.input}×${m.input}, weights: ${m.weights}` +
      (m.data ? `, data: ${m.data}` : ", no DATA (upload pictures in Images)") + (m.classes.length ? `, classes: ${m.classes.join(", ")}` : "")),
    el("table", { id: "layers" }, el("thead", {}, el("tr", {}, ["layer", "type", "output", "params", "receptive field", ""].map((t, i) => el("th", { class: i >= 2 && i <= 4 ? "num" : null }, t)))), el("tbody", {}, rows)),
    el("h2", {}, "Mine a dataset atlas"),
    m.data ? el("div", { class: "controls" }, picks, el("label", {}, "k ", el("input", { id: "atlas-k", type: "number", min: 1, max: 32, value: 9, style: "width:4em" })),
      el("button", { id: "mine-atlas", onclick: () => mineAtlas([...document.querySelectorAll(".atlas-layer:checked")].map((c) => c.value), message) }, "Mine")) :
      el("p", { class: "muted" }, "Start the server with DATA (an image folder or shapes:N) to mine atlases."),
    message);
}

async function mineAtlas(layers, message) {
  if (!layers.length) { message.textContent = "Choose at least one layer."; return; }
  const k = Number((document.getElementById("atlas-k") || {}).value || 9);
  try { await api("api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ kind: "atlas", layers, k }) }); pollJobs(); }
  catch (e) { showError(message, e); }
}

async function layerView(view, layer) {
  const data = await api(q("api/layer/" + enc(layer), { image: state.image }));
  const sorts = { index: (a, b) => a.c - b.c, act_max: (a, b) => (b.act_max ?? -1e30) - (a.act_max ?? -1e30),
    act_mean: (a, b) => (b.act_mean ?? -1e30) - (a.act_mean ?? -1e30), atlas_max: (a, b) => (b.atlas_max ?? -1e30) - (a.atlas_max ?? -1e30) };
  const search = el("input", { id: "channel-search", type: "search", placeholder: "channel, e.g. 12 or 1-8", value: store.get("search." + layer, "") });
  const sort = el("select", { id: "channel-sort" },
    el("option", { value: "index" }, "by index"),
    el("option", { value: "act_max", disabled: data.channels[0].act_max === null }, "by max on the current image"),
    el("option", { value: "act_mean", disabled: data.channels[0].act_mean === null }, "by mean on the current image"),
    el("option", { value: "atlas_max", disabled: !data.atlas }, "by strongest in DATA (atlas)"));
  sort.value = store.get("sort." + layer, "index");
  if (sort.selectedOptions[0] && sort.selectedOptions[0].disabled) sort.value = "index";
  const grid = el("div", { id: "channel-grid", class: "grid" });
  const message = el("p", { class: "muted", id: "layer-message" });
  const matches = (c, text) => {
    text = text.trim();
    if (!text) return true;
    return text.split(/[ ,]+/).some((part) => {
      const range = part.match(/^(\d+)-(\d+)$/);
      if (range) return c >= Number(range[1]) && c <= Number(range[2]);
      return String(c).startsWith(part.replace(/^c/, ""));
    });
  };
  const draw = () => {
    store.set("search." + layer, search.value);
    store.set("sort." + layer, sort.value);
    const shown = data.channels.filter((ch) => matches(ch.c, search.value)).sort(sorts[sort.value]);
    grid.replaceChildren(...shown.map((ch) => el("a", { class: "channel-card", "data-c": ch.c, href: "#/channel/" + enc(layer) + "/" + ch.c },
      el("img", { class: "thumb", loading: "lazy", alt: "channel " + ch.c, src: q("api/layer/" + enc(layer) + "/thumb/" + ch.c + ".png", { image: state.image, v: data.atlas ? "atlas" : data.featurevis }) }),
      el("span", {}, `c${ch.c}` + (ch.act_max !== null ? ` · ${fmt(ch.act_max)}` : "") + (ch.atlas_max !== null ? ` · top ${fmt(ch.atlas_max)}` : "")))));
    document.getElementById("shown-count").textContent = `${shown.length} of ${data.channels.length} channels`;
  };
  search.addEventListener("input", draw);
  sort.addEventListener("change", draw);
  const source = data.atlas ? "thumbnails: each channel's strongest image patch in DATA (atlas)" :
    data.featurevis ? "thumbnails: feature visualizations" : state.image ? "thumbnails: each channel's activation on the current image" : "choose an image to see activations";
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/model" }, "model"), " / ", layer),
    el("h1", {}, `${layer} — ${data.layer.kind}, ${data.channels.length} channels, output ${shape(data.layer.shape)}`),
    el("p", { class: "muted", id: "thumb-source" }, source),
    el("div", { class: "controls" }, search, sort, el("span", { id: "shown-count", class: "muted" }),
      state.model.data ? el("button", { id: "mine-layer", onclick: () => mineAtlas([layer], message) }, data.atlas ? "Mine again" : "Mine atlas of this layer") : null,
      el("button", { id: "render-layer", onclick: () => startFeaturevis(layer, data.channels.length, message) }, "Render feature visualizations")),
    message, grid);
  draw();
}

async function startFeaturevis(layer, count, message) {
  try {
    await api("api/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ kind: "featurevis", layer, channels: [...Array(count).keys()] }) });
    pollJobs();
  } catch (e) { showError(message, e); }
}

async function channelView(view, layer, channel, started) {
  const c = Number(channel);
  const data = await api(q("api/channel/" + enc(layer) + "/" + c, { image: state.image }));
  const go = (to) => { const t = performance.now(); location.hash = "#/channel/" + enc(layer) + "/" + to; pendingSwitch = t; };
  const activation = data.activation ? el("img", { id: "channel-activation", class: "pix big", src: data.activation.png, alt: "activation" }) : null;
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/model" }, "model"), " / ", el("a", { href: "#/layer/" + enc(layer) }, layer), " / channel " + c),
    el("div", { class: "controls" },
      el("button", { id: "prev-channel", disabled: c <= 0, onclick: () => go(c - 1) }, "← previous"),
      el("h1", { id: "channel-title", style: "margin:0" }, `${layer} channel ${c}`),
      el("button", { id: "next-channel", disabled: c >= data.channels - 1, onclick: () => go(c + 1) }, "next →"),
      el("span", { id: "switch-time", class: "muted" })),
    el("div", { class: "row" },
      el("div", { class: "box" }, el("h2", {}, "Activation on the current image"),
        activation ? [activation, el("p", { class: "muted", id: "activation-stats" },
          `max ${fmt(data.activation.max)} at (${data.activation.at.join(", ")}) of ${data.activation.size.join("×")}, mean ${fmt(data.activation.mean)}`)] :
          el("p", { class: "muted" }, "Choose an image in ", el("a", { href: "#/images" }, "Images"), ".")),
      el("div", { class: "box" }, el("h2", {}, "Feature visualization"),
        data.featurevis ? el("img", { id: "channel-featurevis", class: "pix big", src: data.featurevis, alt: "feature visualization" }) :
          el("p", { class: "muted" }, "Not rendered yet: use “Render feature visualizations” in the ", el("a", { href: "#/layer/" + enc(layer) }, "layer view"), "."))),
    el("div", { class: "box", style: "margin-top:16px" }, el("h2", {}, "Top activations in DATA"),
      data.atlas ? [el("img", { id: "channel-atlas", class: "pix", src: data.atlas.png, alt: "top patches", style: "max-width:100%" }),
        el("p", { class: "muted" }, data.atlas.projections ? "Top row: image patches under the receptive field; bottom row: their deconvnet projections. " : "",
          data.atlas.values.map((v, i) => `${fmt(v)} @ ${data.atlas.images[i]}`).join(", "))] :
        el("p", { class: "muted" }, "No atlas for this layer yet: mine one from the ", el("a", { href: "#/layer/" + enc(layer) }, "layer view"), ".")));
  if (started !== null && activation) {
    await loaded(activation);
    const ms = performance.now() - started;
    window.convscopeTimings.channel.push(ms);
    document.getElementById("switch-time").textContent = `shown in ${ms.toFixed(0)} ms`;
  }
}
let pendingSwitch = null;

async function imagesView(view) {
  state.images = await api("api/images");
  const list = el("div", { class: "images row", id: "image-list" }, state.images.map((im) =>
    el("a", { href: "#/image/" + enc(im.id), title: im.name }, el("img", { class: "thumb" + (im.id === state.image ? " on" : ""), "data-id": im.id, loading: "lazy", src: "api/image/" + enc(im.id) + ".png", alt: im.name }))));
  view.replaceChildren(el("h1", {}, "Images"), uploadForm(), state.images.length ? list : el("p", { class: "muted" }, "No images: upload one."));
}

function uploadForm() {
  const message = el("p", { id: "upload-message", class: "muted" });
  const input = el("input", { id: "upload", type: "file", accept: "image/*" });
  input.addEventListener("change", async () => {
    const file = input.files[0];
    if (!file) return;
    message.className = "muted";
    message.textContent = "Uploading " + file.name + "…";
    try {
      const done = await api("api/upload", { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
      setImage(done.id);
      location.hash = "#/image/" + enc(done.id);
    } catch (e) { showError(message, e); }
  });
  return el("div", { class: "controls" }, el("label", {}, "Upload a picture: ", input), message);
}

function defaultPanels() { return [{ method: "grad_cam", target: "pred", layer: "" }]; }

async function imageView(view, id) {
  setImage(id);
  const [preds] = await Promise.all([api("api/predict/" + enc(id)), state.methods ? null : api("api/methods").then((m) => { state.methods = m; })]);
  const panels = store.get("panels", defaultPanels());
  const holder = el("div", { class: "row", id: "panels" });
  const save = () => store.set("panels", [...holder.querySelectorAll(".panel")].map((p) => p.settings));
  const add = (settings) => { holder.append(mapPanel(id, preds, settings, save)); save(); };
  panels.forEach((p) => holder.append(mapPanel(id, preds, p, save)));
  view.replaceChildren(
    el("p", {}, el("a", { href: "#/images" }, "images"), " / " + id),
    el("div", { class: "row" },
      el("div", { class: "box" }, el("img", { id: "picture", class: "pix big", src: "api/image/" + enc(id) + ".png", alt: "the image" }),
        el("h2", {}, "Predictions"),
        el("ul", { class: "predictions", id: "predictions" }, preds.map((p) => el("li", {}, el("span", { class: "bar", style: `width:${Math.max(1, Math.round(p.p * 120))}px` }), `${p.name} ${(100 * p.p).toFixed(1)}%`)))),
      el("div", { class: "maps" }, el("div", { class: "controls" }, el("button", { id: "add-panel", onclick: () => add({ method: "saliency", target: "pred", layer: "" }) }, "+ add a map"), uploadForm()), holder)));
}

function mapPanel(image, preds, settings, save) {
  const panel = el("div", { class: "box panel" });
  panel.settings = { ...settings };
  const method = el("select", { class: "method", "aria-label": "method" }, state.methods.map((m) => el("option", { value: m.name, title: m.description }, m.name)));
  method.value = settings.method;
  const names = state.model.classes;
  const classCount = names.length || (preds.length ? Math.max(...preds.map((p) => p.class)) + 1 : 0);
  const target = el("select", { class: "target", "aria-label": "target" }, el("option", { value: "pred" }, `predicted (${preds[0].name})`),
    [...Array(classCount).keys()].map((k) => el("option", { value: k }, names[k] || "class " + k)));
  target.value = String(settings.target);
  const layer = el("select", { class: "layer", "aria-label": "layer" }, el("option", { value: "" }, "layer: automatic"),
    state.model.layers.filter((r) => r.channels).map((r) => el("option", { value: r.name }, r.name)));
  layer.value = settings.layer || "";
  const img = el("img", { class: "map pix", alt: "map" });
  const info = el("p", { class: "map-info muted" });
  const scores = el("p", { class: "map-scores muted" });
  const close = el("button", { class: "close", title: "remove", onclick: () => { panel.remove(); save(); } }, "×");
  const compute = async (changed) => {
    panel.settings = { method: method.value, target: target.value, layer: layer.value };
    if (changed) save();
    const takesLayer = (state.methods.find((m) => m.name === method.value) || {}).layer;
    layer.disabled = !takesLayer;
    info.className = "map-info muted";
    info.textContent = "computing " + method.value + "…";
    panel.dataset.state = "busy";
    const start = performance.now();
    try {
      const result = await api(q("api/map", { image, method: method.value, target: target.value, layer: takesLayer ? layer.value : "" }));
      img.src = result.png;
      await loaded(img);
      const ms = performance.now() - start;
      window.convscopeTimings.map.push({ method: result.method, ms, cached: result.cached });
      info.textContent = `${result.method} for ${names[result.target] || "class " + result.target}` + (result.layer ? ` at ${result.layer}` : "") +
        `: ${result.cached ? "cached" : "computed in " + result.ms + " ms"}` + (result.blank ? ` — blank (${result.blank})` : "");
      scores.textContent = result.scores ? `pointing game: ${result.scores.pointing_game ? "hit" : "miss"}` +
        (result.scores.mass_inside !== null ? `, mass on the object: ${(100 * result.scores.mass_inside).toFixed(0)}%` : "") : "";
      panel.dataset.method = result.method;
      panel.dataset.state = "done";
    } catch (e) {
      img.removeAttribute("src");
      showError(info, e);
      panel.dataset.state = "failed";
    }
  };
  [method, target, layer].forEach((s) => s.addEventListener("change", () => compute(true)));
  panel.append(el("div", { class: "controls" }, method, close), el("div", { class: "controls" }, target, layer), img, info, scores);
  compute(false);
  return panel;
}

// --- jobs -------------------------------------------------------------------------------------

let polling = null;
async function pollJobs() {
  if (polling) return;
  polling = true;
  try {
    for (;;) {
      let jobs;
      try { jobs = await api("api/jobs"); } catch (e) { break; }
      let finished = false;
      for (const job of jobs) {
        const before = state.jobsSeen[job.id];
        if (before && before !== job.state && (job.state === "done" || job.state === "failed")) finished = true;
        state.jobsSeen[job.id] = job.state;
      }
      // a finished job changes what the views show: redraw the view first, then say "done"
      if (finished) { state.model = await api("api/model"); await route(); }
      drawJobs(jobs);
      if (!jobs.some((j) => j.state === "queued" || j.state === "running")) break;
      await new Promise((r) => setTimeout(r, 300));
    }
  } finally { polling = null; }
}

function drawJobs(jobs) {
  const holder = document.getElementById("jobs");
  // running and queued jobs, failures, and what finished in the last 20 s
  const shown = jobs.filter((j) => j.state === "queued" || j.state === "running" || j.state === "failed" || (j.finished_ago !== null && j.finished_ago < 20));
  holder.replaceChildren(...shown.slice(-4).map((j) => el("div", { class: "job " + j.state, "data-job": j.id, "data-state": j.state },
    el("b", {}, j.title), el("progress", { max: 1, value: j.fraction }), el("span", { class: "stage" }, j.state === "running" ? `${j.stage}: ${j.done}/${j.total}` : j.state),
    j.error ? el("span", { class: "error" }, j.error) : null, el("span", { class: "muted" }, `${j.elapsed.toFixed(1)} s`))));
}

// --- routing ----------------------------------------------------------------------------------

async function route() {
  const view = document.getElementById("view");
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const started = pendingSwitch;
  pendingSwitch = null;
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("on", a.dataset.nav === (parts[0] || "model")));
  view.dataset.view = parts[0] || "model";
  try {
    if (parts[0] === "layer" && parts[1]) await layerView(view, parts[1]);
    else if (parts[0] === "channel" && parts[1]) await channelView(view, parts[1], parts[2] || "0", started);
    else if (parts[0] === "images") await imagesView(view);
    else if (parts[0] === "image" && parts[1]) await imageView(view, parts[1]);
    else await modelView(view);
    view.dataset.ready = location.hash;
  } catch (e) { showError(view, e); view.dataset.ready = location.hash; }
}

async function start() {
  try {
    state.model = await api("api/model");
  } catch (e) { showError(document.getElementById("view"), e); return; }
  document.getElementById("model-name").textContent = state.model.name;
  try {
    state.images = await api("api/images");
    if (!state.images.some((im) => im.id === state.image)) setImage(state.images.length ? state.images[0].id : null);
  } catch (e) { /* the views say what is wrong */ }
  drawCurrentImage();
  document.addEventListener("keydown", (ev) => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    const button = ev.key === "ArrowRight" ? document.getElementById("next-channel") : ev.key === "ArrowLeft" ? document.getElementById("prev-channel") : null;
    if (button && !button.disabled) button.click();
  });
  window.addEventListener("hashchange", route);
  await route();
  pollJobs();
}

start();
