// Data: upload a JSONL file, and datalab's report of it as a page.
import { get, upload, text, all } from "./api.js";
import { h, clear, bytes, when, errorBox, table, link, num } from "./ui.js";
import { histogram } from "./charts.js";

export async function dataPage(main, rest) {
  if (rest[0]) return reportPage(main, rest[0]);
  return filesPage(main);
}

async function filesPage(main) {
  const input = h("input", { type: "file", id: "upload-input", accept: ".jsonl,.json,.txt,application/jsonl" });
  const purpose = h("select", { id: "upload-purpose" },
    h("option", { value: "fine-tune" }, "fine-tune"), h("option", { value: "user_data" }, "user_data"));
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const status = h("p", { role: "status", class: "muted" });
  const list = h("div");
  const send = async (file) => {
    if (!file) return;
    progress.hidden = false;
    progress.value = 0;
    status.textContent = `Uploading ${file.name} (${bytes(file.size)})…`;
    try {
      const f = await upload(file, purpose.value, (p) => { progress.value = p; });
      status.textContent = `Uploaded ${f.filename} as ${f.id}.`;
      location.hash = `#/data/${f.id}`;
    } catch (err) {
      clear(status, errorBox(err));
    } finally {
      progress.hidden = true;
    }
  };
  input.addEventListener("change", () => send(input.files[0]));
  const drop = h("div", { class: "dropzone" },
    h("p", {}, "Drop a JSONL file here, or "),
    h("label", { for: "upload-input", class: "button primary" }, "choose a file"),
    input,
    h("label", { for: "upload-purpose" }, " purpose "), purpose,
    progress, status);
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    send(e.dataTransfer.files[0]);
  });
  main.append(h("h1", {}, "Data"),
    h("p", { class: "lead" }, "Upload a training file and see what a fine-tuning job's validation will find: problems by line, duplicates, PII, token lengths and the estimate."),
    drop, h("h2", {}, "Files"), list);
  const files = (await all("/v1/files?order=desc", 500)).filter((f) => f.purpose !== "fine-tune-results");
  clear(list, files.length ? table(["File", "Name", "Purpose", "Size", "Uploaded", ""], files.map((f) => [
    h("code", {}, f.id), f.filename, f.purpose, bytes(f.bytes), when(f.created_at),
    link(`#/data/${f.id}`, "Report"),
  ])) : h("p", { class: "muted" }, "No files yet."));
}

async function reportPage(main, fileId) {
  const body = h("div", { "aria-busy": "true" }, h("p", { class: "muted" }, "Running datalab over the file…"));
  main.append(h("p", {}, link("#/data", "← Data")), h("h1", {}, "Dataset report"), body);
  const file = await get(`/v1/files/${encodeURIComponent(fileId)}`);
  const report = await get(`/v1/files/${encodeURIComponent(fileId)}/report`);
  let lines = null;
  if (file.bytes <= 5 * 1024 * 1024 && report.problems.some((p) => p.line > 0)) {
    try {
      lines = (await text(`/v1/files/${encodeURIComponent(fileId)}/content`)).split("\n");
    } catch {
      lines = null;
    }
  }
  body.removeAttribute("aria-busy");
  const record = (line) => {
    if (!lines || !line || !lines[line - 1]) return "";
    const t = lines[line - 1];
    return h("code", { class: "record" }, t.length > 240 ? `${t.slice(0, 240)}…` : t);
  };
  const verdict = report.can_train
    ? h("p", { class: "verdict ok", role: "status" }, "✔ This file can train.")
    : h("div", { class: "verdict bad", role: "status" }, h("p", {}, "✘ This file cannot train:"),
      h("ul", {}, report.blocking_reasons.map((r) => h("li", {}, r))));
  const facts = table(["", ""], [
    ["File", `${file.filename} (${file.id}, ${bytes(file.bytes)})`],
    ["Method", report.method],
    ["Records", `${num(report.n_records)} (${num(report.n_valid)} valid, ${num(report.n_invalid)} invalid)`],
    ["Duplicates removed", num(report.n_duplicates)],
    ["Kept", `${num(report.n_kept)}: ${num(report.n_train)} train / ${num(report.n_valid_split)} validation`],
  ]);
  facts.classList.add("facts");

  // problems: by code (count), then each kept problem with its line and the record
  const byCode = Object.entries(report.problem_counts).sort((a, b) => b[1] - a[1]);
  const problems = h("section", { "aria-labelledby": "problems-h" }, h("h2", { id: "problems-h" }, "Problems"));
  if (!byCode.length) problems.append(h("p", { class: "muted" }, "None."));
  for (const [code, count] of byCode) {
    const items = report.problems.filter((p) => p.code === code);
    problems.append(h("details", { class: "problem", open: items.some((p) => p.severity === "error"), dataset: { code } },
      h("summary", {}, h("code", {}, code), ` — ${num(count)} (${items[0]?.severity || "error"})`),
      items.length ? table(["Line", "Field", "Message", "Record"], items.slice(0, 200).map((p) => [
        p.line ? h("span", { class: "line" }, `${p.file === "valid" ? "valid " : ""}line ${p.line}`) : "file",
        p.field ? h("code", {}, p.field) : "", p.message, record(p.line),
      ])) : null));
  }
  if (report.problems_truncated) problems.append(h("p", { class: "muted" }, "Only the first problems are listed; the counts are exact."));

  const dedupe = report.dedupe;
  const dups = h("section", {}, h("h2", {}, "Duplicates"),
    h("p", {}, `${num(dedupe.n_exact)} exact and ${num(dedupe.n_near)} near duplicates (Jaccard ≥ ${dedupe.threshold}) in ${num(dedupe.n_clusters)} clusters.`),
    dedupe.clusters.length ? table(["Kept line", "Dropped lines", "Kind"], dedupe.clusters.map((c) => [
      `line ${c.kept_line}`, c.duplicate_lines.map((l) => `line ${l}`).join(", "), c.kind,
    ])) : null);

  const pii = report.pii;
  const piiKinds = Object.entries(pii.counts);
  const piiSection = h("section", {}, h("h2", {}, "Personal data (PII)"),
    piiKinds.length ? table(["Kind", "Findings", "Lines"], piiKinds.map(([k, n]) => [
      k, num(n), (pii.lines[k] || []).map((l) => `line ${l}`).join(", "),
    ])) : h("p", { class: "muted" }, "No PII found."));

  const tokens = h("section", {}, h("h2", {}, "Token lengths"));
  const t = report.tokens;
  if (t) {
    tokens.append(h("p", {}, `Median ${num(t.median, 0)}, p95 ${num(t.p95, 0)}, longest ${num(t.max)} tokens (${t.rendering}). Recommended max_length: `, h("strong", {}, String(t.recommended_max_length)),
      t.n_over_max_length ? `; ${num(t.n_over_max_length)} conversations are longer than ${t.max_length}.` : "."));
    if (t.histogram) {
      const chart = h("div", { class: "chart", id: "token-histogram", role: "img", "aria-label": "Histogram of tokens per conversation" });
      tokens.append(chart);
      requestAnimationFrame(() => histogram(chart, "Tokens per conversation", t.histogram.edges, t.histogram.counts, t.recommended_max_length));
    }
  } else {
    tokens.append(h("p", { class: "muted" }, "No token figures (no tokenizer, or no valid records)."));
  }

  const e = report.estimate;
  const estimate = h("section", {}, h("h2", {}, "Estimate"),
    e ? h("div", {}, h("p", {}, e.message),
      table(["", ""], [
        ["Examples × epochs", `${num(e.n_examples)} × ${e.epochs}`],
        ["Tokens", `${num(e.total_tokens)}${e.tokens_estimated ? " (from characters)" : ""}`],
        ["Time", `${Math.round(e.seconds)} s at ${num(e.throughput_tokens_per_s, 0)} tokens/s (${e.throughput_source})`],
        ...(e.memory ? Object.entries(e.memory).filter(([, v]) => typeof v === "number" && v > 1000).map(([k, v]) => [k.replaceAll("_", " "), bytes(v)]) : []),
      ])) : h("p", { class: "muted" }, "No estimate."));

  const warnings = report.warnings.length ? h("section", {}, h("h2", {}, "Warnings"), h("ul", {}, report.warnings.map((w) => h("li", {}, w)))) : null;
  const start = report.can_train
    ? link(`#/jobs/new?file=${encodeURIComponent(file.id)}&method=${report.method}`, "Start a fine-tuning job with this file", { class: "button primary", id: "start-job" })
    : null;
  clear(body, verdict, start, facts, warnings, problems, dups, piiSection, tokens, estimate,
    h("p", { class: "muted" }, `Tokens counted with the default model's tokenizer; datalab took ${report.duration_s} s.`));
}
