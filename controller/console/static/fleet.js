// Live fleet table: polls the JSON API and redraws rows, so the page never needs a reload.
"use strict";
(function () {
  const POLL_MS = 2000;
  const body = document.querySelector("#devices tbody");
  const text = (v) => (v === null || v === undefined || v === "" ? "\u2014" : String(v));
  const cell = (content) => { const td = document.createElement("td"); td.append(content); return td; };

  function stamp(iso) {
    if (!iso) return "\u2014";
    const d = new Date(iso.endsWith("Z") || iso.includes("+") ? iso : iso + "Z");
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function row(d) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.id;
    const state = document.createElement("span");
    state.className = `state ${d.state}`;
    state.textContent = d.state;
    const stateCell = cell(state);
    if (d.state_reason) {
      const why = document.createElement("small");
      why.textContent = ` (${d.state_reason})`;
      stateCell.append(why);
    }
    if (d.quarantined) {
      tr.className = "quarantined";
      const flag = document.createElement("span");
      flag.className = "quarantine";
      flag.title = d.quarantine_reason || "";
      flag.textContent = d.quarantine_reason ? `quarantined: ${d.quarantine_reason}` : "quarantined";
      stateCell.append(" ", flag);
    }
    tr.append(
      cell(d.id), stateCell, cell(stamp(d.last_seen)), cell(text(d.device_class)),
      cell(text(d.runtimes.join(", "))), cell(text(d.models.map((m) => m.name).join(", "))),
      cell(d.cpu_percent === null ? "\u2014" : d.cpu_percent.toFixed(0)), cell(text(d.requests_total)),
    );
    return tr;
  }

  async function refresh() {
    try {
      const res = await fetch("/api/devices?limit=1000", { credentials: "same-origin" });
      if (res.status === 401) { window.location = "/login"; return; }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const page = await res.json();
      body.replaceChildren(...page.data.map(row));
      document.getElementById("count-online").textContent = page.online;
      document.getElementById("count-offline").textContent = page.offline;
      document.getElementById("count-quarantined").textContent = page.quarantined;
      document.getElementById("count-total").textContent = page.count;
      document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      document.getElementById("updated").textContent = `update failed: ${err.message}`;
    }
  }
  refresh();
  setInterval(refresh, POLL_MS);
})();
