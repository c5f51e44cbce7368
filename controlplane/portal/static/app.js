// The Cloud Desktop portal: one page over the two public APIs and the WebSocket /ws.
// No framework and no build: DOM built with h() (text is always set as text, never parsed as HTML).

// ---- little helpers ---------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
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

const $ = (selector, root = document) => root.querySelector(selector);
const main = () => $("#main");
let fieldSeq = 0;
const uid = (prefix) => `${prefix}-${++fieldSeq}`;

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

function notice(text, kind = "info") {
  const box = $("#notice");
  box.replaceChildren(h("span", {}, text), h("button", { type: "button", class: "link", "aria-label": "Dismiss",
    onclick: () => { box.hidden = true; } }, "×"));
  box.dataset.kind = kind;
  box.hidden = false;
}

// ---- errors: each API's own envelope ------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

function parseError(status, body) {
  if (body && typeof body === "object") {
    if (body.success === false && body.error) {  // the Desktop API (desktop-api.md)
      return new ApiError(status, body.error, body.message || body.error, body.details);
    }
    if (body.error && typeof body.error === "object") {  // the projects API (projects-api.md)
      return new ApiError(status, body.error.code, body.error.message || body.error.code, body.error.details);
    }
  }
  return new ApiError(status, "HTTP_" + status, `The server answered ${status}`);
}

// fetch() rejects with a TypeError when the server cannot be reached; anything else is the page's own bug.
function asApiError(err) {
  if (err instanceof ApiError) return err;
  if (err instanceof TypeError && /fetch|network/i.test(err.message)) {
    return new ApiError(0, "NETWORK", "The control plane cannot be reached: check your connection and try again");
  }
  console.error(err);
  return new ApiError(0, "PAGE_ERROR", `Unexpected error in the page: ${err.message || err}`);
}

// An error shown where it happened: a message, the field details as a list, and the fields marked.
function errorBox(err, form) {
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

function showError(slot, err, form) {
  if (!(err instanceof ApiError)) err = asApiError(err);
  slot.replaceChildren(errorBox(err, form));
  if (err.status === 401) signOut("Your session has ended: sign in again.");
}

// ---- the session ----------------------------------------------------------------------------------

const store = window.sessionStorage;
const session = {
  config: null,
  get token() { return store.getItem("cds.token"); },
  get claims() {
    const token = this.token;
    if (!token) return null;
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(decodeURIComponent(escape(atob(part))));
    } catch { return null; }
  },
  get userId() {
    const claims = this.claims || {};
    return claims[this.config.userClaim || "sub"] || claims.sub;
  },
  get isAdmin() {
    const claims = this.claims || {};
    const role = this.config.adminRole || "admin";
    const roles = new Set([...(claims.roles || []), ...((claims.realm_access || {}).roles || [])]);
    const client = this.config.oidc && this.config.oidc.clientId;
    if (client) for (const r of ((claims.resource_access || {})[client] || {}).roles || []) roles.add(r);
    return roles.has(role);
  },
  save(tokens) {
    store.setItem("cds.token", tokens.access_token);
    if (tokens.refresh_token) store.setItem("cds.refresh", tokens.refresh_token);
    store.setItem("cds.expires", String(Date.now() + (tokens.expires_in || 300) * 1000));
    scheduleRefresh();
  },
  clear() {
    for (const key of ["cds.token", "cds.refresh", "cds.expires", "cds.id_token"]) store.removeItem(key);
  },
};

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  const text = await response.text();
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) throw parseError(response.status, data);
  return data;
}

// ---- signing in -----------------------------------------------------------------------------------

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

async function oidcMetadata() {
  const issuer = session.config.oidc.issuer;
  const response = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new ApiError(response.status, "OIDC", `The identity provider answered ${response.status}`);
  return response.json();
}

async function oidcSignIn() {
  const meta = await oidcMetadata();
  const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
  const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  store.setItem("cds.pkce", JSON.stringify({ verifier, state, back: location.hash || "#/desktop" }));
  const url = new URL(meta.authorization_endpoint);
  url.search = new URLSearchParams({
    client_id: session.config.oidc.clientId, response_type: "code", scope: session.config.oidc.scope,
    redirect_uri: location.origin + "/", state, code_challenge: challenge, code_challenge_method: "S256",
  }).toString();
  location.assign(url.toString());
}

// Back from the identity provider with ?code=...&state=...: trade the code for tokens.
async function oidcCallback() {
  const params = new URLSearchParams(location.search);
  if (!params.has("code") && !params.has("error")) return false;
  const pending = JSON.parse(store.getItem("cds.pkce") || "null");
  store.removeItem("cds.pkce");
  history.replaceState(null, "", "/" + ((pending && pending.back) || "#/desktop"));
  if (params.has("error")) throw new ApiError(401, params.get("error"), params.get("error_description") || "Sign-in was refused");
  if (!pending || pending.state !== params.get("state")) throw new ApiError(401, "OIDC_STATE", "The sign-in answer does not match this page's request: sign in again");
  const meta = await oidcMetadata();
  const response = await fetch(meta.token_endpoint, {
    method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({ grant_type: "authorization_code", code: params.get("code"), client_id: session.config.oidc.clientId,
      redirect_uri: location.origin + "/", code_verifier: pending.verifier }),
  });
  const tokens = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError(401, tokens.error || "OIDC", tokens.error_description || "The identity provider refused the sign-in");
  if (tokens.id_token) store.setItem("cds.id_token", tokens.id_token);
  session.save(tokens);
  return true;
}

let refreshTimer = null;
function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const expires = Number(store.getItem("cds.expires") || 0);
  if (!expires) return;
  const inMs = Math.max(5000, expires - Date.now() - 30000);
  refreshTimer = setTimeout(refreshToken, inMs);
}

// Keycloak's tokens last minutes (projects-api.md, "Token Refresh"): refresh them before they expire.
async function refreshToken() {
  const refresh = store.getItem("cds.refresh");
  if (!refresh || session.config.signIn !== "oidc") {
    if (Number(store.getItem("cds.expires") || 0) <= Date.now() + 30000) signOut("Your session has ended: sign in again.");
    return;
  }
  try {
    const meta = await oidcMetadata();
    const response = await fetch(meta.token_endpoint, {
      method: "POST", headers: { "Content-Type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ grant_type: "refresh_token", client_id: session.config.oidc.clientId, refresh_token: refresh }),
    });
    if (!response.ok) throw new Error(String(response.status));
    session.save(await response.json());  // an open /ws stays signed in; a reconnect uses the new token
  } catch {
    signOut("Your session could not be renewed: sign in again.");
  }
}

function signOut(message) {
  session.clear();
  live.close();
  clearTimeout(refreshTimer);
  renderChrome();
  route();
  if (message) notice(message, "error");
}

function signInView() {
  const root = h("section", { class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"));
  const slot = h("div");
  const mode = session.config.signIn;
  if (mode === "oidc") {
    root.append(h("p", {}, "Sign in with your organisation's account."),
      h("button", { type: "button", class: "primary", onclick: () => oidcSignIn().catch((e) => showError(slot, e)) },
        "Sign in with Keycloak"), slot);
    return root;
  }
  if (mode !== "lab") {
    root.append(h("p", { class: "error", role: "alert" },
      "No sign-in is configured: set CONTROLPLANE_OIDC_ISSUER and CONTROLPLANE_OIDC_CLIENT_ID (Keycloak)."));
    return root;
  }
  const userField = uid("user");
  const adminField = uid("admin");
  const form = h("form", { novalidate: true },
    h("p", { class: "muted" }, "The lab has no identity provider: choose any user name. ",
      "Production signs in through Keycloak."),
    h("label", { for: userField }, "User ID"),
    h("input", { id: userField, name: "userId", required: true, autocomplete: "username", maxlength: 64,
      placeholder: "user_12345", autofocus: true }),
    h("div", { class: "check" },
      h("input", { id: adminField, name: "admin", type: "checkbox" }),
      h("label", { for: adminField }, "Sign in as an administrator")),
    h("button", { type: "submit", class: "primary" }, "Sign in"), slot);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const tokens = await api("POST", "/portal/lab-token", { userId: form.userId.value.trim(), admin: form.admin.checked });
      session.save(tokens);
      renderChrome();
      live.connect();
      if (!location.hash || location.hash === "#/signin") location.hash = "#/desktop";
      else route();
    } catch (err) {
      showError(slot, err, form);
    } finally {
      button.disabled = false;
    }
  });
  root.append(form);
  return root;
}

// ---- live updates: the WebSocket /ws (projects-api.md, "WebSocket API") ----------------------------

const live = {
  ws: null, rooms: new Set(), handlers: new Map(), retry: 0, timer: null, wanted: false, ready: false,
  on(type, fn) {
    if (!this.handlers.has(type)) this.handlers.set(type, new Set());
    this.handlers.get(type).add(fn);
    return () => this.handlers.get(type).delete(fn);
  },
  emit(type, event) {
    for (const fn of this.handlers.get(type) || []) fn(event);
  },
  indicator(state) {
    const el = $("#live");
    el.dataset.state = state;
    el.textContent = state === "on" ? "● live updates on" : state === "connecting" ? "◌ connecting…" : "○ live updates off";
  },
  connect() {
    this.wanted = true;
    if (!session.token || (this.ws && this.ws.readyState <= 1)) return;
    this.indicator("connecting");
    const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: session.token }));
    ws.onmessage = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      if (event.type === "auth_ok") {
        this.retry = 0;
        this.ready = true;
        this.indicator("on");
        for (const room of this.rooms) ws.send(JSON.stringify({ type: "join", project_id: room }));
        this.emit("open", event);
        return;
      }
      if (event.type === "pong") return;
      this.emit(event.type, event);
    };
    ws.onclose = () => {
      this.ready = false;
      if (this.ws === ws) this.ws = null;
      this.indicator("off");
      this.emit("close", {});
      if (this.wanted && session.token) {
        const delay = Math.min(30000, 1000 * 2 ** this.retry++);
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.connect(), delay);
      }
    };
  },
  close() {
    this.wanted = false;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close();
    this.ws = null;
    this.rooms.clear();
  },
  join(projectId) {
    this.rooms.add(projectId);
    if (this.ready) this.ws.send(JSON.stringify({ type: "join", project_id: projectId }));
  },
  leave(projectId) {
    this.rooms.delete(projectId);
    if (this.ready) this.ws.send(JSON.stringify({ type: "leave", project_id: projectId }));
  },
};

// Subscriptions of the view on screen, dropped when another view is shown.
let viewCleanups = [];
function onView(fn) { viewCleanups.push(fn); }
function leaveView() {
  for (const fn of viewCleanups) fn();
  viewCleanups = [];
}

// ---- desktops (desktop-api.md) --------------------------------------------------------------------

const PROGRESSION = ["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "RUNNING"];
const TRANSITIONAL = new Set(["PENDING", "PROVISIONING", "STARTING", "WAITING_FOR_IP", "CONFIGURING", "STOPPING", "DELETING"]);
const STATUS_TEXT = {
  PENDING: "Creation initiated", PROVISIONING: "Cloning the VM from its template", STARTING: "Booting",
  WAITING_FOR_IP: "Waiting for its network", CONFIGURING: "Setting up the connection", RUNNING: "Ready",
  STOPPING: "Shutting down", STOPPED: "Powered off", DELETING: "Being removed", DELETED: "Removed", FAILED: "Failed",
};

function badge(status) {
  return h("span", { class: `badge s-${String(status).toLowerCase()}` }, status);
}

function progress(status) {
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

// A row of buttons whose actions show their errors below it; a button is disabled while it works.
function actionBar() {
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

function dialog(title, body, confirmText, { danger = false } = {}) {
  return new Promise((resolve) => {
    const titleId = uid("dialog");
    const form = h("form", { method: "dialog" },
      h("h2", { id: titleId }, title), body,
      h("div", { class: "actions" },
        h("button", { value: "cancel", type: "submit" }, "Cancel"),
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

async function desktopView() {
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
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      const request = { userId: session.userId, plan: new FormData(form).get("plan") };
      if (form.name.value.trim()) request.name = form.name.value.trim();
      try {
        const created = (await api("POST", "/api/v1/desktops", request)).data;
        newer();
        desktop = created;
        slot.replaceChildren();
        draw();
      } catch (err) {
        showError(formSlot, err, form);
        button.disabled = false;
      }
    });
    return form;
  }

  function desktopCard() {
    const d = desktop;
    const { actions, actionSlot, add } = actionBar();
    if (d.status === "RUNNING") add("Open", openDesktop, "primary");
    if (d.status === "STOPPED") add("Start", () => act("POST", `/api/v1/desktops/${d.id}/start`));
    if (d.status === "RUNNING") add("Stop…", stopDesktop);
    if (d.status !== "DELETING") add("Delete…", deleteDesktop, "danger");
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

// ---- projects (projects-api.md) -------------------------------------------------------------------

async function projectsView() {
  const root = h("section", { "aria-labelledby": "projects-title" }, h("h1", { id: "projects-title" }, "Projects"));
  const slot = h("div", { class: "slot" });
  const invitations = h("div");
  const list = h("div");
  root.append(slot, invitations, list, projectCreateForm());
  main().replaceChildren(root);

  let loads = 0;
  async function load() {  // the newest read wins: an older one answering late is dropped
    const ticket = ++loads;
    try {
      const [mine, invites] = await Promise.all([api("GET", "/api/projects"), api("GET", "/api/invitations")]);
      if (ticket !== loads) return;
      drawInvitations(invites.invitations.filter((i) => i.status === "sent"));  // open ones
      list.replaceChildren(dataTable("Your projects", ["Name", "Status", "VM address", "Created"], mine.projects,
        (p) => [h("a", { href: `#/projects/${encodeURIComponent(p.id)}` }, p.name), badge(p.status), p.vm_ip || "—",
          when(p.created_at)], "No projects yet: create one below."));
    } catch (err) { if (ticket === loads) showError(slot, err); }
  }

  function drawInvitations(pending) {
    if (!pending.length) { invitations.replaceChildren(); return; }
    invitations.replaceChildren(h("section", { class: "card", "aria-labelledby": "inv-title" },
      h("h2", { id: "inv-title" }, "Invitations"),
      h("ul", { class: "plain" }, pending.map((i) => h("li", {},
        `${i.invited_by || "Someone"} invited you to ${i.project_name || i.project_id} as ${i.role}. `,
        h("button", { type: "button", class: "primary", onclick: () => answer(i, "accept") }, "Accept"), " ",
        h("button", { type: "button", onclick: () => answer(i, "decline") }, "Decline"))))));
  }

  async function answer(invitation, verb) {
    try {
      await api("POST", `/api/invitations/${encodeURIComponent(invitation.id)}/${verb}`);
      if (verb === "accept") { location.hash = `#/projects/${encodeURIComponent(invitation.project_id)}`; return; }
      await load();
    } catch (err) { showError(slot, err); }
  }

  onView(live.on("open", load));
  await load();
}

function projectCreateForm() {
  const nameId = uid("pname");
  const descId = uid("pdesc");
  const osId = uid("pos");
  const slot = h("div");
  const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "pcreate-title" },
    h("h2", { id: "pcreate-title" }, "New project"),
    h("label", { for: nameId }, "Name"), h("input", { id: nameId, name: "name", required: true, maxlength: 100 }),
    h("label", { for: descId }, "Description ", h("span", { class: "muted" }, "(optional)")),
    h("textarea", { id: descId, name: "description", maxlength: 2000, rows: 2 }),
    h("label", { for: osId }, "Operating system"),
    h("select", { id: osId, name: "os" }, session.config.projectOs.map((os) =>
      h("option", { value: os, selected: os === session.config.defaultOs }, os))),
    h("button", { type: "submit", class: "primary" }, "Create project"), slot);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const created = await api("POST", "/api/projects", { name: form.name.value, description: form.description.value, os: form.os.value });
      location.hash = `#/projects/${encodeURIComponent(created.project_id)}`;
    } catch (err) {
      showError(slot, err, form);
      button.disabled = false;
    }
  });
  return form;
}

async function projectView(projectId) {
  const root = h("section", { "aria-labelledby": "project-title" });
  const slot = h("div", { class: "slot" });
  const head = h("div");
  const people = h("div", { class: "card" });
  const chat = h("section", { class: "card chat", "aria-labelledby": "chat-title" });
  root.append(h("p", {}, h("a", { href: "#/projects" }, "← All projects")), slot, head,
    h("div", { class: "columns" }, chat, people));
  main().replaceChildren(root);
  let project = null;
  let myRole = null;

  async function load() {
    try {
      project = await api("GET", `/api/projects/${encodeURIComponent(projectId)}`);
    } catch (err) {
      showError(slot, err);
      return;
    }
    const me = (project.collaborators || []).find((c) => c.user_id === session.userId);
    myRole = me ? me.role : (session.isAdmin ? "admin" : null);
    drawHead();
    drawPeople();
    await loadChat();
  }

  function drawHead() {
    const p = project;
    const { actions, actionSlot, add } = actionBar();
    const canRun = myRole === "owner" || myRole === "editor" || myRole === "admin";
    if (canRun && p.status === "stopped") add("Start", () => projectAct("start"));
    if (canRun && p.status === "running") add("Stop", () => projectAct("stop"));
    if (myRole === "owner" || myRole === "admin") add("Delete…", deleteProject, "danger");
    const folder = p.shared_folder && p.shared_folder.url ? p.shared_folder.url : p.shared_folder_url;
    head.replaceChildren(h("div", { class: "card", dataset: { status: p.status } },
      h("div", { class: "row" }, h("h1", { id: "project-title" }, p.name), badge(p.status)),
      p.description ? h("p", {}, p.description) : null,
      h("p", { class: "status-message", "aria-live": "polite" }, p.status_message || ""),
      h("dl", { class: "facts" },
        h("dt", {}, "Your role"), h("dd", {}, myRole || "—"),
        h("dt", {}, "VM address"), h("dd", {}, p.vm_ip || "—"),
        h("dt", {}, "Network"), h("dd", {}, p.network || "—"),
        h("dt", {}, "Shared folder"), h("dd", {}, folder ? h("a", { href: folder, target: "_blank", rel: "noopener" }, folder) : "—"),
        h("dt", {}, "Created"), h("dd", {}, when(p.created_at))),
      actions, actionSlot));
  }

  async function projectAct(verb) {
    await api("POST", `/api/projects/${encodeURIComponent(projectId)}/${verb}`, {});
    await load();
  }

  async function deleteProject() {
    const ok = await dialog(`Delete ${project.name}?`, h("p", {},
      "The project's VM, network, chat and shared folder are removed for every member. This cannot be undone."),
    "Delete project", { danger: true });
    if (!ok) return;
    await api("DELETE", `/api/projects/${encodeURIComponent(projectId)}`);
    notice(`Project ${project.name} is being deleted.`);
    location.hash = "#/projects";
  }

  function drawPeople() {
    const isOwner = myRole === "owner" || myRole === "admin";
    const slot2 = h("div");
    const emailId = uid("email");
    const roleId = uid("role");
    const invite = isOwner ? h("form", { novalidate: true, class: "inline" },
      h("h3", {}, "Invite someone"),
      h("label", { for: emailId }, "Email"), h("input", { id: emailId, name: "email", type: "email", required: true }),
      h("label", { for: roleId }, "Role"),
      h("select", { id: roleId, name: "role" }, h("option", { value: "editor" }, "editor"), h("option", { value: "viewer" }, "viewer")),
      h("button", { type: "submit", class: "primary" }, "Invite"), slot2) : null;
    if (invite) invite.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("POST", `/api/projects/${encodeURIComponent(projectId)}/collaborators`, { email: invite.email.value.trim(), role: invite.role.value });
        notice(`Invitation sent to ${invite.email.value.trim()}.`);
        invite.reset();
        slot2.replaceChildren();
      } catch (err) { showError(slot2, err, invite); }
    });
    people.replaceChildren(h("h2", {}, "Collaborators"),
      h("ul", { class: "plain people" }, (project.collaborators || []).map((c) => h("li", {},
        h("span", {}, `${c.name || c.user_id}`, c.email ? h("span", { class: "muted" }, ` <${c.email}>`) : null),
        " ", badge(c.role),
        isOwner && c.role !== "owner" ? h("button", { type: "button", class: "link danger",
          "aria-label": `Remove ${c.name || c.user_id}`, onclick: () => removeMember(c) }, "Remove") : null))),
      invite || "");
  }

  async function removeMember(member) {
    const ok = await dialog(`Remove ${member.name || member.user_id}?`, h("p", {},
      "They lose access to the project, its VM and its chat."), "Remove", { danger: true });
    if (!ok) return;
    try {
      await api("DELETE", `/api/projects/${encodeURIComponent(projectId)}/collaborators/${encodeURIComponent(member.user_id)}`);
      await load();
    } catch (err) { showError(slot, err); }
  }

  const seen = new Set();
  const log = h("ol", { class: "messages", role: "log", "aria-live": "polite", "aria-label": "Chat messages" });
  function addMessage(m) {
    if (seen.has(m.id)) return;
    seen.add(m.id);
    const who = m.role === "assistant" ? `Assistant${m.model ? ` (${m.model})` : ""}` : (m.user_id === session.userId ? "You" : (m.user_id || m.role));
    log.append(h("li", { class: `msg ${m.role}`, dataset: { id: m.id } },
      h("div", { class: "meta" }, h("strong", {}, who), " ", h("time", { datetime: m.timestamp }, when(m.timestamp))),
      h("div", { class: "content" }, m.content),
      m.error ? h("div", { class: "error" }, m.error) : null));
    log.scrollTop = log.scrollHeight;
  }

  async function loadChat() {
    const canWrite = myRole && myRole !== "viewer";
    const msgId = uid("msg");
    const chatSlot = h("div");
    const form = h("form", { class: "send", novalidate: true },
      h("label", { for: msgId, class: "sr-only" }, "Message"),
      h("textarea", { id: msgId, name: "message", rows: 2, required: true, placeholder: "Ask the assistant, or say something to the team",
        disabled: !canWrite }),
      h("button", { type: "submit", class: "primary", disabled: !canWrite }, "Send"), chatSlot);
    form.message.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); form.requestSubmit(); }
    });
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = form.message.value.trim();
      if (!text) return;
      const button = form.querySelector("button");
      button.disabled = true;
      chatSlot.replaceChildren(h("p", { class: "muted" }, "The assistant is answering…"));
      try {
        await api("POST", "/api/chat", { project_id: projectId, message: text });
        form.message.value = "";
        chatSlot.replaceChildren();
        await refreshHistory();
      } catch (err) { showError(chatSlot, err, form); }
      button.disabled = false;
      form.message.focus();
    });
    chat.replaceChildren(h("h2", { id: "chat-title" }, "Chat"), log, form,
      canWrite ? "" : h("p", { class: "muted" }, "Viewers read the chat; editors and owners write in it."));
    await refreshHistory();
  }

  async function refreshHistory() {
    try {
      const history = await api("GET", `/api/chat/${encodeURIComponent(projectId)}/history`);
      for (const m of history.messages) addMessage(m);
    } catch (err) { showError(slot, err); }
  }

  live.join(projectId);
  onView(() => live.leave(projectId));
  onView(live.on("chat_message", (event) => { if (event.project_id === projectId) addMessage(event.message); }));
  onView(live.on("project_status", (event) => {
    if (event.project_id !== projectId || !project) return;
    if (event.status === "deleted") { notice(`Project ${project.name} was deleted.`); location.hash = "#/projects"; return; }
    project = { ...project, status: event.status, vm_ip: event.vm_ip, status_message: event.status_message };
    drawHead();
  }));
  onView(live.on("collaborator_activity", (event) => {
    if (event.project_id !== projectId) return;
    const who = (event.user && (event.user.name || event.user.id)) || "Someone";
    if (event.user && event.user.id === session.userId) return;
    log.append(h("li", { class: "activity" }, `${who}: ${String(event.activity).replace(/_/g, " ")}`));
    if (/^(joined_project|left_project|removed|invited|accepted)/.test(event.activity || "")) load();
  }));
  await load();
}

// ---- admin ----------------------------------------------------------------------------------------

async function adminView() {
  const root = h("section", { "aria-labelledby": "admin-title" }, h("h1", { id: "admin-title" }, "Administration"));
  main().replaceChildren(root);
  if (!session.isAdmin) {
    root.append(h("p", { class: "error", role: "alert" }, "Only administrators see this page."));
    return;
  }
  root.append(await adminDesktops(), await adminPools(), await adminAudit());
}

function filterForm(fields, onSubmit) {
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
function dataTable(caption, headers, rows, cells, empty = "Nothing to show.", rowAttrs = () => ({})) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", { class: "table" },
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, rows.map((row) => h("tr", rowAttrs(row), cells(row).map((cell) => h("td", {}, cell))))));
}

// One admin card: a title, an error slot, the content `load` draws (again on each filter).
function adminCard(id, title, filters, load) {
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

function query(params) {
  const q = new URLSearchParams(Object.entries(params).filter(([, v]) => v));
  return q.toString() ? `?${q}` : "";
}

async function adminDesktops() {
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

function poolForm(p, reload, slot) {
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

async function adminPools() {
  const { box, reload } = adminCard("ap-title", "Warm pool", null, async (_filters, again, slot) => dataTable(
    "Pools per plan", ["Plan", "Size", "Power", "Ready", "Filling", "Failed", "Set by", "Change"],
    (await api("GET", "/api/v1/admin/pools")).data.pools,
    (p) => [p.plan, p.size, p.power, p.ready, p.filling,
      [p.failed, p.lastFailure ? h("div", { class: "muted" }, p.lastFailure) : null], p.source, poolForm(p, again, slot)]));
  await reload();
  return box;
}

async function adminAudit() {
  const { box, reload } = adminCard("aa-title", "Audit log", [{ name: "userId", label: "User", placeholder: "user_12345" }],
    async (filters) => dataTable("Latest requests", ["When", "User", "Request", "Target", "Result"],
      (await api("GET", `/api/v1/admin/audit${query({ limit: 50, ...filters })}`)).data.entries,
      (e) => [when(e.at), [e.userId || "—", e.admin ? " (admin)" : ""], `${e.method} ${e.path}`, e.target || "—",
        `${e.status} ${e.result}`], "No entries."));
  await reload();
  return box;
}

// ---- the frame: navigation and routing ------------------------------------------------------------

function renderChrome() {
  const signedIn = Boolean(session.token);
  $("#nav").hidden = !signedIn;
  $("#who").hidden = !signedIn;
  $("#nav a[data-view=admin]").hidden = !(signedIn && session.isAdmin);
  $("#who-name").textContent = signedIn ? `${session.userId}${session.isAdmin ? " (admin)" : ""}` : "";
}

async function route() {
  leaveView();
  const hash = location.hash || "#/desktop";
  if (!session.token) {
    main().replaceChildren(signInView());
    return;
  }
  const [, view, id] = hash.split("/");
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  try {
    if (view === "projects" && id) await projectView(decodeURIComponent(id));
    else if (view === "projects") await projectsView();
    else if (view === "admin") await adminView();
    else await desktopView();
  } catch (err) {
    main().replaceChildren(errorBox(asApiError(err)));
  }
  document.title = `${$("h1", main()) ? $("h1", main()).textContent + " · " : ""}Cloud Desktop`;
}

async function start() {
  $("#sign-out").addEventListener("click", () => {
    const idToken = store.getItem("cds.id_token");
    const wasOidc = session.config.signIn === "oidc";
    signOut();
    if (wasOidc) {  // end the Keycloak session too, then come back here
      oidcMetadata().then((meta) => {
        if (!meta.end_session_endpoint) return;
        const url = new URL(meta.end_session_endpoint);
        url.search = new URLSearchParams({ post_logout_redirect_uri: location.origin + "/", client_id: session.config.oidc.clientId,
          ...(idToken ? { id_token_hint: idToken } : {}) }).toString();
        location.assign(url.toString());
      }).catch(() => {});
    }
  });
  try {
    session.config = await api("GET", "/portal/config.json");
  } catch (err) {
    main().replaceChildren(errorBox(asApiError(err)));
    return;
  }
  try {
    if (session.config.signIn === "oidc") await oidcCallback();
  } catch (err) {
    notice(err.message, "error");
  }
  if (session.token && Number(store.getItem("cds.expires") || 0) <= Date.now()) session.clear();
  scheduleRefresh();
  renderChrome();
  if (session.token) live.connect();
  window.addEventListener("hashchange", route);
  await route();
}

start();
