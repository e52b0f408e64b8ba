// Rollouts page: the list (paged, filtered by status) and the start form, which posts
// JSON to /api/rollouts with the CSRF header and then opens the new rollout's page.
"use strict";
(function () {
  const { el, text, stamp, get, post, query, poll, pager, canChange } = window.EF;
  const limit = 25;
  let offset = 0;
  const filters = document.getElementById("rollout-filters");
  const form = document.getElementById("start-rollout");
  const errorLine = document.getElementById("start-error");
  const list = (value) => String(value || "").split(",").map((s) => s.trim()).filter(Boolean);

  async function models() {
    const select = document.getElementById("model-version");
    const page = await get("/api/models?limit=1000");
    const options = page.data.map((m) => el("option", { value: JSON.stringify([m.name, m.version]) },
      `${m.name} ${m.version} (${m.runtime}${m.device_classes.length ? `; ${m.device_classes.join(", ")}` : ""})`));
    select.replaceChildren(...(options.length ? options : [el("option", { value: "" }, "no published models")]));
  }

  async function rollouts() {
    const status = new FormData(filters).get("status");
    const page = await get(`/api/rollouts${query({ status, limit, offset })}`);
    const rows = page.data.map((r) => el("tr", { dataset: { rollout: r.id } },
      el("td", {}, el("a", { href: `/console/rollouts/${r.id}` }, `#${r.id}`)),
      el("td", {}, `${r.model} ${r.version}`),
      el("td", {}, el("span", { class: `status ${r.status}` }, r.status)),
      el("td", {}, r.wave >= 0 ? String(r.wave + 1) : "\u2014"),
      el("td", { class: "reason" }, text(r.reason)), el("td", {}, r.created_by), el("td", {}, stamp(r.created_at))));
    document.querySelector("#rollouts tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", { class: "empty" }, el("td", { colspan: 7 }, "No rollouts."))]));
    pager(document.getElementById("rollout-pager"), { offset, limit, count: page.count, onPage: (o) => { offset = o; rollouts(); } });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorLine.textContent = "";
    if (!canChange()) return;
    const data = new FormData(form);
    if (!data.get("model_version")) { errorLine.textContent = "Pick a published model."; return; }
    const [model, version] = JSON.parse(data.get("model_version"));
    const body = { model, version, waves: list(data.get("waves")), cohort: {}, gates: {} };
    for (const key of ["device_classes", "tags", "device_ids"]) {
      const values = list(data.get(key));
      if (values.length) body.cohort[key] = values;
    }
    for (const key of ["min_soak_s", "min_samples"]) {
      if (data.get(key) !== "") body.gates[key] = Number(data.get(key));
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const rollout = await post("/api/rollouts", body);
      window.location = `/console/rollouts/${rollout.id}`;
    } catch (err) {
      errorLine.textContent = `Not started: ${err.message}`;
      button.disabled = false;
    }
  });
  filters.addEventListener("change", () => { offset = 0; rollouts(); });
  models().catch((err) => { errorLine.textContent = `Models unavailable: ${err.message}`; });
  poll(rollouts, 5000);
})();
