// Drills pages: the list of stored reports (/console/drills) and one report
// (/console/drills/{id}): its checks with their numbers, a requests-per-second timeline
// with the fault windows drawn as a step line, and the event log.
"use strict";
(function () {
  const { el, text, num, stamp, get, poll, pager, lineChart, DASH } = window.EF;
  const verdict = (passed) => (passed === true ? "passed" : passed === false ? "failed" : "skipped");
  const badge = (passed) => el("span", { class: `status ${passed === true ? "completed" : passed === false ? "halted" : "paused"}` }, verdict(passed));

  async function list() {
    const limit = 25;
    let offset = 0;
    async function load() {
      const page = await get(`/api/drills?limit=${limit}&offset=${offset}`);
      const rows = page.data.map((d) => el("tr", { dataset: { drill: d.id } },
        el("td", {}, el("a", { href: `/console/drills/${d.id}` }, `#${d.id}`)),
        el("td", {}, d.scenario), el("td", {}, badge(d.passed)),
        el("td", {}, `${d.checks_passed} passed, ${d.checks_failed} failed`),
        el("td", {}, String(d.devices)), el("td", {}, `${num(d.duration_s)} s`),
        el("td", {}, text(d.created_by)), el("td", {}, stamp(d.started_at || d.created_at))));
      document.querySelector("#drills tbody").replaceChildren(...(rows.length ? rows
        : [el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No drills yet: run edgefleet drill offline."))]));
      pager(document.getElementById("drill-pager"), { offset, limit, count: page.count, onPage: (o) => { offset = o; load(); } });
    }
    poll(load, 10000);
  }

  const measured = (m) => Object.entries(m || {}).map(([k, v]) => `${k}: ${v === null ? DASH : v}`).join(", ");

  async function one(id) {
    const d = await get(`/api/drills/${id}`);
    const r = d.report;
    document.getElementById("drill-summary").textContent =
      `${r.summary || ""} — ${d.devices} device(s), ${num(d.duration_s)} s, started ${stamp(d.started_at)}` +
      (r.skipped ? ` — skipped: ${r.skipped}` : "");
    const checks = (r.checks || []).map((c) => el("tr", { dataset: { check: c.name } },
      el("td", {}, c.name), el("td", {}, badge(c.passed)), el("td", { class: "measured" }, measured(c.measured)),
      el("td", { class: "reason" }, text(c.detail))));
    document.querySelector("#checks tbody").replaceChildren(...(checks.length ? checks
      : [el("tr", { class: "empty" }, el("td", { colspan: 4 }, "No checks ran."))]));
    const events = (r.events || []).map((e) => {
      const { t, event, ...rest } = e;
      return el("tr", {}, el("td", {}, num(t, 1)), el("td", {}, event), el("td", {}, Object.keys(rest).length ? JSON.stringify(rest) : DASH));
    });
    document.querySelector("#events tbody").replaceChildren(...(events.length ? events
      : [el("tr", { class: "empty" }, el("td", { colspan: 3 }, "No events."))]));

    const rows = r.timeline || [];
    const start = Date.parse(r.started_at || d.created_at);
    const xs = rows.map((row) => new Date(start + row.t * 1000).toISOString());
    const windows = r.fault_windows || [];
    const inFault = (t) => windows.some((w) => t + 1 > w.start && t < w.end);
    const top = Math.max(1, ...rows.map((row) => row.ok + row.failed));
    lineChart(document.getElementById("chart-requests"), {
      xs, yLabel: "requests/s",
      lines: [
        { label: "ok", values: rows.map((row) => row.ok) },
        { label: "failed", values: rows.map((row) => row.failed), color: "#c23030" },
        { label: "fault", values: rows.map((row) => (inFault(row.t) ? top : 0)), color: "#6b7385", dash: [6, 4] },
      ],
    });
    lineChart(document.getElementById("chart-latency"), {
      xs, yLabel: "ms",
      lines: [
        { label: "p95", values: rows.map((row) => row.p95_ms) },
        { label: "budget", values: rows.map(() => r.latency_budget_ms ?? null), color: "#d9822b", dash: [6, 4] },
      ],
    });
  }

  const detail = document.getElementById("drill-summary");
  if (detail) one(detail.dataset.drill).catch((err) => { detail.textContent = `Report unavailable: ${err.message}`; });
  else list();
})();
