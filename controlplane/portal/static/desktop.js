// The desktop view (desktop-api.md): one desktop per user, its progress, actions and live status.

import { $, h, main, notice, uid, when } from "./dom.js";
import { live, onView } from "./live.js";
import { api, session } from "./session.js";
import { actionBar, badge, dialog, query, showError, submitWith } from "./ui.js";

// ---- desktops (desktop-api.md) --------------------------------------------------------------------

export const PROGRESSION = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING"];
export const TRANSITIONAL = new Set(["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "STOPPING", "DELETING"]);
// A create or start under way: deleting now cancels it (the API stops the job and removes what it made).
export const CANCELLABLE = new Set(["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING"]);
export const STATUS_TEXT = {
  PENDING: "Creation initiated", PROVISIONING: "Cloning the VM from its template", STARTING: "Booting",
  WAITING_FOR_IP: "Waiting for its network", CONFIGURING: "Setting up the connection", RUNNING: "Ready",
  STOPPING: "Shutting down", STOPPED: "Powered off", DELETING: "Being removed", DELETED: "Removed", FAILED: "Failed",
};

export function progress(status) {
  const step = PROGRESSION.indexOf(status);
  if (!TRANSITIONAL.has(status)) return null;
  const determinate = step >= 0;
  const percent = determinate ? Math.round((step / (PROGRESSION.length - 1)) * 100) : null;
  const label = `${STATUS_TEXT[status] || status}${determinate ? ` (step ${step + 1} of ${PROGRESSION.length})` : ""}`;
  return h("div", { class: "progress", role: "progressbar", "aria-label": "Desktop progress",
    "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": determinate ? percent : undefined, "aria-valuetext": label },
  h("div", { class: determinate ? "bar" : "bar indeterminate", style: determinate ? { width: `${Math.max(percent, 4)}%` } : undefined }),
  h("span", { class: "progress-label" }, label));
}

export async function desktopView() {
  const root = h("section", { "aria-labelledby": "desktop-title" }, h("h1", { id: "desktop-title" }, "My desktop"));
  const slot = h("div", { class: "slot" });
  const body = h("div");
  root.append(slot, body);
  main().replaceChildren(root);
  let desktop = null;
  // Moves whenever the page learns something newer about the desktop (a load starts, a create, an action
  // or an event answers). A load whose list was read before that is stale: the socket's "open", late
  // on a slow link, used to read "no desktop" just before a create and answer after it, which put the
  // empty form back under the user and dropped every later event of the desktop they had made.
  let version = 0;
  function newer() {  // what the page now holds is newer than any load in flight
    version++;
    root.setAttribute("aria-busy", "false");
  }

  async function load() {
    const mine = ++version;
    root.setAttribute("aria-busy", "true");
    try {  // a user has at most one desktop that is not DELETED (desktop-api.md, 409 DESKTOP_ALREADY_EXISTS)
      const list = (await api("GET", `/api/v1/desktops${query({ userId: session.userId })}`)).data.desktops;
      if (mine !== version) return;
      desktop = list.filter((d) => d.status !== "DELETED").sort((a, b) => b.id - a.id)[0] || null;
      slot.replaceChildren();
    } catch (err) {
      if (mine === version) showError(slot, err);
      return;
    } finally {
      if (mine === version) root.setAttribute("aria-busy", "false");
    }
    draw();
  }

  function draw() {
    // Still no desktop and the form is up: keep it, with what the user typed and where the focus is
    // (the live socket's first "open", late on a slow link, reloads and used to redraw it under them).
    if (!desktop && body.firstElementChild && body.firstElementChild.matches("form.card")) return;
    body.replaceChildren(desktop ? desktopCard() : createForm());
  }

  function createForm() {
    const nameId = uid("name");
    const formSlot = h("div");
    const plans = session.config.plans;
    const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "create-title" },
      h("h2", { id: "create-title" }, "Create your desktop"),
      h("p", { class: "muted" }, "You have no desktop yet. Pick a plan: it is ready in a minute or two."),
      h("label", { for: nameId }, "Name ", h("span", { class: "muted" }, "(optional)")),
      h("input", { id: nameId, name: "name", maxlength: 100, placeholder: `Desktop-${session.userId}` }),
      h("fieldset", { class: "plans" }, h("legend", {}, "Plan"),
        plans.map((plan) => {
          const id = uid("plan");
          return h("div", { class: "plan" },
            h("input", { type: "radio", name: "plan", id, value: plan.name, checked: plan.name === session.config.defaultPlan }),
            h("label", { for: id },
              h("strong", {}, plan.name),
              h("span", {}, `${plan.cpuCores} vCPU · ${plan.memoryMb / 1024} GB`),
              h("span", { class: "muted" }, plan.description)));
        })),
      h("button", { type: "submit", class: "primary" }, "Create desktop"), formSlot);
    submitWith(form, formSlot, async () => {
      const request = { userId: session.userId, plan: new FormData(form).get("plan") };
      if (form.name.value.trim()) request.name = form.name.value.trim();
      const created = (await api("POST", "/api/v1/desktops", request)).data;
      newer();
      desktop = created;
      slot.replaceChildren();
      draw();
    });
    return form;
  }

  function desktopCard() {
    const d = desktop;
    const { actions, actionSlot, add } = actionBar();
    if (d.status === "RUNNING") add("Open", openDesktop, "primary");
    if (d.status === "STOPPED") add("Start", () => act("POST", `/api/v1/desktops/${d.id}/start`));
    if (d.status === "RUNNING") add("Stop…", stopDesktop);
    if (CANCELLABLE.has(d.status)) add("Cancel…", cancelDesktop, "danger");
    else if (d.status !== "DELETING" && d.status !== "STOPPING") add("Delete…", deleteDesktop, "danger");
    return h("article", { class: "card desktop", "aria-labelledby": "desktop-name", dataset: { status: d.status } },
      h("div", { class: "row" }, h("h2", { id: "desktop-name" }, d.name), badge(d.status)),
      h("p", { class: "status-message", "aria-live": "polite" }, d.statusMessage || STATUS_TEXT[d.status] || ""),
      progress(d.status),
      h("dl", { class: "facts" },
        h("dt", {}, "Plan"), h("dd", {}, `${d.plan} · ${d.cpuCores} vCPU · ${d.memoryMb / 1024} GB`),
        h("dt", {}, "IP address"), h("dd", {}, d.ipAddress || "—"),
        h("dt", {}, "Created"), h("dd", {}, when(d.createdAt)),
        h("dt", {}, "Last opened"), h("dd", { class: "last-opened" }, when(d.lastAccessedAt))),
      actions, actionSlot, h("div", { id: "viewer" }));
  }

  async function act(method, path, request) {
    const answer = await api(method, path, request);
    newer();
    if (answer && answer.data) desktop = answer.data;
    draw();
  }

  async function openDesktop() {
    const c = (await api("GET", `/api/v1/desktops/${desktop.id}/connect`)).data;
    const viewer = $("#viewer", body);
    const expires = c.expiresAt ? ` Signed in to Guacamole by a one-time link (valid until ${when(c.expiresAt)}).` : "";
    viewer.replaceChildren(h("section", { class: "viewer", "aria-label": "Desktop viewer" },
      h("div", { class: "row" },
        h("p", { class: "muted" }, `Connected over ${c.protocol.toUpperCase()}.${expires}`),
        h("button", { type: "button", onclick: openInTab }, "Open in a new tab"),
        h("button", { type: "button", onclick: () => viewer.replaceChildren() }, "Close viewer")),
      h("iframe", { src: c.connectionUrl, title: `Desktop ${desktop.name}`, allow: "clipboard-read; clipboard-write; fullscreen" })));
    viewer.querySelector("iframe").focus();
    // /connect moved lastAccessedAt: show the server's time in place (a redraw would close the frame).
    const cell = $(".last-opened", body);
    if (await reread() && cell) cell.textContent = when(desktop.lastAccessedAt);
  }

  // The desktop as the API has it now (status changes and /connect move its address and times).
  // False, keeping what the page had, when the read fails or the desktop went or was replaced meanwhile.
  async function reread() {
    const id = desktop.id;
    let fresh;
    try { fresh = (await api("GET", `/api/v1/desktops/${id}`)).data; } catch { return false; }
    if (!desktop || desktop.id !== id) return false;
    desktop = fresh;
    return true;
  }

  // A link of /connect may be single-use (auth-json) and the frame used this one: a new tab gets its
  // own. The tab is opened at once (while the click still counts as the user's), then sent there.
  async function openInTab() {
    const tab = window.open("about:blank", "_blank");
    try {
      const c = (await api("GET", `/api/v1/desktops/${desktop.id}/connect`)).data;
      if (tab) { tab.opener = null; tab.location.href = c.connectionUrl; } else { location.assign(c.connectionUrl); }
    } catch (err) {
      if (tab) tab.close();
      throw err;
    }
  }

  async function stopDesktop() {
    const id = uid("force");
    const answer = await dialog("Stop the desktop?", h("div", {},
      h("p", {}, "The desktop shuts down gracefully; open programs are asked to close."),
      h("div", { class: "check" }, h("input", { type: "checkbox", id, name: "force", value: "yes" }),
        h("label", { for: id }, "Force power off")),
      h("p", { class: "warning" }, "⚠ Force power off turns the VM off immediately without a graceful shutdown. ",
        "This may result in data loss or file system corruption. Use only when necessary.")), "Stop desktop");
    if (!answer) return;
    await act("POST", `/api/v1/desktops/${desktop.id}/stop`, { force: answer.force === "yes" });
  }

  async function cancelDesktop() {
    const answer = await dialog(`Cancel ${desktop.name}?`, h("p", {},
      "The desktop is stopped where it is and removed, with whatever was made of it so far."),
      "Cancel and remove", { danger: true, cancelLabel: "Keep going" });
    if (!answer) return;
    await act("DELETE", `/api/v1/desktops/${desktop.id}`);
  }

  async function deleteDesktop() {
    const answer = await dialog(`Delete ${desktop.name}?`, h("p", {},
      "Its VM and disk are removed for good, with everything on them. This cannot be undone."), "Delete desktop", { danger: true });
    if (!answer) return;
    await act("DELETE", `/api/v1/desktops/${desktop.id}`);
    if (!desktop || desktop.status === "DELETED") { desktop = null; draw(); }
  }

  onView(live.on("desktop_status", async (event) => {
    if (!desktop || event.desktop_id !== desktop.id) return;
    newer();
    desktop = { ...desktop, status: event.status, statusMessage: event.statusMessage };
    if (event.status === "DELETED") {
      desktop = null;
      notice("Your desktop was deleted.");
      draw();
      return;
    }
    if (!TRANSITIONAL.has(event.status)) {  // settled: its address and times changed too
      await reread();
      if (!desktop) return;  // deleted while it was read: the DELETED event drew the form
    }
    const viewerOpen = $("#viewer iframe", body) && desktop.status === "RUNNING";
    if (!viewerOpen) draw();
  }));
  onView(live.on("open", load));  // (re)connected: catch up with anything missed
  await load();
}
