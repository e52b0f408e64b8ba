// What every console page shares: API calls (with the CSRF header on unsafe requests),
// DOM building that only ever sets text (never HTML from the API), formatting, and charts.
"use strict";
window.EF = (function () {
  const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";
  const DASH = "\u2014";

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
    }
  }

  async function request(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (method !== "GET" && method !== "HEAD") init.headers["X-CSRF-Token"] = csrf();
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (res.status === 401) { window.location = "/login"; throw new ApiError(401, "logged out"); }
    if (!res.ok) {
      let detail = `HTTP ${res.status}`;
      try { const problem = await res.json(); detail = problem.detail ?? problem.title ?? detail; } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, detail);
    }
    return res.status === 204 ? null : res.json();
  }
  const get = (path) => request("GET", path);
  const post = (path, body) => request("POST", path, body);

  // el("td", {class: "x", dataset: {device: id}}, "text", otherNode): text is always text.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "text") node.textContent = v;
      // Styles go through the CSSOM (an object of properties): the pages' CSP refuses a
      // style attribute, inline styles included.
      else if (k === "style") Object.assign(node.style, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    return node;
  }
  const text = (v) => (v === null || v === undefined || v === "" ? DASH : String(v));
  const pct = (v, digits = 1) => (v === null || v === undefined ? DASH : `${(v * 100).toFixed(digits)}%`);
  const num = (v, digits = 0) => (v === null || v === undefined ? DASH : Number(v).toFixed(digits));
  const parseTime = (iso) => new Date(/[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : iso + "Z");
  function stamp(iso) {
    if (!iso) return DASH;
    const d = parseTime(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  const seconds = (iso) => parseTime(iso).getTime() / 1000;
  const setText = (id, value) => { const n = document.getElementById(id); if (n) n.textContent = value; };
  const query = (params) => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : "";
  };

  function status(message, failed) {
    const node = document.getElementById("updated");
    if (!node) return;
    node.textContent = message;
    node.classList.toggle("error", Boolean(failed));
  }
  // Run ``fn`` now and every ``ms``; a failure shows in the page's status line and the next
  // poll tries again.
  function poll(fn, ms) {
    async function once() {
      try { await fn(); status(`updated ${new Date().toLocaleTimeString()}`, false); }
      catch (err) { if (err.status !== 401) status(`update failed: ${err.message}`, true); }
    }
    once();
    return setInterval(once, ms);
  }

  const PALETTE = ["#2f6fde", "#d9822b", "#0f9960", "#c23030", "#8f398f", "#1f9bad", "#6b7385"];
  const charts = new Map();
  // A time-series line chart in ``container`` (replaced on every call). ``lines`` are
  // {label, values, color?, dash?}; ``xs`` are ISO times. Returns the uPlot instance, or
  // null with a "no data" note when there is nothing to draw.
  function xRange(xs) {
    const ts = xs.map(seconds);
    const lo = Math.min(...ts);
    const hi = Math.max(...ts);
    return lo === hi ? [lo - 1800, hi + 1800] : [lo, hi];
  }

  function lineChart(container, { xs, lines, yLabel, height = 200 }) {
    const old = charts.get(container);
    if (old) { old.destroy(); charts.delete(container); }
    container.replaceChildren();
    if (!xs.length || typeof uPlot === "undefined") {
      container.append(el("p", { class: "nodata", text: "No data yet." }));
      return null;
    }
    const width = Math.max(280, container.clientWidth || 600);
    const opts = {
      width, height,
      // One distinct time (a single sample or hour) would make a zero-width axis, which
      // uPlot widens to years: show an hour around it instead.
      // The range is fixed from the data (uPlot ignores a range function here).
      scales: { x: { time: true, auto: false, range: xRange(xs) } },
      axes: [{}, { label: yLabel || "", size: 60 }],
      series: [{}].concat(lines.map((l, i) => ({
        label: l.label,
        stroke: l.color || PALETTE[i % PALETTE.length],
        width: 2,
        dash: l.dash || undefined,
        spanGaps: true,
        points: { show: xs.length < 40 },
      }))),
    };
    const data = [xs.map(seconds)].concat(lines.map((l) => l.values.map((v) => (v === undefined ? null : v))));
    const chart = new uPlot(opts, data, container);
    charts.set(container, chart);
    return chart;
  }

  // Previous / next buttons over a {data, count} listing paged by limit/offset.
  function pager(container, { offset, limit, count, onPage }) {
    const first = count === 0 ? 0 : offset + 1;
    const last = Math.min(offset + limit, count);
    const prev = el("button", { type: "button", disabled: offset === 0 }, "\u2190 Previous");
    const next = el("button", { type: "button", disabled: offset + limit >= count }, "Next \u2192");
    prev.addEventListener("click", () => onPage(Math.max(0, offset - limit)));
    next.addEventListener("click", () => onPage(offset + limit));
    container.replaceChildren(prev, el("span", { class: "range" }, `${first}\u2013${last} of ${count}`), next);
  }

  const canChange = () => document.body.dataset.canChange === "true";

  return { ApiError, get, post, request, el, text, pct, num, stamp, seconds, setText, query, poll, lineChart, pager, canChange, PALETTE, DASH };
})();
