// Models: every model the server answers for, fine-tunes under their base, with its facts
// (pomar's GET /v1/pomar/models), load/unload for bases, delete for fine-tunes.
import { get, post, del } from "./api.js";
import { h, clear, when, errorBox, link, bytes } from "./ui.js";

const path = (id) => `/v1/pomar/models/${encodeURIComponent(id)}`;

function params(n) {
  if (!n) return "";
  const [d, u] = n >= 1e9 ? [1e9, "B"] : n >= 1e6 ? [1e6, "M"] : [1e3, "K"];
  return `${(n / d).toFixed(n / d < 10 ? 1 : 0)}${u} params`;
}

function memory(m) {
  if (m.kind === "fine-tune" || m.kind === "checkpoint") return h("span", { class: "muted" }, "on its base");
  if (m.loaded && m.memory_bytes) return h("span", { title: "reckoned while loaded" }, `${bytes(m.memory_bytes)} in use`);
  if (m.memory_required_bytes) return h("span", { class: "muted", title: "estimate to load" }, `needs ${bytes(m.memory_required_bytes)}`);
  return "—";
}

// bases first, each followed by its fine-tunes (and theirs), depth-first
function tree(models) {
  const byParent = new Map();
  const ids = new Set(models.map((m) => m.id));
  for (const m of models) {
    const p = m.parent && ids.has(m.parent) ? m.parent : null;
    if (!byParent.has(p)) byParent.set(p, []);
    byParent.get(p).push(m);
  }
  const out = [];
  const walk = (parent, depth) => {
    for (const m of byParent.get(parent) || []) {
      out.push([m, depth]);
      walk(m.id, depth + 1);
    }
  };
  walk(null, 0);
  return out;
}

export async function modelsPage(main) {
  const body = h("div", { "aria-live": "polite" });
  main.append(
    h("h1", {}, "Models"),
    h("p", { class: "lead" }, "Every model this server answers for. A model that is not loaded is loaded by its first request (or Load); fine-tunes are served on their base."),
    body,
  );
  const act = async (button, busyText, fn) => {
    button.disabled = true;
    button.textContent = busyText;
    try {
      await fn();
      await render();
    } catch (err) {
      await render();
      body.prepend(errorBox(err));
    }
  };
  const render = async () => {
    const [list, health] = await Promise.all([get("/v1/pomar/models"), fetch("/health").then((r) => r.json()).catch(() => ({}))]);
    const engines = new Map((health.engines || []).map((e) => [e.model, e]));
    const rows = tree(list.data).map(([m, depth]) => {
      const k = m.kind;
      const engine = engines.get(m.id);
      const actions = h("div", { class: "row-actions" });
      if (k !== "embedding") actions.append(link(`#/playground?a=${encodeURIComponent(m.id)}`, "Chat", { class: "button" }));
      if (k === "base") {
        const unload = m.loaded;
        const button = h("button", {
          type: "button", "aria-label": `${unload ? "Unload" : "Load"} ${m.id}`,
          dataset: { action: unload ? "unload" : "load" },
          onclick: () => act(button, unload ? "Unloading…" : "Loading…", () => post(`${path(m.id)}/${unload ? "unload" : "load"}`)),
        }, unload ? "Unload" : "Load");
        actions.append(button);
      }
      if (m.parent) {
        actions.append(link(`#/playground?a=${encodeURIComponent(m.parent)}&b=${encodeURIComponent(m.id)}`, "Side by side", { class: "button" }));
        actions.append(h("button", {
          type: "button", class: "danger", "aria-label": `Delete ${m.id}`,
          onclick: async () => {
            if (!confirm(`Delete ${m.id}? Its adapter files are removed.`)) return;
            try {
              await del(`/v1/models/${encodeURIComponent(m.id)}`);
              await render();
            } catch (err) {
              body.prepend(errorBox(err));
            }
          },
        }, "Delete"));
      }
      const state = k === "embedding"
        ? h("span", { class: "badge" }, m.loaded ? "loaded" : "on first use")
        : (m.loaded ? h("span", { class: "badge badge-succeeded" }, m.active_requests ? `loaded · ${m.active_requests} running` : "loaded") : h("span", { class: "badge" }, "not loaded"));
      const backend = engine ? `${engine.backend}${engine.max_batch_size ? ` · batch ${engine.max_batch_size}` : ""}` : (m.backend || "—");
      const format = [m.format, m.precision && m.precision !== "unknown" ? m.precision : null].filter(Boolean).join(" · ") || "—";
      const about = [m.architecture, params(m.parameters), m.context_length ? `${m.context_length.toLocaleString()} ctx` : ""].filter(Boolean).join(" · ");
      return h("tr", { dataset: { model: m.id, loaded: String(m.loaded) } },
        h("td", {}, h("span", { class: "model-id", style: `padding-left:${depth * 1.5}rem` }, depth ? "↳ " : "", h("code", {}, m.id)),
          about ? h("div", { class: "muted small" }, about) : null),
        h("td", { title: `created ${when(m.created)}` }, k, m.pinned ? h("div", { class: "muted small" }, "default") : null),
        h("td", { dataset: { col: "source" }, title: [m.origin, m.path].filter(Boolean).join("\n") },
          m.source, m.origin && m.origin !== m.path && !m.parent ? h("div", { class: "muted small" }, m.origin) : null),
        h("td", { class: "nowrap", dataset: { col: "format" } }, format),
        h("td", { class: "nowrap", dataset: { col: "size" } }, bytes(m.size_bytes)),
        h("td", { class: "nowrap", dataset: { col: "state" } }, state),
        h("td", { class: "nowrap", dataset: { col: "memory" } }, memory(m)),
        h("td", {}, backend),
        h("td", {}, actions));
    });
    const budget = list.budget_bytes ? `; memory ${bytes(list.in_use_bytes)} of ${bytes(list.budget_bytes)} budget in use` : "";
    clear(body, h("table", { class: "models" },
      h("caption", {}, `${list.data.length} models; default: ${health.model || "?"}${budget}`),
      h("thead", {}, h("tr", {}, ["Model", "Kind", "Source", "Format", "Size", "State", "Memory", "Engine", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
  };
  await render();
}
