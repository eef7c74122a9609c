// Fine-tuning: the job list, a new-job form, and a live job page (loss curve, events,
// checkpoints, evaluation, result files).
import { get, post, all, blob } from "./api.js";
import { h, clear, when, errorBox, table, link, badge, field, query, num } from "./ui.js";
import { lineChart } from "./charts.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

export async function jobsPage(main, rest) {
  if (rest[0] === "new") return newJobPage(main);
  if (rest[0]) return jobPage(main, rest[0]);
  return listPage(main);
}

async function listPage(main) {
  const body = h("div");
  main.append(h("h1", {}, "Fine-tuning"),
    h("p", {}, link("#/jobs/new", "New fine-tuning job", { class: "button primary" })), body);
  const render = async () => {
    const jobs = (await get("/v1/fine_tuning/jobs?limit=100")).data;
    clear(body, jobs.length ? table(["Job", "Status", "Base", "Fine-tuned model", "Created"], jobs.map((j) => [
      link(`#/jobs/${j.id}`, j.id), badge(j.status), h("code", {}, j.model),
      j.fine_tuned_model ? h("code", {}, j.fine_tuned_model) : "—", when(j.created_at),
    ])) : h("p", { class: "muted" }, "No jobs yet."));
    return jobs.some((j) => !TERMINAL.has(j.status));
  };
  let timer = null;
  const tick = async () => {
    try {
      if (await render()) timer = setTimeout(tick, 2000);
    } catch (err) {
      body.append(errorBox(err));
    }
  };
  await tick();
  return () => clearTimeout(timer);
}

function auto(id, placeholder = "auto", attrs = {}) {
  return h("input", { id, type: "number", placeholder, ...attrs });
}

async function newJobPage(main) {
  const q = query();
  const [models, files] = await Promise.all([get("/v1/models"), all("/v1/files?purpose=fine-tune&order=desc", 500)]);
  const chat = models.data.filter((m) => m.loaded !== null && m.loaded !== undefined && !m.id.includes(":ckpt-step-"));
  const model = h("select", { id: "job-model" }, chat.map((m) => h("option", { value: m.id }, m.id)));
  const fileOpts = (sel) => files.map((f) => h("option", { value: f.id, selected: f.id === sel }, `${f.filename} (${f.id})`));
  const training = h("select", { id: "job-training-file", required: true }, fileOpts(q.get("file")));
  const validation = h("select", { id: "job-validation-file" }, h("option", { value: "" }, "— split from the training file —"), fileOpts(null));
  const method = h("select", { id: "job-method" }, ["supervised", "dpo"].map((m) => h("option", { value: m, selected: m === q.get("method") }, m)));
  const epochs = auto("job-epochs", "auto", { min: 1, max: 50 });
  const batch = auto("job-batch", "auto", { min: 1, max: 256 });
  const lr = auto("job-lr", "auto", { min: 0.001, step: "any" });
  const rank = auto("job-rank", "8", { min: 1, max: 256 });
  const beta = auto("job-beta", "auto (0.1)", { min: 0, step: "any" });
  const suffix = h("input", { id: "job-suffix", type: "text", maxlength: 64 });
  const seed = auto("job-seed", "random");
  const hint = h("p", { class: "muted", role: "status" });
  const problems = h("div", { "aria-live": "assertive" });
  const showAuto = async () => {
    hint.textContent = "";
    if (!training.value) return;
    try {
      const r = await get(`/v1/files/${encodeURIComponent(training.value)}/report?model=${encodeURIComponent(model.value)}&method=${method.value}`);
      const e = r.estimate;
      hint.textContent = r.can_train
        ? `auto: ${e ? `${e.epochs} epochs over ${r.n_train} examples; ${e.message}` : `${r.n_train} training examples`}` +
          (r.tokens ? `; max_length ${r.tokens.recommended_max_length}` : "")
        : `This file cannot train: ${r.blocking_reasons.join("; ")}`;
    } catch (err) {
      hint.textContent = err.message;
    }
  };
  for (const el of [training, model, method]) el.addEventListener("change", showAuto);
  const form = h("form", {
    class: "job-form",
    onsubmit: async (ev) => {
      ev.preventDefault();
      clear(problems);
      const hp = {};
      if (epochs.value) hp.n_epochs = Number(epochs.value);
      if (batch.value) hp.batch_size = Number(batch.value);
      if (lr.value) hp.learning_rate_multiplier = Number(lr.value);
      if (rank.value) hp.lora_rank = Number(rank.value);
      if (method.value === "dpo" && beta.value) hp.beta = Number(beta.value);
      const body = {
        model: model.value,
        training_file: training.value,
        method: { type: method.value, [method.value]: { hyperparameters: hp } },
      };
      if (validation.value) body.validation_file = validation.value;
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (seed.value) body.seed = Number(seed.value);
      try {
        const job = await post("/v1/fine_tuning/jobs", body);
        location.hash = `#/jobs/${job.id}`;
      } catch (err) {
        problems.append(errorBox(err));
      }
    },
  },
  field("Base model", model),
  field("Training file", training, files.length ? null : "Upload a file on the Data page first."),
  field("Validation file", validation),
  field("Method", method),
  h("fieldset", {}, h("legend", {}, "Hyperparameters (empty: auto)"),
    h("div", { class: "grid2" }, field("Epochs", epochs), field("Batch size", batch),
      field("Learning-rate multiplier", lr), field("LoRA rank", rank), field("DPO beta", beta))),
  hint,
  h("div", { class: "grid2" }, field("Suffix", suffix), field("Seed", seed)),
  problems,
  h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", id: "create-job" }, "Create job")));
  main.append(h("p", {}, link("#/jobs", "← Fine-tuning")), h("h1", {}, "New fine-tuning job"), form);
  showAuto();
}

// the curves of the metrics events: step -> train_loss, valid_loss, train_reward_margin
function curves(events) {
  const rows = new Map();
  for (const e of events) {
    if (e.type !== "metrics" || !e.data || typeof e.data.step !== "number") continue;
    const row = rows.get(e.data.step) || {};
    for (const k of ["train_loss", "valid_loss", "train_reward_margin"]) {
      if (typeof e.data[k] === "number") row[k] = e.data[k];
    }
    rows.set(e.data.step, row);
  }
  const steps = [...rows.keys()].sort((a, b) => a - b);
  const col = (k) => steps.map((s) => rows.get(s)[k] ?? null);
  const series = [{ label: "train loss", values: col("train_loss") }, { label: "validation loss", values: col("valid_loss") }];
  if (steps.some((s) => rows.get(s).train_reward_margin !== undefined)) {
    series.push({ label: "reward margin (DPO)", values: col("train_reward_margin") });
  }
  return { steps, series };
}

async function download(id, name) {
  const b = await blob(`/v1/files/${encodeURIComponent(id)}/content`);
  const url = URL.createObjectURL(b);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function jobPage(main, jobId) {
  const head = h("div");
  const chartBox = h("div", { class: "chart", id: "loss-chart", role: "img", "aria-label": "Loss curve", dataset: { points: "0" } });
  const evaluation = h("div");
  const checkpoints = h("div");
  const results = h("div");
  const events = h("ol", { class: "events", reversed: true });
  main.append(h("p", {}, link("#/jobs", "← Fine-tuning")), h("h1", {}, "Job ", h("code", {}, jobId)), head,
    h("section", { "aria-labelledby": "curve-h" }, h("h2", { id: "curve-h" }, "Loss"), chartBox),
    evaluation, checkpoints, results,
    h("section", { "aria-labelledby": "events-h" }, h("h2", { id: "events-h" }, "Events"), events));
  let chart = null;
  let timer = null;
  let stopped = false;
  const render = async () => {
    const [job, evs, ckpts] = await Promise.all([
      get(`/v1/fine_tuning/jobs/${jobId}`),
      all(`/v1/fine_tuning/jobs/${jobId}/events`),
      all(`/v1/fine_tuning/jobs/${jobId}/checkpoints`),
    ]);
    const running = !TERMINAL.has(job.status);
    const hp = job.method?.[job.method.type]?.hyperparameters || job.hyperparameters || {};
    const cancel = running ? h("button", {
      type: "button", class: "danger", id: "cancel-job",
      onclick: async () => {
        try {
          await post(`/v1/fine_tuning/jobs/${jobId}/cancel`);
          await render();
        } catch (err) {
          head.append(errorBox(err));
        }
      },
    }, "Cancel job") : null;
    const tryIt = job.fine_tuned_model ? h("p", { class: "actions" },
      link(`#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(job.fine_tuned_model)}`, "Try it side by side with the base", { class: "button primary", id: "try-side-by-side" }),
      link(`#/playground?a=${encodeURIComponent(job.fine_tuned_model)}`, "Try it alone", { class: "button" })) : null;
    clear(head,
      h("p", { class: "status-line" }, badge(job.status), job.estimated_finish && running ? ` estimated finish ${when(job.estimated_finish)}` : ""),
      job.error ? h("p", { class: "error", role: "alert" }, `${job.error.code}: ${job.error.message}`) : null,
      table(["", ""], [
        ["Base model", h("code", {}, job.model)],
        ["Fine-tuned model", job.fine_tuned_model ? h("code", {}, job.fine_tuned_model) : "—"],
        ["Method", job.method?.type || "supervised"],
        ["Training file", link(`#/data/${job.training_file}`, job.training_file)],
        ["Validation file", job.validation_file ? link(`#/data/${job.validation_file}`, job.validation_file) : "split from the training file"],
        ["Hyperparameters", Object.entries(hp).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(" · ")],
        ["Trained tokens", num(job.trained_tokens)],
        ["Created / finished", `${when(job.created_at)} / ${when(job.finished_at)}`],
      ]),
      cancel, tryIt);

    const { steps, series } = curves(evs);
    chartBox.dataset.points = String(steps.length);
    if (steps.length && window.uPlot) {
      if (chart && chart.n !== series.length) {
        chart.destroy();
        chart = null;
      }
      if (!chart) {
        chartBox.replaceChildren();
        chart = lineChart(chartBox, "", steps, series);
        chart.n = series.length;
      } else {
        chart.update(steps, series);
      }
    } else if (!steps.length) {
      chartBox.textContent = "No metrics yet: the curve appears with the first training steps.";
    }

    const ev = job.evaluation;
    const figures = ["valid_loss", "valid_mean_token_accuracy", "exact_match", "normalized_match", "preference_accuracy"];
    clear(evaluation, ev ? h("section", { "aria-labelledby": "eval-h" }, h("h2", { id: "eval-h" }, "Evaluation on the validation set"),
      table(["", "before", "after"], figures.filter((f) => ev.before?.[f] != null || ev.after?.[f] != null).map((f) => [
        f.replaceAll("_", " "), num(ev.before?.[f]), num(ev.after?.[f]),
      ]))) : null);

    clear(checkpoints, ckpts.length ? h("section", {}, h("h2", {}, "Checkpoints"),
      table(["Step", "Model", "Metrics", ""], ckpts.map((c) => [
        num(c.step_number), h("code", {}, c.fine_tuned_model_checkpoint),
        Object.entries(c.metrics || {}).filter(([k, v]) => k !== "step" && v !== null).map(([k, v]) => `${k} ${num(v)}`).join(" · "),
        link(`#/playground?a=${encodeURIComponent(job.model)}&b=${encodeURIComponent(c.fine_tuned_model_checkpoint)}`, "Try it", { class: "button" }),
      ]))) : null);

    const resultFiles = await Promise.all((job.result_files || []).map((id) => get(`/v1/files/${id}`).catch(() => ({ id, filename: id }))));
    clear(results, resultFiles.length ? h("section", {}, h("h2", {}, "Result files"),
      h("ul", {}, resultFiles.map((f) => h("li", {}, h("button", { type: "button", class: "linkish", onclick: () => download(f.id, f.filename) }, `${f.filename} (${f.id})`))))) : null);

    clear(events, evs.map((e) => h("li", { class: `event ${e.level}` }, h("time", {}, when(e.created_at)), " ", e.message)));
    return running;
  };
  const tick = async () => {
    if (stopped) return;
    try {
      const running = await render();
      if (running && !stopped) timer = setTimeout(tick, 1500);
    } catch (err) {
      head.append(errorBox(err));
    }
  };
  await tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
    chart?.destroy();
  };
}
