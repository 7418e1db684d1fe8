// The flags page: rows drawn from JSON, review by buttons or keys, evidence of the current row.
"use strict";

const FIRST = JSON.parse(document.getElementById("first-page").textContent);
const FILTER = Object.fromEntries([...new URLSearchParams(location.search)]
  .filter(([k, v]) => v && ["status", "kind", "label", "suggested", "source", "text"].includes(k)));
const SORT = new URLSearchParams(location.search).get("sort") || "suspicion";
const state = {flags: [], cursor: null, current: -1, checked: new Set(), allMatching: false, total: 0};
const tbody = document.getElementById("rows");

function row(flag) {
  const to = flag.reviewer_label || flag.suggested_label;
  return el("tr", {"data-id": flag.id, "data-status": flag.status, class: state.checked.has(flag.id) ? "checked" : null,
                   onclick: event => { if (event.target.type !== "checkbox") { choose(indexOf(flag.id)); openEvidence(); } }},
    el("td", {}, el("input", {type: "checkbox", "aria-label": "select flag " + flag.id, checked: state.checked.has(flag.id),
                              onchange: event => check(flag.id, event.target.checked)})),
    el("td", {class: "num"}, flag.id), el("td", {class: "num"}, flag.example_id), el("td", {}, badge(flag.status)),
    el("td", {}, flag.kind), el("td", {}, flag.label, to ? el("span", {class: "arrow"}, " → ") : null, to || ""),
    el("td", {class: "num"}, fmt(flag.score, 3)), el("td", {}, flag.who), el("td", {class: "text"}, flag.text));
}

function indexOf(id) { return state.flags.findIndex(f => f.id === id); }

function add(page) {
  for (const flag of page.flags) { state.flags.push(flag); tbody.append(row(flag)); }
  state.cursor = page.next;
  if (page.total !== null) state.total = page.total;  // counted on the first page only
  document.getElementById("total").textContent = state.total;
  document.getElementById("more").hidden = !page.next;
  document.getElementById("shown").textContent = `${state.flags.length} of ${state.total} shown`;
}

// Put the flags' current state into their rows (after an action, a conflict or an undo).
function update(flags, conflict) {
  for (const flag of flags) {
    const i = indexOf(flag.id);
    if (i < 0) continue;
    state.flags[i] = flag;
    const fresh = row(flag);
    if (conflict) fresh.classList.add("conflict");
    if (i === state.current) fresh.classList.add("current");
    tbody.children[i].replaceWith(fresh);
  }
}

function choose(i) {
  if (i < 0 || i >= state.flags.length) return;
  if (state.current >= 0 && tbody.children[state.current]) tbody.children[state.current].classList.remove("current");
  state.current = i;
  const tr = tbody.children[i];
  tr.classList.add("current");
  tr.scrollIntoView({block: "nearest"});
  if (!document.getElementById("evidence").hidden) openEvidence();
}

function check(id, on) {
  if (on) state.checked.add(id); else state.checked.delete(id);
  const tr = tbody.children[indexOf(id)];
  if (tr) { tr.classList.toggle("checked", on); tr.querySelector("input").checked = on; }
  note();
}

function note() {
  document.getElementById("selected-note").textContent = state.allMatching ? `all ${state.total} matching flags selected`
    : state.checked.size ? `${state.checked.size} selected` : "";
}

async function more() {
  const params = new URLSearchParams({...FILTER, sort: SORT, after: state.cursor});
  const {status, data} = await api("/api/flags?" + params);
  if (status === 200) add(data); else toast(data.error, true);
}

async function reload() {
  state.flags = []; state.current = -1; state.checked.clear(); tbody.replaceChildren();
  const {status, data} = await api("/api/flags?" + new URLSearchParams({...FILTER, sort: SORT}));
  if (status === 200) { add(data); choose(0); } else toast(data.error, true);
}

// accept | reject | relabel (label): the selected rows, all matching flags, or the current row.
async function review(action, label) {
  if (state.allMatching) {
    if (action === "relabel") { toast("relabel selected rows, not all matching flags", true); return; }
    const {status, data} = await api("/api/review", {action, filter: FILTER});
    if (status !== 200) { toast(data.error, true); return; }
    toast(`${action}: ${data.changed} flags`);
    document.getElementById("all-matching").checked = false;
    state.allMatching = false; note();
    await reload();
    return;
  }
  const ids = state.checked.size ? [...state.checked] : state.current >= 0 ? [state.flags[state.current].id] : [];
  if (!ids.length) { toast("no flag chosen: move with j/k or tick rows", true); return; }
  const expected = Object.fromEntries(ids.map(id => [id, state.flags[indexOf(id)].version]));
  const {status, data} = await api("/api/review", {action, label, ids, expected});
  if (status === 409) {
    update(data.current, true);
    toast(data.error + ": shown as it is now", true);
    return;
  }
  if (status !== 200) { toast(data.error, true); return; }
  update(data.flags);
  for (const id of ids) check(id, false);
  toast(`${action === "relabel" ? "relabeled " + label : action + "ed"}: ${data.changed} flag${data.changed === 1 ? "" : "s"}`);
  if (ids.length === 1 && state.current === indexOf(ids[0])) choose(state.current + 1);
}

async function undo() {
  const {status, data} = await api("/api/undo", {});
  if (status === 409) { update(data.current, true); toast(data.error, true); return; }
  if (status !== 200) { toast(data.error, true); return; }
  if (data.flags) update(data.flags); else await reload();  // a large bulk action: the page is drawn again
  toast(`undone: ${data.changed} flag${data.changed === 1 ? "" : "s"}`);
}

async function openEvidence() {
  const aside = document.getElementById("evidence");
  if (state.current < 0) return;
  const flag = state.flags[state.current];
  aside.hidden = false;
  aside.replaceChildren(el("p", {class: "muted"}, `loading the evidence of flag ${flag.id}…`));
  const {status, data} = await api(`/api/flags/${flag.id}/evidence`);
  if (state.flags[state.current] !== flag && state.flags[state.current].id !== flag.id) return;
  if (status !== 200) { aside.replaceChildren(el("p", {class: "notice"}, data.error)); return; }
  const parts = [el("h2", {}, `Flag ${flag.id}: example ${flag.example_id}`), el("p", {class: "text"}, data.flag.text),
    el("p", {}, "label ", el("b", {}, data.flag.label), data.flag.suggested_label ? [" · suggested ", el("b", {}, data.flag.suggested_label)] : "",
       " · ", badge(data.flag.status))];
  if (data.scan) parts.push(el("p", {class: "muted"}, `scan: rank ${data.scan.rank + 1}, suspicion ${fmt(data.scan.score, 3)}, ` +
    `p(given label) ${fmt(data.scan.label_probability, 3)}, suggested ${data.scan.suggested_label}`));
  if (data.problem) parts.push(el("p", {class: "notice"}, data.problem));
  const e = data.evidence;
  if (e) {
    parts.push(el("h3", {}, "Model"), el("p", {}, Object.entries(e.probabilities).map(([k, v]) => `${k} ${fmt(v, 3)}`).join(" · "),
      el("br"), "self-influence ", e.self_influence === null ? "not stored (datablame index computes it)" : fmt(e.self_influence, 4)));
    parts.push(el("p", {class: "sign"}, `${e.method}, ${e.scoring}. ${e.sign}`));
    parts.push(el("h3", {}, `Supporting the prediction (${e.prediction.label})`), neighbourTable(e.supporting, data.flag.label));
    parts.push(el("h3", {}, "Opposing it"), neighbourTable(e.opposing, data.flag.label));
  }
  const history = await api(`/api/flags/${flag.id}/history`);
  if (history.status === 200 && history.data.length) {
    parts.push(el("h3", {}, "History"), el("ul", {}, history.data.map(h => el("li", {},
      `${h.at} ${h.who}: ${h.action}` + (h.before ? ` ${h.before.status} → ${h.after.status}` : "") +
      (h.after.reviewer_label ? ` (${h.after.reviewer_label})` : "") + (h.undone_by ? " (undone)" : "")))));
  }
  aside.replaceChildren(...parts);
}

function help(show) {
  const box = document.getElementById("help");
  box.hidden = show === undefined ? !box.hidden : !show;
}

document.addEventListener("keydown", event => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName) && event.target.type !== "checkbox") return;
  const key = event.key;
  if (key === "j") choose(state.current + 1 < state.flags.length ? state.current + 1 : state.current);
  else if (key === "k") choose(Math.max(state.current - 1, 0));
  else if (key === "a") review("accept");
  else if (key === "r") review("reject");
  else if (key === "u") undo();
  else if (key === "x" && state.current >= 0) { const id = state.flags[state.current].id; check(id, !state.checked.has(id)); }
  else if (key === "o" || key === "Enter") openEvidence();
  else if (key === "?") help();
  else if (key === "Escape") { help(false); document.getElementById("evidence").hidden = true; }
  else if (/^[1-9]$/.test(key) && Number(key) <= CONTEXT.labels.length) review("relabel", CONTEXT.labels[Number(key) - 1]);
  else return;
  event.preventDefault();
  if (key === "j" && state.current === state.flags.length - 1 && state.cursor) more();
});

document.getElementById("more").addEventListener("click", more);
document.getElementById("do-accept").addEventListener("click", () => review("accept"));
document.getElementById("do-reject").addEventListener("click", () => review("reject"));
document.getElementById("do-relabel").addEventListener("click", () => review("relabel", document.getElementById("relabel-to").value));
document.getElementById("do-undo").addEventListener("click", undo);
document.getElementById("do-help").addEventListener("click", () => help());
document.getElementById("all-matching").addEventListener("change", event => { state.allMatching = event.target.checked; note(); });
document.getElementById("check-page").addEventListener("change", event => { for (const f of state.flags) check(f.id, event.target.checked); });
add(FIRST);
choose(0);
