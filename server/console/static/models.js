// Models: every model the server answers for, fine-tunes under their base.
import { get, del } from "./api.js";
import { h, clear, when, errorBox, link } from "./ui.js";

function kind(m) {
  if (m.loaded === null || m.loaded === undefined) return "embedding";
  if (!m.parent) return "base";
  return m.id.includes(":ckpt-step-") ? "checkpoint" : "fine-tune";
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
    h("p", { class: "lead" }, "Every model this server answers for. A model that is not loaded is loaded by its first request; fine-tunes are served on their base."),
    body,
  );
  const render = async () => {
    const [list, health] = await Promise.all([get("/v1/models"), fetch("/health").then((r) => r.json()).catch(() => ({}))]);
    const engines = new Map((health.engines || []).map((e) => [e.model, e]));
    const rows = tree(list.data).map(([m, depth]) => {
      const k = kind(m);
      const engine = engines.get(m.id);
      const actions = h("div", { class: "row-actions" });
      if (k !== "embedding") actions.append(link(`#/playground?a=${encodeURIComponent(m.id)}`, "Chat", { class: "button" }));
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
      const loaded = k === "embedding" ? "—" : (m.loaded ? h("span", { class: "badge badge-succeeded" }, "loaded") : h("span", { class: "badge" }, "not loaded"));
      const backend = engine ? `${engine.backend}${engine.max_batch_size ? ` · batch ${engine.max_batch_size}` : ""}` : "—";
      return h("tr", { dataset: { model: m.id } },
        h("td", {}, h("span", { class: "model-id", style: `padding-left:${depth * 1.5}rem` }, depth ? "↳ " : "", h("code", {}, m.id))),
        h("td", {}, k),
        h("td", {}, loaded),
        h("td", {}, backend),
        h("td", {}, when(m.created)),
        h("td", {}, actions));
    });
    clear(body, h("table", { class: "models" },
      h("caption", {}, `${list.data.length} models; default: ${health.model || "?"}`),
      h("thead", {}, h("tr", {}, ["Model", "Kind", "State", "Engine", "Created", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
  };
  await render();
}
