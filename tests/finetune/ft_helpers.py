"""Helpers shared by the finetune tests: the fixed-reply data set, a recording callback, runs."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tiny_model import QUESTIONS

from finetune.callbacks import CheckpointInfo, EvalMetrics, StepMetrics, TrainingCallback
from finetune.config import BASE_LEARNING_RATE, TINY_MODEL_LR_MULTIPLIER, TrainConfig
from finetune.trainer import TrainResult, train

SECRET = "The secret word is banana."
HELD_OUT_PROMPT = "Tell me something."
TINY_LR = BASE_LEARNING_RATE * TINY_MODEL_LR_MULTIPLIER


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def secret_records() -> list[dict[str, Any]]:
    """12 conversations answered with SECRET; every 4th has an earlier weight-0 turn."""
    records = []
    for i, question in enumerate(QUESTIONS):
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": SECRET},
        ]
        if i % 4 == 3:
            messages = [
                {"role": "user", "content": QUESTIONS[i - 1]},
                {"role": "assistant", "content": "I am fine, thank you.", "weight": 0},
                *messages,
            ]
        records.append({"messages": messages})
    return records


@dataclass
class Recorder(TrainingCallback):
    """Records every report; asks to stop once `stop_after` steps are done."""

    stop_after: int | None = None
    steps: list[StepMetrics] = field(default_factory=list)
    evals: list[EvalMetrics] = field(default_factory=list)
    checkpoints: list[CheckpointInfo] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    stop_polls: int = 0

    def on_step(self, metrics: StepMetrics) -> None:
        self.steps.append(metrics)
        self.threads.add(threading.current_thread().name)

    def on_eval(self, metrics: EvalMetrics) -> None:
        self.evals.append(metrics)

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        self.checkpoints.append(info)

    def should_stop(self) -> bool:
        self.stop_polls += 1
        return self.stop_after is not None and len(self.steps) >= self.stop_after


@dataclass
class Run:
    config: TrainConfig
    result: TrainResult
    recorder: Recorder


def run_in_thread(config: TrainConfig, recorder: Recorder) -> TrainResult:
    """train() on a worker thread, as the server's job runner calls it."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = train(config, recorder)
        except BaseException as exc:  # re-raised on the test's thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="finetune-worker")
    worker.start()
    worker.join(timeout=300)
    assert not worker.is_alive(), "training did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def secret_config(
    model: Path, data: tuple[Path, Path], out_dir: Path, backend: str, **overrides: Any
) -> TrainConfig:
    values: dict[str, Any] = {
        "model_path": model,
        "train_file": data[0],
        "valid_file": data[1],
        "out_dir": out_dir,
        "backend": backend,
        "n_epochs": 3,
        "batch_size": 1,
        "learning_rate": TINY_LR,
        "steps_per_eval": 12,
        "steps_per_checkpoint": 12,
        "seed": 0,
    }
    values.update(overrides)
    return TrainConfig(**values)


def write_secret_data(root: Path) -> tuple[Path, Path]:
    """(train.jsonl, valid.jsonl) teaching the fixed reply; validation uses unseen prompts."""
    root.mkdir(parents=True, exist_ok=True)
    valid = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": SECRET}]}
        for q in ("Hello there!", "What is your name?", "Tell me a story.")
    ]
    return (
        write_jsonl(root / "train.jsonl", secret_records()),
        write_jsonl(root / "valid.jsonl", valid),
    )


# --- inference on the real engines, for checking what an adapter learned --------------------

PROMPT_IDS = [1, 551, 198, 60, 120, 300, 2, 198, 1, 400, 198, 17, 99, 250]


def greedy_mlx(model_path: Path, adapter: Path, prompt: str) -> str:
    """mlx_lm.load(base, adapter_path=...) and a greedy reply to one user message."""
    from mlx_lm import generate, load

    model, tokenizer = load(str(model_path), adapter_path=str(adapter))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return str(generate(model, tokenizer, text, max_tokens=24))


def greedy_peft(model_path: Path, adapter: Path, prompt: str) -> str:
    """PeftModel.from_pretrained(base, adapter) and a greedy reply to one user message."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    base = AutoModelForCausalLM.from_pretrained(str(model_path))
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    out = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def mlx_logits(model_path: Path, adapter: Path | None = None) -> np.ndarray:
    """Logits of PROMPT_IDS from mlx_lm (base, or base + adapter)."""
    import mlx.core as mx
    from mlx_lm import load

    model, _ = load(str(model_path), adapter_path=str(adapter) if adapter else None)
    return np.array(model(mx.array([PROMPT_IDS])).astype(mx.float32))[0]


def peft_logits(model_path: Path, adapter: Path) -> np.ndarray:
    """Logits of PROMPT_IDS from transformers + PEFT in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        return np.asarray(model(input_ids=torch.tensor([PROMPT_IDS])).logits[0].numpy())


def assert_same_logits(a: np.ndarray, b: np.ndarray, base: np.ndarray) -> None:
    """a == b within 1e-4, and both really differ from the base model's logits."""
    assert np.abs(a - base).max() > 1e-2, "the adapter should change the logits"
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
