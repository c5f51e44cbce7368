// The sign-in view (the lab's form, or Keycloak); a sign-in is announced as the window event cds:signed-in.

import { h, uid } from "./dom.js";
import { api, oidcSignIn, session } from "./session.js";
import { showError, submitWith } from "./ui.js";

export function signInView() {
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
  submitWith(form, slot, async () => {
    const tokens = await api("POST", "/portal/lab-token", { userId: form.userId.value.trim(), admin: form.admin.checked });
    session.save(tokens);
    window.dispatchEvent(new CustomEvent("cds:signed-in"));  // the frame (app.js) connects and routes
  });
  root.append(form);
  return root;
}
