// Models page: the registry (/api/models) joined with the signed TUF targets metadata
// (/api/models/signatures) and devices per target (/api/models/deployments).
"use strict";
(function () {
  const { el, text, stamp, get, setText, query, poll } = window.EF;
  const filters = document.getElementById("model-filters");

  function size(bytes) {
    const units = ["B", "KiB", "MiB", "GiB"];
    let v = bytes, i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i ? 1 : 0)} ${units[i]}`;
  }

  function signedCell(m, signed) {
    if (!signed) return el("td", { class: "muted" }, "repository unavailable");
    const t = signed.byPath.get(m.target_path);
    if (!t) return el("td", { class: "bad" }, "not in signed targets");
    // A target may carry other hashes only: no sha256 is a mismatch, never an error.
    const sha = typeof t.hashes?.sha256 === "string" ? t.hashes.sha256 : "";
    const ok = sha !== "" && sha === m.sha256 && t.length === m.length;
    return el("td", { class: ok ? "good" : "bad", title: `sha256 ${sha || "missing"}\nlength ${t.length}` },
      `${ok ? "\u2713" : "\u2717 differs:"} targets v${signed.version}`, el("br"),
      el("small", { class: "mono" }, sha ? `sha256 ${sha.slice(0, 16)}\u2026 ${size(t.length)}` : `no sha256 ${size(t.length)}`));
  }

  async function refresh() {
    const name = new FormData(filters).get("name");
    const [registry, deployments, signed] = await Promise.all([
      get(`/api/models${query({ name, limit: 1000 })}`),
      get("/api/models/deployments").catch(() => ({ data: [] })),
      get("/api/models/signatures").then((s) => ({
        version: s.targets_version, expires: s.expires, signatures: s.signatures, threshold: s.threshold,
        byPath: new Map(s.data.map((t) => [t.target_path, t])),
      })).catch((err) => { setText("signing", `Signed targets metadata unavailable: ${err.message}`); return null; }),
    ]);
    if (signed) {
      setText("signing", `Signed targets metadata: version ${signed.version}, ${signed.signatures} signature(s) of ${signed.threshold} needed, expires ${stamp(signed.expires)}.`);
    }
    const where = new Map(deployments.data.map((d) => [d.target_path, d]));
    const rows = registry.data.map((m) => {
      const d = where.get(m.target_path) || { active: 0, other: 0, desired: 0 };
      return el("tr", { dataset: { model: m.name, version: m.version } },
        el("td", {}, m.name), el("td", {}, m.version), el("td", {}, m.runtime),
        el("td", {}, text(m.quantization)), el("td", {}, m.device_classes.length ? m.device_classes.join(", ") : "any"),
        el("td", {}, m.min_agent_version), el("td", {}, size(m.length)), signedCell(m, signed),
        el("td", { class: "devices" }, `${d.active} / ${d.other} / ${d.desired}`),
        el("td", {}, stamp(m.created_at), el("br"), el("small", {}, text(m.created_by))));
    });
    document.querySelector("#models tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", { class: "empty" }, el("td", { colspan: 10 }, "No models published. Publish one with edgefleet models add."))]));
  }

  filters.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });
  filters.addEventListener("change", () => refresh());
  poll(refresh, 15000);
})();
