// Drift overview: the latest scored hour of each model and feature (/api/drift).
"use strict";
(function () {
  const { el, num, stamp, get, setText, poll } = window.EF;
  const body = document.querySelector("#drift tbody");
  const empty = (message) => body.replaceChildren(el("tr", { class: "empty" }, el("td", { colspan: 8 }, message)));

  async function refresh() {
    let page;
    try { page = await get("/api/drift"); }
    catch (err) { if (err.status === 404) { empty("Drift scoring is not available on this controller."); return; } throw err; }
    if (page.thresholds) setText("thresholds", `Latest scored hour per model and feature. Alert above PSI ${num(page.thresholds.psi, 2)} or KS ${num(page.thresholds.ks, 2)}.`);
    if (!page.data.length) { empty("No drift scores yet: scores appear once devices send drift windows and a reference is set."); return; }
    body.replaceChildren(...page.data.map((d) => el("tr", { class: d.alert ? "bad" : null, dataset: { model: d.model, feature: d.feature } },
      el("td", {}, el("a", { href: `/console/drift/${encodeURIComponent(d.model)}` }, d.model)),
      el("td", {}, d.version || "\u2014"), el("td", {}, d.feature), el("td", {}, stamp(d.hour)),
      el("td", {}, num(d.psi, 3)), el("td", {}, num(d.ks, 3)), el("td", {}, String(d.samples)),
      el("td", {}, d.alert ? "alert" : "ok"))));
  }
  poll(refresh, 30000);
})();
