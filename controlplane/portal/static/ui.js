// Shared pieces of the views: errors shown where they happened, action bars, badges, confirmation dialogs,
// tables and query strings.

import { h, uid } from "./dom.js";
import { ApiError, asApiError } from "./errors.js";
import { signOut } from "./session.js";

// An error shown where it happened: a message, the field details as a list, and the fields marked.
export function errorBox(err, form) {
  const details = Object.entries(err.details || {}).filter(([, v]) => typeof v === "string");
  if (form) {
    for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    for (const [field] of details) {
      const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
      if (input) input.setAttribute("aria-invalid", "true");
    }
  }
  return h("div", { class: "error", role: "alert" },
    h("strong", {}, err.message || "Something went wrong"),
    err.code && !String(err.code).startsWith("HTTP_") ? h("span", { class: "code" }, ` (${err.code})`) : null,
    details.length ? h("ul", {}, details.map(([field, text]) => h("li", {}, `${field}: ${text}`))) : null,
    err.status === 429 ? h("p", {}, "Too many requests: wait a moment and try again.") : null);
}

export function showError(slot, err, form) {
  if (!(err instanceof ApiError)) err = asApiError(err);
  slot.replaceChildren(errorBox(err, form));
  if (err.status === 401) signOut("Your session has ended: sign in again.");
}
// What a status means in words people use; the API's name stays in the tooltip (desktops' statuses
// are upper case, projects' lower case: the same words for both).
export const STATUS_WORDS = {
  PENDING: "Queued", PROVISIONING: "Preparing…", STARTING: "Starting…", WAITING_FOR_IP: "Connecting…",
  CONFIGURING: "Setting up access…", RUNNING: "Running", STOPPING: "Stopping…", STOPPED: "Stopped",
  DELETING: "Deleting…", DELETED: "Deleted", FAILED: "Failed",
};
export function statusWords(status) {
  return STATUS_WORDS[String(status).toUpperCase()] || String(status);
}
export function badge(status) {
  return h("span", { class: `badge s-${String(status).toLowerCase()}`, title: String(status) }, statusWords(status));
}
// A row of buttons whose actions show their errors below it; a button is disabled while it works.
export function actionBar() {
  const actions = h("div", { class: "actions" });
  const actionSlot = h("div");
  const add = (label, fn, cls) => actions.append(h("button", { type: "button", class: cls, onclick: async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    actionSlot.replaceChildren();
    try { await fn(); } catch (err) { showError(actionSlot, err); }
    button.disabled = false;
  } }, label));
  return { actions, actionSlot, add };
}

export function dialog(title, body, confirmText, { danger = false, cancelLabel = "Cancel" } = {}) {
  return new Promise((resolve) => {
    const titleId = uid("dialog");
    const form = h("form", { method: "dialog" },
      h("h2", { id: titleId }, title), body,
      h("div", { class: "actions" },
        h("button", { value: "cancel", type: "submit" }, cancelLabel || "Cancel"),
        h("button", { value: "ok", type: "submit", class: danger ? "danger" : "primary" }, confirmText)));
    const box = h("dialog", { "aria-labelledby": titleId }, form);
    document.body.append(box);
    box.addEventListener("close", () => {
      const ok = box.returnValue === "ok";
      const data = Object.fromEntries(new FormData(form).entries());
      box.remove();
      resolve(ok ? data : null);
    });
    box.showModal();
    box.querySelector("button[value=cancel]").focus();
  });
}
export function dataTable(caption, headers, rows, cells, empty = "Nothing to show.", rowAttrs = () => ({})) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", { class: "table" },
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row), cells(row).map((cell) => h("td", {}, cell))))));
}

export function query(params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  return q.toString() ? `?${q}` : "";
}

// A form whose submit runs `fn` (async) with its button disabled meanwhile; an error is shown in `slot`
// with the form's fields marked.
export function submitWith(form, slot, fn) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await fn();
    } catch (err) {
      showError(slot, err, form);
    } finally {
      button.disabled = false;
    }
  });
}
