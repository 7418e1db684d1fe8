// datablame serve: what every page uses. User data only ever reaches the page through textContent (el below).
"use strict";

const CONTEXT = JSON.parse(document.getElementById("context").textContent);
const CSRF = document.querySelector('meta[name="csrf"]').content;

// An element: el("td", {class: "num"}, "text", child, …); strings become text nodes, never HTML.
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// Call the API: GET without a body, POST (with the CSRF header) with one. Returns {status, data}.
async function api(path, body) {
  const options = {credentials: "same-origin", headers: {}};
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.headers["X-CSRF-Token"] = CSRF;
    options.body = JSON.stringify(body);
  }
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (e) { data = {error: response.statusText}; }
  return {status: response.status, data};
}

let toastTimer = null;
function toast(message, error) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.className = error ? "error" : "";
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { box.hidden = true; }, error ? 6000 : 2500);
}

function badge(status) {
  const known = ["open", "accepted", "rejected", "relabeled"].includes(status);
  return el("span", {class: "badge b-" + (known ? status : "other")}, status);
}

function fmt(x, digits) {
  return x === null || x === undefined ? "" : Number(x).toPrecision(digits || 3);
}

// A table of training examples (explanations, evidence): id, label (red when it is not `label`), score, text.
function neighbourTable(rows, label, extra) {
  const head = el("tr", {}, el("th", {class: "num"}, "example"), el("th", {}, "label"),
                  el("th", {class: "num"}, "score"), el("th", {class: "text"}, "text"), extra ? el("th", {}, "") : null);
  const body = rows.map(n => el("tr", {"data-example": n.id},
    el("td", {class: "num"}, n.id), el("td", {class: label && n.label !== label ? "label-differs" : null}, n.label),
    el("td", {class: "num"}, fmt(n.score, 3)), el("td", {class: "text"}, n.text), extra ? el("td", {}, extra(n)) : null));
  return el("table", {class: "neighbours"}, el("thead", {}, head), el("tbody", {}, body));
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("user-form");
  if (!form) return;
  form.addEventListener("submit", async event => {
    event.preventDefault();
    const {status, data} = await api("/api/user", {name: document.getElementById("user-input").value});
    if (status === 200) location.reload(); else toast(data.error, true);
  });
});
