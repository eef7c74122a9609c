// Playground: streaming chat with one model, or the same conversation with two side by side.
import { get, stream } from "./api.js";
import { h, clear, field, query, errorBox } from "./ui.js";

function options(models, selected, none) {
  const out = none ? [h("option", { value: "" }, "— none (one model) —")] : [];
  for (const m of models) out.push(h("option", { value: m.id, selected: m.id === selected }, m.id));
  return out;
}

function parseJSON(text, what) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

export async function playgroundPage(main) {
  const q = query();
  const list = await get("/v1/models");
  const chatModels = list.data.filter((m) => m.loaded !== null && m.loaded !== undefined);
  const first = q.get("a") || chatModels[0]?.id || "";
  const modelA = h("select", { id: "model-a" }, options(chatModels, first, false));
  const modelB = h("select", { id: "model-b" }, options(chatModels, q.get("b") || "", true));
  for (const [sel, id] of [[modelA, q.get("a")], [modelB, q.get("b")]]) {
    if (id && !chatModels.some((m) => m.id === id)) sel.append(h("option", { value: id, selected: true }, id));
  }
  const system = h("textarea", { id: "system", rows: 3, placeholder: "You are a helpful assistant." });
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: 0.1, placeholder: "model default" });
  const topP = h("input", { id: "top-p", type: "number", min: 0, max: 1, step: 0.05, placeholder: "model default" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, step: 1, value: 256 });
  const seed = h("input", { id: "seed", type: "number", step: 1, placeholder: "random" });
  const stop = h("input", { id: "stop", type: "text", placeholder: "e.g. \\n\\n, END" });
  const schema = h("textarea", { id: "json-schema", rows: 4, placeholder: '{"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}' });
  const tool = h("textarea", { id: "tool", rows: 4, placeholder: '{"name": "get_weather", "description": "…", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}' });
  const prompt = h("textarea", { id: "prompt", rows: 3, placeholder: "Message (Ctrl+Enter to send)" });
  const send = h("button", { type: "submit", class: "primary" }, "Send");
  const stopButton = h("button", { type: "button", disabled: true }, "Stop");
  const reset = h("button", { type: "button" }, "New conversation");
  const columns = h("div", { class: "columns" });
  const problems = h("div", { "aria-live": "assertive" });

  let state = []; // per column: { model, messages, el }
  let controller = null;

  const setupColumns = () => {
    const ids = [modelA.value, modelB.value].filter(Boolean);
    state = ids.map((model, i) => {
      const log = h("div", { class: "log", "aria-live": "polite" });
      const el = h("section", { class: "column", "aria-label": `Answers of ${model}`, dataset: { column: String(i) } },
        h("h2", { class: "column-title" }, h("code", {}, model)), log);
      return { model, messages: [], el, log };
    });
    clear(columns, state.map((s) => s.el));
    columns.classList.toggle("two", state.length === 2);
  };
  modelA.addEventListener("change", setupColumns);
  modelB.addEventListener("change", setupColumns);
  reset.addEventListener("click", setupColumns);
  stopButton.addEventListener("click", () => controller?.abort());

  const request = () => {
    const body = { max_tokens: Number(maxTokens.value) || 256, stream_options: { include_usage: true } };
    if (temperature.value !== "") body.temperature = Number(temperature.value);
    if (topP.value !== "") body.top_p = Number(topP.value);
    if (seed.value !== "") body.seed = Number(seed.value);
    const stops = stop.value.split(",").map((s) => s.trim().replaceAll("\\n", "\n")).filter(Boolean);
    if (stops.length) body.stop = stops.slice(0, 4);
    if (schema.value.trim()) {
      body.response_format = { type: "json_schema", json_schema: { name: "output", schema: parseJSON(schema.value, "The JSON schema"), strict: true } };
    }
    if (tool.value.trim()) {
      const t = parseJSON(tool.value, "The tool definition");
      body.tools = [t.type === "function" ? t : { type: "function", function: t }];
    }
    return body;
  };

  const run = async (col, body, signal) => {
    const content = h("div", { class: "content" });
    const stats = h("p", { class: "stats" }, "waiting…");
    const answer = h("div", { class: "msg assistant", dataset: { state: "streaming" } }, content, stats);
    col.log.append(answer);
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), ...col.messages];
    const started = performance.now();
    let first = null;
    let text = "";
    let tokens = 0;
    let usage = null;
    const calls = [];
    try {
      await stream("/v1/chat/completions", { ...body, model: col.model, messages }, (chunk) => {
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta;
        if (!delta) return;
        if (delta.content) {
          first ??= performance.now();
          text += delta.content;
          tokens += 1;
          content.textContent = text;
          answer.dataset.chunks = String(tokens);
        }
        for (const tc of delta.tool_calls || []) {
          first ??= performance.now();
          const c = (calls[tc.index ?? 0] ??= { name: "", arguments: "" });
          if (tc.function?.name) c.name += tc.function.name;
          if (tc.function?.arguments) c.arguments += tc.function.arguments;
          content.textContent = text + calls.map((c) => `\n→ ${c.name}(${c.arguments})`).join("");
        }
        const n = usage?.completion_tokens ?? tokens;
        stats.textContent = `TTFT ${Math.round(first - started)} ms · ${n} tokens`;
      }, signal);
      const end = performance.now();
      const n = usage?.completion_tokens ?? tokens;
      const rate = first && end > first && n > 1 ? ((n - 1) * 1000) / (end - first) : null;
      stats.textContent = `TTFT ${first ? Math.round(first - started) : "—"} ms · ${rate ? rate.toFixed(1) : "—"} tokens/s · ${n} tokens`;
      answer.dataset.state = "done";
    } catch (err) {
      answer.dataset.state = "error";
      stats.replaceWith(errorBox(err));
    }
    const message = { role: "assistant", content: text };
    if (calls.length) message.tool_calls = calls.map((c, i) => ({ id: `call_${i}`, type: "function", function: c }));
    col.messages.push(message);
  };

  const form = h("form", {
    class: "composer",
    onsubmit: async (e) => {
      e.preventDefault();
      const text = prompt.value.trim();
      if (!text || controller) return;
      clear(problems);
      let body;
      try {
        body = request();
      } catch (err) {
        problems.append(errorBox(err));
        return;
      }
      prompt.value = "";
      controller = new AbortController();
      send.disabled = true;
      stopButton.disabled = false;
      for (const col of state) {
        col.messages.push({ role: "user", content: text });
        col.log.append(h("div", { class: "msg user" }, text));
      }
      await Promise.all(state.map((col) => run(col, body, controller.signal)));
      controller = null;
      send.disabled = false;
      stopButton.disabled = true;
      prompt.focus();
    },
  }, field("Message", prompt), h("div", { class: "actions" }, send, stopButton, reset));
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });

  main.append(
    h("h1", {}, "Playground"),
    h("div", { class: "playground" },
      h("aside", { class: "settings", "aria-label": "Chat settings" },
        field("Model", modelA),
        field("Side by side with", modelB, "The same conversation goes to both, each streaming in its column."),
        field("System prompt", system),
        h("div", { class: "grid2" },
          field("Temperature", temperature), field("top_p", topP),
          field("Max tokens", maxTokens), field("Seed", seed)),
        field("Stop sequences", stop, "Comma-separated, at most 4."),
        h("details", {}, h("summary", {}, "Structured output and tools"),
          field("JSON schema (response_format)", schema),
          field("Tool definition (a function)", tool))),
      h("div", { class: "chat" }, problems, columns, form)));
  setupColumns();
  return () => controller?.abort();
}
