// Fleet page: counts and the device table poll /api/devices (one page at a time, filtered
// on the server); rates, tier chart and cost poll /api/fleet/summary.
"use strict";
(function () {
  const { el, text, pct, num, stamp, get, setText, query, poll, lineChart, pager } = window.EF;
  const ACTIVE = new Set(["pending", "running", "paused", "halted", "rolling_back"]);
  const TIERS = ["local", "private", "cloud"];
  const table = document.getElementById("devices");
  const body = table.querySelector("tbody");
  const limit = Number(table.dataset.pageSize) || 50;
  const filters = document.getElementById("device-filters");
  let offset = 0;

  const cell = (...content) => el("td", {}, ...content);

  function row(d) {
    const state = el("span", { class: `state ${d.state}` }, d.state);
    const stateCell = cell(state);
    if (d.state_reason) stateCell.append(el("small", {}, ` (${d.state_reason})`));
    if (d.quarantined) {
      stateCell.append(" ", el("span", { class: "quarantine", title: d.quarantine_reason || "" },
        d.quarantine_reason ? `quarantined: ${d.quarantine_reason}` : "quarantined"));
    }
    if (d.decommissioned) {
      stateCell.append(" ", el("span", { class: "decommissioned", title: d.decommission_reason || "" },
        "revoked"));
    }
    const link = el("a", { href: `/console/devices/${encodeURIComponent(d.id)}` }, d.id);
    return el("tr", { dataset: { device: d.id }, class: d.quarantined ? "quarantined" : null },
      cell(link), stateCell, cell(stamp(d.last_seen)), cell(text(d.device_class)),
      cell(text(d.runtimes.join(", "))), cell(text(d.models.map((m) => m.name).join(", "))),
      cell(num(d.cpu_percent)), cell(text(d.requests_total)));
  }

  async function devices() {
    const form = new FormData(filters);
    const page = await get(`/api/devices${query({
      state: form.get("state"), quarantined: form.get("quarantined"), limit, offset,
    })}`);
    if (page.data.length === 0 && offset > 0 && page.count > 0) { offset = 0; return devices(); }
    body.replaceChildren(...(page.data.length ? page.data.map(row)
      : [el("tr", { class: "empty" }, el("td", { colspan: 8 }, "No devices match. Start an agent with edge-agent run --config FILE."))]));
    setText("count-online", page.online);
    setText("count-offline", page.offline);
    setText("count-quarantined", page.quarantined);
    // The fleet total is every device; the pager counts what the filter matches.
    if (!form.get("state") && !form.get("quarantined")) setText("count-total", page.count);
    pager(document.getElementById("device-pager"), {
      offset, limit, count: page.count, onPage: (o) => { offset = o; devices(); },
    });
  }

  async function summary() {
    let s;
    try { s = await get("/api/fleet/summary?hours=24"); }
    catch (err) { if (err.status === 404) return; throw err; }
    setText("rate-escalation", pct(s.escalation_rate));
    setText("rate-cascade", pct(s.cascade_rate));
    setText("rate-error", pct(s.error_rate));
    setText("requests-total", text(s.requests?.total));
    setText("window-hours", `last ${s.window_hours} h`);
    setText("cost-saved", s.cloud_cost_saved_usd == null ? "\u2014" : `$${num(s.cloud_cost_saved_usd, 2)}`);
    setText("cost-spent", s.cloud_cost_spent_usd == null ? "" : `spent $${num(s.cloud_cost_spent_usd, 2)} on the cloud tier`);
    setText("alerts-open", text(s.alerts_open));
    setText("rollouts-active", text(s.rollouts_active));
    const series = s.series || [];
    lineChart(document.getElementById("chart-tiers"), {
      xs: series.map((p) => p.hour),
      lines: TIERS.map((t) => ({ label: t, values: series.map((p) => p.by_tier?.[t] ?? 0) })),
      yLabel: "requests / h",
    });
    const byTier = s.requests?.by_tier || {};
    const total = TIERS.reduce((n, t) => n + (byTier[t] || 0), 0);
    setText("tier-split", total ? TIERS.map((t) => `${t} ${pct((byTier[t] || 0) / total, 0)}`).join(" \u00b7 ") : "");
  }

  async function alerts() {
    const list = document.getElementById("alerts");
    let page;
    try { page = await get("/api/alerts?state=open&limit=10"); }
    catch (err) { if (err.status === 404) { list.replaceChildren(el("li", { class: "muted" }, "Alerts are not available.")); return; } throw err; }
    const items = page.data.map((a) => el("li", { class: "alert" },
      el("b", {}, a.kind), " ", text(a.subject), a.feature ? ` (${a.feature})` : "",
      el("small", {}, ` ${num(a.value, 3)} > ${num(a.threshold, 3)} since ${stamp(a.opened_at)}`)));
    list.replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No open alerts.")]));
  }

  async function rollouts() {
    const page = await get("/api/rollouts?limit=50");
    const items = page.data.filter((r) => ACTIVE.has(r.status)).map((r) => el("li", {},
      el("a", { href: `/console/rollouts/${r.id}` }, `#${r.id} ${r.model} ${r.version}`), " ",
      el("span", { class: `status ${r.status}` }, r.status), el("small", {}, ` ${r.reason || ""}`)));
    document.getElementById("rollouts").replaceChildren(
      ...(items.length ? items : [el("li", { class: "muted" }, "No active rollouts.")]));
  }

  filters.addEventListener("change", () => { offset = 0; devices(); });
  poll(devices, 2000);
  poll(async () => { await Promise.all([summary(), alerts(), rollouts()]); }, 10000);
})();
