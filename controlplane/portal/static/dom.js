// DOM helpers: h() builds elements (text is always set as text, never parsed as HTML), the notice bar.
// ---- little helpers ---------------------------------------------------------------------------

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value);  // CSSOM: the page's CSP allows no style attributes
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const main = () => $("#main");
let fieldSeq = 0;
export const uid = (prefix) => `${prefix}-${++fieldSeq}`;

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function notice(text, kind = "info") {
  const box = $("#notice");
  box.replaceChildren(h("span", {}, text), h("button", { type: "button", class: "link", "aria-label": "Dismiss",
    onclick: () => { box.hidden = true; } }, "×"));
  box.dataset.kind = kind;
  box.hidden = false;
}
