// The explain page: a text (or a list, aggregated) → prediction, supporting and opposing training examples;
// any listed example can be flagged.
"use strict";

async function flagExample(n, kind, button) {
  const {status, data} = await api("/api/flag-example",
    {example_id: n.id, kind, note: document.getElementById("flag-note").value});
  if (status !== 200) { toast(data.error, true); return; }
  button.disabled = true;
  button.textContent = `flagged ${kind} (flag ${data.flags[0].id})`;
  toast(`example ${n.id} flagged ${kind}`);
}

function flagButtons(n) {
  return ["biased", "mislabeled"].map(kind => el("button", {class: "flag-" + kind, type: "button",
    onclick: event => flagExample(n, kind, event.currentTarget)}, "flag " + kind));
}

document.getElementById("explain-form").addEventListener("submit", async event => {
  event.preventDefault();
  const text = document.getElementById("text").value;
  const aggregate = document.getElementById("aggregate").checked;
  const top = Number(document.getElementById("top").value) || 10;
  const result = document.getElementById("result");
  result.replaceChildren(el("p", {class: "muted"}, "explaining…"));
  const body = aggregate ? {texts: text.split("\n"), aggregate: true, top} : {text, top};
  const {status, data} = await api("/api/explain", body);
  if (status !== 200) { result.replaceChildren(el("p", {class: "notice"}, data.error)); return; }
  const p = data.prediction;
  const counts = p.counts ? " · " + Object.entries(p.counts).map(([k, v]) => `${k} ${v}`).join(", ") : "";
  result.replaceChildren(
    el("h2", {}, "Prediction: ", el("b", {id: "prediction"}, p.label), ` (${fmt(p.probability, 3)})${counts}`),
    el("p", {class: "sign"}, `${data.method}, ${data.scoring}. ${data.sign}`),
    el("h3", {}, "Supporting"), el("div", {id: "supporting"}, neighbourTable(data.supporting, p.label, flagButtons)),
    el("h3", {}, "Opposing"), el("div", {id: "opposing"}, neighbourTable(data.opposing, p.label, flagButtons)),
    el("p", {class: "muted"}, `query ${fmt(data.timing.query_vectors_s, 2)} s, search ${fmt(data.timing.search_s, 2)} s`));
});
