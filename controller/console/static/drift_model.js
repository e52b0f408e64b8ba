// One model's drift: PSI and KS per feature over time with the alert thresholds, and the
// reference window the scores compare against (/api/drift/{model}).
"use strict";
(function () {
  const { el, num, stamp, get, setText, poll, lineChart } = window.EF;
  const model = document.getElementById("drift-model").dataset.model;
  const hours = document.getElementById("drift-hours");
  const box = document.getElementById("features");

  // One series per model version: several versions are scored in the same hour during a
  // rollout, and one line through all of them would zigzag between versions.
  function versionLines(points, key, hoursList) {
    const versions = [...new Set(points.map((p) => p.version ?? ""))].sort();
    return versions.map((v) => {
      const byHour = new Map(points.filter((p) => (p.version ?? "") === v).map((p) => [p.hour, p[key]]));
      return {
        label: `${key} ${v || "(no version)"}`,
        values: hoursList.map((h) => (byHour.has(h) ? byHour.get(h) : null)),
      };
    });
  }

  function featureCharts(feature, points, thresholds) {
    const section = el("section", { class: "panel", dataset: { feature } }, el("h2", {}, feature));
    const grid = el("div", { class: "grid2" });
    const psi = el("div", { class: "chart" });
    const ks = el("div", { class: "chart" });
    grid.append(el("div", {}, el("h3", {}, "PSI"), psi), el("div", {}, el("h3", {}, "KS"), ks));
    section.append(grid);
    box.append(section);
    // Hours as ISO strings in UTC with the same offset: they sort as text.
    const xs = [...new Set(points.map((p) => p.hour))].sort();
    const lines = (key, limit) => versionLines(points, key, xs).concat([
      { label: "threshold", values: xs.map(() => limit ?? null), dash: [6, 4], color: "#c23030" },
    ]);
    lineChart(psi, { xs, lines: lines("psi", thresholds?.psi), height: 180 });
    if (points.some((p) => p.ks !== null && p.ks !== undefined)) {
      lineChart(ks, { xs, lines: lines("ks", thresholds?.ks), height: 180 });
    } else {
      // The categorical "classes" feature is scored by PSI only (labels have no order).
      ks.append(el("p", { class: "nodata" }, "No KS for this feature: it is judged on PSI only."));
    }
  }

  async function refresh() {
    let d;
    try { d = await get(`/api/drift/${encodeURIComponent(model)}?hours=${hours.value}`); }
    catch (err) {
      if (err.status === 404) {
        setText("reference", "No drift data for this model.");
        box.replaceChildren(el("p", { class: "nodata" }, "No drift scores."));
        return;
      }
      throw err;
    }
    const r = d.reference;
    setText("reference", r
      ? `Version ${r.version || "any"}, ${stamp(r.window_start)} to ${stamp(r.window_end)}, ${r.samples} samples; set ${stamp(r.set_at)}${r.reason ? ` (${r.reason})` : ""}.`
      : "No reference window yet: drift is scored against one (set at rollout creation or with edgefleet drift reference).");
    if (d.thresholds) setText("drift-thresholds", `Alert above PSI ${num(d.thresholds.psi, 2)} or KS ${num(d.thresholds.ks, 2)}.`);
    box.replaceChildren();
    const features = Object.entries(d.series || {});
    if (!features.length) { box.append(el("p", { class: "nodata" }, "No drift scores in this window.")); return; }
    for (const [feature, points] of features) featureCharts(feature, points, d.thresholds);
  }
  hours.addEventListener("change", refresh);
  poll(refresh, 60000);
})();
