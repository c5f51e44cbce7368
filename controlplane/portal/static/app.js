// The Cloud Desktop portal: one page over the two public APIs and the WebSocket /ws, in ES modules by page
// (no framework, no build). This module is the frame: navigation, routing and start-up.

import { settingsView, usageView } from "./account.js";
import { adminView } from "./admin.js";
import { desktopView } from "./desktop.js";
import { $, main, notice } from "./dom.js";
import { asApiError } from "./errors.js";
import { leaveView, live } from "./live.js";
import { projectsView, projectView } from "./projects.js";
import { api, oidcCallback, oidcMetadata, scheduleRefresh, session, signOut, store } from "./session.js";
import { signInView } from "./signin.js";
import { errorBox } from "./ui.js";

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
    else if (view === "admin") await adminView(id);
    else if (view === "settings") await settingsView();
    else if (view === "usage") await usageView();
    else await desktopView();
  } catch (err) {
    main().replaceChildren(errorBox(asApiError(err)));
  }
  document.title = `${$("h1", main()) ? $("h1", main()).textContent + " · " : ""}Cloud Desktop`;
}

window.addEventListener("cds:signed-out", (event) => {
  live.close();
  renderChrome();
  route();
  if (event.detail && event.detail.message) notice(event.detail.message, "error");
});

window.addEventListener("cds:signed-in", () => {
  renderChrome();
  live.connect();
  if (!location.hash || location.hash === "#/signin") location.hash = "#/desktop";
  else route();
});

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
