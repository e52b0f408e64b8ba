// Audit page: /api/audit with the form's filters, newest first, one page at a time. It
// refreshes on a search or a page change, not on a timer: a log being read should not move.
"use strict";
(function () {
  const { el, stamp, get, query, pager, setText } = window.EF;
  const form = document.getElementById("audit-filters");
  const limit = 50;
  let offset = 0;

  // datetime-local is the browser's local time; the API wants an absolute time.
  const iso = (local) => (local ? new Date(local).toISOString() : "");

  async function refresh() {
    const f = new FormData(form);
    setText("audit-error", "");
    let page;
    try {
      page = await get(`/api/audit${query({
        actor: f.get("actor").trim(), action: f.get("action").trim(), target: f.get("target").trim(),
        q: f.get("q").trim(), since: iso(f.get("since")), until: iso(f.get("until")), limit, offset,
      })}`);
    } catch (err) { setText("audit-error", `Search failed: ${err.message}`); return; }
    const rows = page.data.map((e) => el("tr", { dataset: { entry: e.id } },
      el("td", {}, stamp(e.at)), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.target),
      el("td", { class: "reason" }, e.reason),
      el("td", { class: "mono clip", title: JSON.stringify(e.detail) }, JSON.stringify(e.detail))));
    document.querySelector("#audit tbody").replaceChildren(...(rows.length ? rows
      : [el("tr", { class: "empty" }, el("td", { colspan: 6 }, "No entries match."))]));
    pager(document.getElementById("audit-pager"), { offset, limit, count: page.count, onPage: (o) => { offset = o; refresh(); } });
    setText("updated", `updated ${new Date().toLocaleTimeString()}`);
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); offset = 0; refresh(); });
  refresh();
})();
