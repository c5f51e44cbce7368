// Live updates: the WebSocket /ws (projects-api.md, "WebSocket API"), and the subscriptions of the view on screen.

import { $ } from "./dom.js";
import { session } from "./session.js";

// ---- live updates: the WebSocket /ws (projects-api.md, "WebSocket API") ----------------------------

export const live = {
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
export function onView(fn) { viewCleanups.push(fn); }
export function leaveView() {
  for (const fn of viewCleanups) fn();
  viewCleanups = [];
}
