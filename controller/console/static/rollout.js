// One rollout: waves as progress bars, each gate's value against its threshold (now and
// over the audited history), and pause / resume / abort / roll back with a confirmation.
"use strict";
(function () {
  const { el, text, num, pct, stamp, get, post, setText, poll, lineChart, canChange } = window.EF;
  const actions = document.getElementById("rollout-actions");
  const id = actions.dataset.rollout;
  const base = `/api/rollouts/${id}`;
  const TERMINAL = new Set(["rolled_back", "completed", "aborted"]);
  // Which command the engine accepts in which status (controller/rollouts/engine.py).
  const ALLOWED = {
    pause: (s) => s === "pending" || s === "running",
    resume: (s) => s === "paused" || s === "halted",
    abort: (s) => !TERMINAL.has(s),
    rollback: (s) => !TERMINAL.has(s) && s !== "rolling_back",
  };
  const CONFIRM = {
    pause: "Pause this rollout? No new devices are assigned and gates are not decided until it resumes.",
    resume: "Resume this rollout?",
    abort: "Abort this rollout? Devices keep what they run now; the rollout cannot be restarted.",
    rollback: "Roll back this rollout? Every assigned device is sent back to the model it ran before.",
  };
  const RATES = new Set(["install_success", "error_rate", "cascade_rate"]);
  const fmt = (gate, v) => (RATES.has(gate) ? pct(v) : gate === "latency_p95" ? `${num(v, 1)} ms` : num(v, 3));

  function buttons(status) {
    for (const button of actions.querySelectorAll("button[data-command]")) {
      button.disabled = !canChange() || !ALLOWED[button.dataset.command](status);
    }
  }

  function waveBar(w) {
    const size = Math.max(w.cumulative_size - (w.previous || 0), w.members, 1);
    const o = w.outcomes || {};
    const seg = (cls, n) => (n ? el("span", { class: `seg ${cls}`, style: { width: `${(100 * n) / size}%` }, title: `${cls}: ${n}` }) : null);
    const done = o.installed || 0;
    const back = (o.reverting || 0) + (o.reverted || 0) + (o.revert_timed_out || 0);
    return el("div", { class: `wave ${w.phase}`, dataset: { wave: w.index } },
      el("div", { class: "wave-head" }, el("b", {}, `Wave ${w.index + 1}`), ` ${w.wave} \u00b7 ${w.members} devices \u00b7 `,
        el("span", { class: "phase" }, w.phase)),
      el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": size, "aria-valuenow": done },
        seg("installed", o.installed), seg("assigned", o.assigned),
        seg("failed", (o.failed || 0) + (o.timed_out || 0)), seg("reverted", back),
        seg("pending", (o.pending || 0) + (o.skipped || 0))),
      el("small", {}, Object.entries(o).map(([k, n]) => `${k} ${n}`).join(" \u00b7 ") || "no devices assigned yet"));
  }

  function gateRow(g) {
    const ratio = g.value !== null && g.threshold ? Math.min(1.5, g.value / g.threshold) : null;
    const meter = el("div", { class: "meter" },
      ratio === null ? null : el("span", { class: `fill ${g.status}`, style: { width: `${(100 * ratio) / 1.5}%` } }),
      g.threshold === null ? null : el("span", { class: "limit", style: { left: `${100 / 1.5}%` } }));
    return el("tr", { class: `gate ${g.status}`, dataset: { gate: g.gate } },
      el("td", {}, g.gate), el("td", {}, el("span", { class: `gstatus ${g.status}` }, g.status)),
      el("td", {}, meter, el("small", {}, `${fmt(g.gate, g.value)} vs ${fmt(g.gate, g.threshold)}`)),
      el("td", { class: "reason" }, g.reason));
  }

  async function rollout() {
    const r = await get(base);
    const status = document.getElementById("rollout-status");
    status.textContent = r.status;
    status.className = `status ${r.status}`;
    setText("rollout-reason", r.reason || "");
    buttons(r.status);
    let previous = 0;
    const waves = r.waves.map((w) => { const bar = waveBar({ ...w, previous }); previous = w.cumulative_size; return bar; });
    document.getElementById("waves").replaceChildren(...waves);
    const gates = r.gates ? r.gates.gates.filter((g) => g.status !== "skip" || g.threshold !== null) : [];
    setText("gate-verdict", r.gates ? `wave ${r.gates.wave + 1}: ${r.gates.verdict} at ${stamp(r.gates.at)}` : "");
    if (gates.length) document.querySelector("#gates tbody").replaceChildren(...gates.map(gateRow));
  }

  async function history() {
    const h = await get(`${base}/history`);
    document.querySelector("#history tbody").replaceChildren(...(h.data.length ? h.data.slice().reverse().map((e) => el("tr", {},
      el("td", {}, stamp(e.at)), el("td", {}, e.action), el("td", {}, e.actor),
      el("td", {}, e.wave === null || e.wave < 0 ? "\u2014" : String(e.wave + 1)), el("td", { class: "reason" }, text(e.reason))))
      : [el("tr", { class: "empty" }, el("td", { colspan: 5 }, "Nothing yet."))]));
    // Gate values over time: every audited gate decision, then the latest evaluation.
    const points = h.data.filter((e) => e.gates).map((e) => ({ at: e.at, gates: e.gates }));
    if (h.last_gate) points.push({ at: h.last_gate.at, gates: h.last_gate.gates });
    points.sort((a, b) => (a.at < b.at ? -1 : 1));
    const names = [...new Set(points.flatMap((p) => p.gates.filter((g) => g.threshold !== null).map((g) => g.gate)))];
    const box = document.getElementById("gate-charts");
    const have = new Set();
    for (const name of names) {
      have.add(name);
      let holder = box.querySelector(`[data-gate="${name}"] .chart`);
      if (!holder) {
        holder = el("div", { class: "chart" });
        box.append(el("div", { dataset: { gate: name } }, el("h3", {}, name), holder));
      }
      const find = (p) => p.gates.find((g) => g.gate === name) || {};
      const scale = RATES.has(name) ? 100 : 1;
      const val = (v) => (v === null || v === undefined ? null : v * scale);
      lineChart(holder, {
        xs: points.map((p) => p.at),
        lines: [
          { label: "value", values: points.map((p) => val(find(p).value)) },
          { label: "threshold", values: points.map((p) => val(find(p).threshold)), dash: [6, 4], color: "#c23030" },
        ],
        yLabel: RATES.has(name) ? "%" : name === "latency_p95" ? "ms" : "",
        height: 160,
      });
    }
    for (const child of [...box.children]) if (!have.has(child.dataset.gate)) child.remove();
    if (!names.length && !box.querySelector(".nodata")) box.replaceChildren(el("p", { class: "nodata" }, "No gate evaluation yet."));
    else if (names.length) box.querySelector(":scope > .nodata")?.remove();
  }

  actions.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-command]");
    if (!button || button.disabled) return;
    const command = button.dataset.command;
    if (!window.confirm(CONFIRM[command])) return;
    setText("command-error", "");
    button.disabled = true;
    try {
      await post(`${base}/${command}`, { reason: `${command} from the console` });
      await Promise.all([rollout(), history()]);
    } catch (err) {
      setText("command-error", `${command} refused: ${err.message}`);
      await rollout().catch(() => {});
    }
  });
  poll(async () => { await Promise.all([rollout(), history()]); }, 3000);
})();
