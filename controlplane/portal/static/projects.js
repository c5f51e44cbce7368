// The projects views (projects-api.md): the list, invitations, a project with its members and chat.

import { h, main, notice, uid, when } from "./dom.js";
import { live, onView } from "./live.js";
import { api, session } from "./session.js";
import { actionBar, badge, dataTable, dialog, showError, submitWith } from "./ui.js";

// ---- projects (projects-api.md) -------------------------------------------------------------------

export async function projectsView() {
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

export function projectCreateForm() {
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
  submitWith(form, slot, async () => {
    const created = await api("POST", "/api/projects", { name: form.name.value, description: form.description.value, os: form.os.value });
    location.hash = `#/projects/${encodeURIComponent(created.project_id)}`;
  });
  return form;
}

export async function projectView(projectId) {
  const root = h("section", { "aria-labelledby": "project-title" });
  const slot = h("div", { class: "slot" });
  const head = h("div");
  const people = h("div", { class: "card" });
  const chat = h("section", { class: "card chat", "aria-labelledby": "chat-title" });
  const viewer = h("div", { id: "project-viewer" });  // outside the head: a status redraw keeps the screen open
  root.append(h("p", {}, h("a", { href: "#/projects" }, "← All projects")), slot, head, viewer,
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
    if (p.status === "running" && myRole) add(canRun ? "Open screen" : "Watch screen", openScreen, "primary");
    if (canRun && p.status === "running") add("Stop", () => projectAct("stop"));
    const busy = p.status === "provisioning" || p.status === "starting";  // deleting now cancels it
    if ((myRole === "owner" || myRole === "admin") && p.status !== "deleting" && p.status !== "stopping") {
      add(busy ? "Cancel…" : "Delete…", deleteProject, "danger");
    }
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

  // The VM's screen: /connect's one-time link (view only for viewers) in a frame, as a desktop's Open.
  async function openScreen() {
    const c = await api("POST", `/api/projects/${encodeURIComponent(projectId)}/connect`, {});
    const mode = c.read_only ? "View only: your role lets you watch, not type." : "You are in control: what you type reaches the VM.";
    viewer.replaceChildren(h("section", { class: "card viewer", "aria-label": "Project screen" },
      h("div", { class: "row" },
        h("p", { class: "muted" }, `${mode} Connected over ${c.protocol.toUpperCase()}; the link was valid until ${when(c.expires_at)}.`),
        h("button", { type: "button", onclick: () => viewer.replaceChildren() }, "Close screen")),
      h("iframe", { src: c.connection_url, title: `Screen of ${project.name}`, allow: "clipboard-read; clipboard-write; fullscreen" })));
    viewer.querySelector("iframe").focus();
  }

  async function projectAct(verb) {
    await api("POST", `/api/projects/${encodeURIComponent(projectId)}/${verb}`, {});
    await load();
  }

  async function deleteProject() {
    const busy = project.status === "provisioning" || project.status === "starting";
    const ok = await dialog(busy ? `Cancel ${project.name}?` : `Delete ${project.name}?`, h("p", {},
      busy ? "The project is stopped where it is and removed, with its network, chat and shared folder, for every member."
        : "The project's VM, network, chat and shared folder are removed for every member. This cannot be undone."),
    busy ? "Cancel and remove" : "Delete project", { danger: true, cancelLabel: busy ? "Keep going" : undefined });
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
    const said = event.activity === "opened_screen" ? `opened the VM's screen${event.read_only ? " (view only)" : ""}`
      : String(event.activity).replace(/_/g, " ");
    log.append(h("li", { class: "activity" }, `${who}: ${said}`));
    if (/^(joined_project|left_project|removed|invited|accepted)/.test(event.activity || "")) load();
  }));
  await load();
}
