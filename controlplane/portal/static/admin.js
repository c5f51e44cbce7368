// The admin view: desktops, warm pools and the audit log, each with filters.

import { h, main, notice, uid, when } from "./dom.js";
import { api, session } from "./session.js";
import { badge, dataTable, query, showError } from "./ui.js";

// ---- admin ----------------------------------------------------------------------------------------

const TABS = [["desktops", "Desktops", () => adminDesktops()], ["pools", "Warm pools", () => adminPools()],
  ["audit", "Audit log", () => adminAudit()]];

// Tabs (the WAI-ARIA tabs pattern: arrow keys, Home and End move between them), one panel each, drawn
// when first shown; the tab shown is in the address (#/admin/<tab>), so a reload or a link keeps it.
export async function adminView(shown) {
  const root = h("section", { "aria-labelledby": "admin-title" }, h("h1", { id: "admin-title" }, "Administration"));
  main().replaceChildren(root);
  if (!session.isAdmin) {
    root.append(h("p", { class: "error", role: "alert" }, "Only administrators see this page."));
    return;
  }
  const tablist = h("div", { role: "tablist", "aria-label": "Administration", class: "tabs" });
  const panels = h("div");
  const tabs = TABS.map(([key, label, draw]) => {
    const tab = h("button", { type: "button", role: "tab", id: `tab-${key}`, "aria-controls": `panel-${key}`,
      "aria-selected": "false", tabindex: "-1" }, label);
    const panel = h("div", { role: "tabpanel", id: `panel-${key}`, "aria-labelledby": `tab-${key}`, hidden: true });
    tab.addEventListener("click", () => select(key));
    tablist.append(tab);
    panels.append(panel);
    return { key, tab, panel, draw, drawn: false };
  });
  async function select(key, focus = false) {
    for (const t of tabs) {
      const on = t.key === key;
      t.tab.setAttribute("aria-selected", String(on));
      t.tab.tabIndex = on ? 0 : -1;
      t.panel.hidden = !on;
      if (on && focus) t.tab.focus();
      if (on && !t.drawn) { t.drawn = true; t.panel.append(await t.draw()); }
    }
    history.replaceState(null, "", `#/admin/${key}`);
  }
  tablist.addEventListener("keydown", (event) => {
    const at = tabs.findIndex((t) => t.tab === document.activeElement);
    if (at < 0) return;
    const to = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    select(tabs[(to + tabs.length) % tabs.length].key, true);
  });
  root.append(tablist, panels);
  await select(tabs.some((t) => t.key === shown) ? shown : "desktops");
}

export function filterForm(fields, onSubmit) {
  const form = h("form", { class: "filters", role: "search" });
  for (const field of fields) {
    const id = uid(field.name);
    form.append(h("div", {}, h("label", { for: id }, field.label),
      field.options ? h("select", { id, name: field.name }, h("option", { value: "" }, "any"),
        field.options.map((o) => h("option", { value: o }, o)))
        : h("input", { id, name: field.name, placeholder: field.placeholder || "" })));
  }
  form.append(h("button", { type: "submit" }, "Filter"));
  form.addEventListener("submit", (event) => { event.preventDefault(); onSubmit(Object.fromEntries(new FormData(form))); });
  return form;
}

// A table of rows, each drawn by `cells` (a list of cell contents), or `empty` when there are none.
// One admin card: a title, an error slot, the content `load` draws (again on each filter).
export function adminCard(id, title, filters, load) {
  const box = h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title));
  const slot = h("div");
  const content = h("div");
  const reload = async (values = {}) => {
    slot.replaceChildren();
    try { content.replaceChildren(await load(values, reload, slot)); } catch (err) { showError(slot, err); }
  };
  box.append(filters ? filterForm(filters, reload) : "", slot, content);
  return { box, reload };
}

export async function adminDesktops() {
  const statuses = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING", "STOPPING", "STOPPED", "DELETING", "DELETED", "FAILED"];
  const { box, reload } = adminCard("ad-title", "All desktops",
    [{ name: "userId", label: "User", placeholder: "user_12345" }, { name: "status", label: "Status", options: statuses }],
    async (filters) => dataTable("Desktops", ["ID", "User", "Name", "Plan", "Status", "IP address", "Updated"],
      (await api("GET", `/api/v1/desktops${query(filters)}`)).data.desktops,
      (d) => [d.id, d.userId, d.name, d.plan,
        [badge(d.status), d.status === "FAILED" ? h("div", { class: "muted" }, d.statusMessage) : null],
        d.ipAddress || "—", when(d.updatedAt)],
      "No desktops match.", (d) => ({ dataset: { status: d.status } })));
  await reload();
  return box;
}

export function poolForm(p, reload, slot) {
  const sizeId = uid("size");
  const powerId = uid("power");
  const form = h("form", { class: "inline", "aria-label": `Pool of ${p.plan}` },
    h("label", { for: sizeId, class: "sr-only" }, `Size of the ${p.plan} pool`),
    h("input", { id: sizeId, name: "size", type: "number", min: 0, value: p.size, class: "small" }),
    h("label", { for: powerId, class: "sr-only" }, `Power of the ${p.plan} pool`),
    h("select", { id: powerId, name: "power" }, ["running", "stopped"].map((o) => h("option", { value: o, selected: o === p.power }, o))),
    h("button", { type: "submit" }, "Set"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    slot.replaceChildren();
    try {
      await api("PUT", `/api/v1/admin/pools/${encodeURIComponent(p.plan)}`, { size: Number(form.size.value), power: form.power.value });
      notice(`The ${p.plan} pool is being resized to ${form.size.value}.`);
      await reload();
    } catch (err) { showError(slot, err, form); }
  });
  return form;
}

export async function adminPools() {
  const { box, reload } = adminCard("ap-title", "Warm pool", null, async (_filters, again, slot) => dataTable(
    "Pools per plan", ["Plan", "Size", "Power", "Ready", "Filling", "Failed", "Set by", "Change"],
    (await api("GET", "/api/v1/admin/pools")).data.pools,
    (p) => [p.plan, p.size, p.power, p.ready, p.filling,
      [p.failed, p.lastFailure ? h("div", { class: "muted" }, p.lastFailure) : null], p.source, poolForm(p, again, slot)]));
  await reload();
  return box;
}

export async function adminAudit() {
  const { box, reload } = adminCard("aa-title", "Audit log", [{ name: "userId", label: "User", placeholder: "user_12345" }],
    async (filters) => dataTable("Latest requests", ["When", "User", "Request", "Target", "Result"],
      (await api("GET", `/api/v1/admin/audit${query({ limit: 50, ...filters })}`)).data.entries,
      (e) => [when(e.at), [e.userId || "—", e.admin ? " (admin)" : ""], `${e.method} ${e.path}`, e.target || "—",
        `${e.status} ${e.result}`], "No entries."));
  await reload();
  return box;
}
