// Device page: health and latency charts from /api/devices/{id}/metrics (hourly rollups;
// before the first rollup, health comes from the newest raw `system` records), the shadow
// with what is still to apply highlighted, attestation verdicts and recent events.
"use strict";
(function () {
  const { el, text, num, stamp, get, setText, poll, lineChart } = window.EF;
  const id = document.getElementById("device").dataset.device;
  const base = `/api/devices/${encodeURIComponent(id)}`;

  const fill = (tableId, rows, cols, empty) => {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren(...(rows.length ? rows
      : [el("tr", { class: "empty" }, el("td", { colspan: cols }, empty))]));
  };
  const json = (v) => (v === undefined ? "" : JSON.stringify(v));

  async function device() {
    const d = await get(base);
    const state = document.getElementById("device-state");
    state.textContent = d.state;
    state.className = `state ${d.state}`;
    setText("fact-last-seen", stamp(d.last_seen));
    setText("fact-requests", text(d.requests_total));
  }

  function healthFromMetrics(health) {
    return {
      xs: health.map((h) => h.hour),
      cpu: [{ label: "avg", values: health.map((h) => h.cpu_avg) }, { label: "max", values: health.map((h) => h.cpu_max) }],
      memory: [{ label: "avg", values: health.map((h) => h.memory_avg) }, { label: "max", values: health.map((h) => h.memory_max) }],
      disk: [{ label: "max", values: health.map((h) => h.disk_max) }],
      temperature: [{ label: "max", values: health.map((h) => h.temperature_max) }],
    };
  }

  async function healthFromRecords() {
    const page = await get(`${base}/telemetry?name=system&kind=metric&limit=240`);
    const recs = page.data.slice().reverse(); // oldest first
    return {
      xs: recs.map((r) => r.at),
      cpu: [{ label: "cpu", values: recs.map((r) => r.body.cpu_percent ?? null) }],
      memory: [{ label: "memory", values: recs.map((r) => r.body.memory_percent ?? null) }],
      disk: [{ label: "disk", values: recs.map((r) => r.body.disk_percent ?? null) }],
      temperature: [{ label: "temperature", values: recs.map((r) => r.body.temperature_c ?? null) }],
    };
  }

  function latencyLines(latency, key) {
    const groups = new Map();
    for (const p of latency) {
      const name = `${p.tier} / ${p.task_class}`;
      if (!groups.has(name)) groups.set(name, new Map());
      groups.get(name).set(p.hour, p[key]);
    }
    const hours = [...new Set(latency.map((p) => p.hour))].sort();
    return { xs: hours, lines: [...groups].map(([label, byHour]) => ({ label, values: hours.map((h) => byHour.get(h) ?? null) })) };
  }

  async function metrics() {
    let m = null;
    try { m = await get(`${base}/metrics?hours=24`); }
    catch (err) { if (err.status !== 404) throw err; }
    let h;
    if (m && m.health && m.health.length) { h = healthFromMetrics(m.health); setText("health-source", "hourly, last 24 h"); }
    else { h = await healthFromRecords(); setText("health-source", "newest system records"); }
    lineChart(document.getElementById("chart-cpu"), { xs: h.xs, lines: h.cpu, yLabel: "%" });
    lineChart(document.getElementById("chart-memory"), { xs: h.xs, lines: h.memory, yLabel: "%" });
    lineChart(document.getElementById("chart-disk"), { xs: h.xs, lines: h.disk, yLabel: "%" });
    const hasTemp = h.temperature[0].values.some((v) => v !== null && v !== undefined);
    lineChart(document.getElementById("chart-temperature"), { xs: hasTemp ? h.xs : [], lines: h.temperature, yLabel: "\u00b0C" });

    const latency = m ? m.latency || [] : [];
    const p50 = latencyLines(latency, "p50_ms");
    const p95 = latencyLines(latency, "p95_ms");
    lineChart(document.getElementById("chart-p50"), { xs: p50.xs, lines: p50.lines, yLabel: "ms" });
    lineChart(document.getElementById("chart-p95"), { xs: p95.xs, lines: p95.lines, yLabel: "ms" });
    fill("latency-totals", (m ? m.totals || [] : []).map((t) => el("tr", {},
      el("td", {}, t.tier), el("td", {}, t.task_class), el("td", {}, text(t.count)),
      el("td", {}, text(t.errors)), el("td", {}, num(t.p50_ms, 1)), el("td", {}, num(t.p95_ms, 1)))),
    6, "No requests in the last 24 hours.");
  }

  // {"a": {"b": 1}} -> {"a.b": 1}; arrays and scalars are leaves.
  function flatten(doc, prefix = "", out = {}) {
    for (const [k, v] of Object.entries(doc || {})) {
      const key = prefix ? `${prefix}.${k}` : k;
      if (v && typeof v === "object" && !Array.isArray(v) && Object.keys(v).length) flatten(v, key, out);
      else out[key] = v;
    }
    return out;
  }

  async function shadow() {
    const s = await get(`${base}/shadow`);
    const desired = flatten(s.desired);
    const reported = flatten(s.reported);
    const pending = new Set(Object.keys(flatten(s.delta)));
    const keys = [...new Set([...Object.keys(desired), ...Object.keys(reported)])].sort();
    setText("shadow-sync", s.in_sync
      ? `in sync (desired v${s.desired_version}, applied v${s.applied_desired_version})`
      : `pending: desired v${s.desired_version}, applied v${s.applied_desired_version}`);
    fill("shadow", keys.map((k) => el("tr", { class: pending.has(k) ? "delta" : null, dataset: { key: k } },
      el("td", { class: "mono" }, k), el("td", { class: "mono" }, json(desired[k])),
      el("td", { class: "mono" }, json(reported[k])))), 3, "Empty shadow.");
  }

  async function attestation() {
    const a = await get(`${base}/attestation?limit=20`);
    setText("attestation-identity", a.identity ? `key ${a.identity.key_id} (${a.identity.how})` : "no enrolled key");
    fill("attestation", a.results.map((r) => el("tr", { class: r.ok ? null : "bad" },
      el("td", {}, stamp(r.at)), el("td", {}, r.ok ? "trusted" : "failed"),
      el("td", {}, r.reasons.map((x) => x.detail || x.code || json(x)).join("; ")))), 3, "No verdicts yet.");
  }

  async function events() {
    const list = await get(`${base}/events?limit=20`);
    fill("events", list.map((e) => el("tr", {},
      el("td", {}, stamp(e.at)), el("td", {}, e.event), el("td", {}, text(e.detail)))), 3, "No status events.");
    const page = await get(`${base}/telemetry?kind=event&limit=20`);
    fill("telemetry", page.data.map((r) => el("tr", {},
      el("td", {}, stamp(r.at)), el("td", {}, r.kind), el("td", {}, r.name),
      el("td", { class: "mono clip" }, json(r.body)))), 4, "No telemetry events.");
  }

  poll(async () => { await Promise.all([device(), shadow(), events()]); }, 5000);
  poll(async () => { await Promise.all([metrics(), attestation()]); }, 30000);
})();
