// The user's own pages (projects-api.md's user settings and usage): the chat settings form, and the
// usage figures with a chart per day (uPlot, vendored in vendor/: nothing from a CDN) and per model.

import { h, main, notice, uid } from "./dom.js";
import { api } from "./session.js";
import { dataTable, showError, submitWith } from "./ui.js";

// ---- settings --------------------------------------------------------------------------------------

export async function settingsView() {
  const root = h("section", { "aria-labelledby": "settings-title" }, h("h1", { id: "settings-title" }, "Settings"));
  const slot = h("div", { class: "slot" });
  root.append(slot);
  main().replaceChildren(root);
  let current;
  try {
    current = await api("GET", "/api/user/settings");
  } catch (err) {
    showError(slot, err);
    return;
  }
  const params = current.model_parameters || {};
  const ids = { model: uid("model"), temperature: uid("temp"), maxTokens: uid("max"), custom: uid("custom"), models: uid("models") };
  const formSlot = h("div");
  const form = h("form", { class: "card", novalidate: true, "aria-labelledby": "chat-settings-title" },
    h("h2", { id: "chat-settings-title" }, "The assistant in your projects"),
    h("label", { for: ids.model }, "Preferred model ", h("span", { class: "muted" }, "(provider/model, e.g. openai/gpt-4)")),
    h("input", { id: ids.model, name: "preferred_model", value: current.preferred_model || "", list: ids.models,
      required: true, maxlength: 200, autocomplete: "off" }),
    h("datalist", { id: ids.models }, ["openai/gpt-4", "openai/gpt-4o-mini", "anthropic/claude-3-opus",
      ...(current.custom_models || [])].map((m) => h("option", { value: m }))),
    h("label", { for: ids.temperature }, "Temperature ", h("span", { class: "muted" }, "(0 to 2: higher is more varied)")),
    h("input", { id: ids.temperature, name: "model_parameters.temperature", type: "number", min: 0, max: 2, step: 0.1,
      value: params.temperature ?? "" }),
    h("label", { for: ids.maxTokens }, "Max tokens per answer"),
    h("input", { id: ids.maxTokens, name: "model_parameters.max_tokens", type: "number", min: 1, step: 1,
      value: params.max_tokens ?? "" }),
    h("label", { for: ids.custom }, "Custom models ", h("span", { class: "muted" }, "(one provider/model per line)")),
    h("textarea", { id: ids.custom, name: "custom_models", rows: 3 }, (current.custom_models || []).join("\n")),
    h("button", { type: "submit", class: "primary" }, "Save settings"), formSlot);
  submitWith(form, formSlot, async () => {
    formSlot.replaceChildren();
    const number = (input) => (input.value.trim() === "" ? undefined : Number(input.value));
    const body = {
      preferred_model: form.preferred_model.value.trim(),
      model_parameters: { temperature: number(form.elements["model_parameters.temperature"]),
        max_tokens: number(form.elements["model_parameters.max_tokens"]) },
      custom_models: form.custom_models.value.split("\n").map((m) => m.trim()).filter(Boolean),
    };
    for (const [key, value] of Object.entries(body.model_parameters)) if (value === undefined) delete body.model_parameters[key];
    const saved = await api("PUT", "/api/user/settings", body);
    notice(`Settings saved: ${saved.settings.preferred_model}.`);
  });
  root.append(form);
}

// ---- usage -----------------------------------------------------------------------------------------

const PERIODS = { last_24_hours: "Last 24 hours", last_7_days: "Last 7 days", last_30_days: "Last 30 days",
  last_90_days: "Last 90 days", all_time: "All time" };

let uplot = null;  // the charting library, loaded with its style the first time a chart is drawn
async function chartLibrary() {
  if (!uplot) {
    document.head.append(h("link", { rel: "stylesheet", href: "/portal/static/vendor/uplot-1.6.32/uPlot.min.css" }));
    uplot = (await import("./vendor/uplot-1.6.32/uPlot.esm.js")).default;
  }
  return uplot;
}

export async function usageView() {
  const root = h("section", { "aria-labelledby": "usage-title" }, h("h1", { id: "usage-title" }, "Usage"));
  const slot = h("div", { class: "slot" });
  const periodId = uid("period");
  const picker = h("select", { id: periodId, name: "period" },
    Object.entries(PERIODS).map(([value, label]) => h("option", { value, selected: value === "last_30_days" }, label)));
  const body = h("div");
  root.append(h("div", { class: "row" }, h("label", { for: periodId }, "Period"), picker), slot, body);
  main().replaceChildren(root);
  picker.addEventListener("change", load);

  async function load() {
    slot.replaceChildren();
    let usage;
    try {
      usage = await api("GET", `/api/user/usage?period=${encodeURIComponent(picker.value)}`);
    } catch (err) {
      showError(slot, err);
      return;
    }
    const models = Object.entries(usage.by_model).sort((a, b) => b[1].tokens - a[1].tokens);
    const requests = models.reduce((sum, [, m]) => sum + m.requests, 0);
    const most = Math.max(1, ...models.map(([, m]) => m.tokens));
    const perDay = h("figure", { class: "card chart", "aria-labelledby": "per-day-title" },
      h("figcaption", { id: "per-day-title" }, "Tokens per day"));
    body.replaceChildren(
      h("dl", { class: "facts totals" },
        h("dt", {}, "Tokens"), h("dd", { dataset: { total: "tokens" } }, usage.total_tokens.toLocaleString()),
        h("dt", {}, "Cost"), h("dd", { dataset: { total: "cost" } }, `$${usage.total_cost.toFixed(2)}`),
        h("dt", {}, "Requests"), h("dd", { dataset: { total: "requests" } }, requests.toLocaleString())),
      perDay,
      h("section", { class: "card", "aria-labelledby": "per-model-title" }, h("h2", { id: "per-model-title" }, "Per model"),
        dataTable("Usage per model", ["Model", "Tokens", "Cost", "Requests"], models, ([name, m]) => [
          name,
          h("span", { class: "bar-cell" }, h("meter", { min: 0, max: most, value: m.tokens, "aria-label": `${name}: tokens` }),
            ` ${m.tokens.toLocaleString()}`),
          `$${m.cost.toFixed(2)}`, m.requests.toLocaleString()], "No model was used in this period.")));
    await drawPerDay(perDay, usage.by_day || [], models.map(([name]) => name));
  }

  // One line per model over the days, and the same figures as a table (for screen readers and keyboards).
  async function drawPerDay(figure, days, names) {
    if (!days.length) { figure.append(h("p", { class: "muted" }, "No usage in this period.")); return; }
    const table = dataTable("Tokens per day and model", ["Day", ...names], days,
      (d) => [d.date, ...names.map((n) => ((d.by_model[n] || {}).tokens || 0).toLocaleString())]);
    const plot = h("div", { class: "plot", role: "img", "aria-label": `Tokens per day for ${names.join(", ")}; the table below has the figures` });
    figure.append(plot, h("details", {}, h("summary", {}, "The figures"), table));
    try {
      const UPlot = await chartLibrary();
      const x = days.map((d) => Date.parse(`${d.date}T00:00:00Z`) / 1000);
      const series = names.map((n) => days.map((d) => (d.by_model[n] || {}).tokens || 0));
      const palette = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b83280", "#718096"];
      new UPlot({
        width: Math.max(280, Math.min(880, figure.clientWidth - 32)), height: 240,
        scales: { x: { time: true } },
        series: [{}, ...names.map((n, i) => ({ label: n, stroke: palette[i % palette.length], width: 2,
          points: { show: true, size: 6 } }))],
        // one tick a day at most, labelled with its date (UTC, as the API counts days)
        axes: [{ space: 70, incrs: [86400, 7 * 86400, 30 * 86400],
          values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toISOString().slice(5, 10)) }, { label: "tokens" }],
      }, [x, ...series], plot);
    } catch (err) {
      plot.replaceChildren(h("p", { class: "muted" }, "The chart could not be drawn; the figures are below."));
      figure.querySelector("details").open = true;
    }
  }

  await load();
}
