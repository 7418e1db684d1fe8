// The run page: flag counts refreshed every few seconds; the export form.
"use strict";

const STATUSES = ["open", "accepted", "rejected", "relabeled"];

async function counts() {
  const {status, data} = await api("/api/summary");
  if (status !== 200) return;
  const kinds = Object.keys(data.counts);
  const box = document.getElementById("counts");
  if (!kinds.length) { box.replaceChildren(el("p", {class: "muted"}, "No flags yet.")); return; }
  const head = el("tr", {}, el("th", {}, "kind"), STATUSES.map(s => el("th", {class: "num"}, s)));
  const rows = kinds.map(k => el("tr", {"data-kind": k}, el("td", {}, k),
    STATUSES.map(s => el("td", {class: "num", "data-status": s}, data.counts[k][s] || 0))));
  box.replaceChildren(el("table", {class: "compact", id: "counts-table"}, el("thead", {}, head), el("tbody", {}, rows)));
  document.getElementById("counts-when").textContent = "at " + new Date().toLocaleTimeString();
}

document.getElementById("export-form").addEventListener("submit", async event => {
  event.preventDefault();
  const box = document.getElementById("export-result");
  box.replaceChildren(el("p", {class: "muted"}, "exporting…"));
  const {status, data} = await api("/api/export", {out: document.getElementById("out").value,
    format: document.getElementById("format").value, drop: document.getElementById("drop").checked,
    force: document.getElementById("force").checked});
  if (status !== 200) { box.replaceChildren(el("p", {class: "notice", id: "export-error"}, data.error)); return; }
  box.replaceChildren(el("p", {id: "export-done"}, `${data.rows} examples (${data.relabeled} relabeled, ${data.dropped} dropped) → `,
    el("code", {}, data.out), "; changes → ", el("code", {}, data.changes)));
});

counts();
setInterval(counts, 5000);
