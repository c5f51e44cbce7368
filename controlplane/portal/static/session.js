// The session: the token in sessionStorage, calls to the APIs, signing in with Keycloak (OIDC with PKCE),
// refreshing and signing out (announced as the window event cds:signed-out).

import { ApiError, parseError } from "./errors.js";

// ---- the session ----------------------------------------------------------------------------------

export const store = window.sessionStorage;
export const session = {
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

export async function api(method, path, body) {
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

export function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export async function oidcMetadata() {
  const issuer = session.config.oidc.issuer;
  const response = await fetch(`${issuer}/.well-known/openid-configuration`);
  if (!response.ok) throw new ApiError(response.status, "OIDC", `The identity provider answered ${response.status}`);
  return response.json();
}

export async function oidcSignIn() {
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
export async function oidcCallback() {
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
export function scheduleRefresh() {
  clearTimeout(refreshTimer);
  const expires = Number(store.getItem("cds.expires") || 0);
  if (!expires) return;
  const inMs = Math.max(5000, expires - Date.now() - 30000);
  refreshTimer = setTimeout(refreshToken, inMs);
}

// Keycloak's tokens last minutes (projects-api.md, "Token Refresh"): refresh them before they expire.
export async function refreshToken() {
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

// The frame (app.js) closes the live connection, redraws and shows `message`.
export function signOut(message) {
  session.clear();
  clearTimeout(refreshTimer);
  window.dispatchEvent(new CustomEvent("cds:signed-out", { detail: { message } }));
}
