"""`pomar serve --backend gguf`: the embedded model on llama.cpp, driven by the openai SDK."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai
import pytest
from finetune_data import SECRET, write_training_file
from live_server import LiveServer, client_for

from tests.prompts import PARIS_QUESTION

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
PARIS = [{"role": "user", "content": PARIS_QUESTION}]


def test_health_and_log_name_the_gguf_engine(gguf_server: LiveServer) -> None:
    health = httpx.get(f"{gguf_server.base_url}/health").json()
    assert health["backend"] == "gguf"
    log = gguf_server.log()
    assert "backend: gguf (--backend gguf was asked for)" in log
    assert "llama.cpp" in log and ".gguf" in log


def test_chat_answers_with_usage(gguf_server: LiveServer, embedded_model_path: Path) -> None:
    from transformers import AutoTokenizer

    from server.engine.templates import ChatTemplate

    client = client_for(gguf_server)
    out = client.chat.completions.create(
        model=MODEL,
        messages=PARIS,  # type: ignore[arg-type]
        temperature=0,
        max_completion_tokens=20,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason == "stop"
    template = ChatTemplate(AutoTokenizer.from_pretrained(str(embedded_model_path)))
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(template.encode(PARIS))
    assert 0 < out.usage.completion_tokens <= 20
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    again = client.chat.completions.create(
        model=MODEL,
        messages=PARIS,  # type: ignore[arg-type]
        temperature=0,
        max_completion_tokens=20,
    )
    assert again.choices[0].message.content == out.choices[0].message.content
    # the KV cache still holds the prompt, and its slot the logits of its last token
    details = again.usage.prompt_tokens_details if again.usage else None
    assert details is not None and details.cached_tokens == out.usage.prompt_tokens


def test_stream_equals_whole_and_reports_usage(gguf_server: LiveServer) -> None:
    client = client_for(gguf_server)
    whole = client.chat.completions.create(
        model=MODEL,
        messages=PARIS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=30,
    )
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=PARIS,  # type: ignore[arg-type]
            temperature=0,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_n_choices_stop_and_seed(gguf_server: LiveServer) -> None:
    client = client_for(gguf_server)
    poem = [{"role": "user", "content": "Write a short poem about pears."}]

    def ask() -> list[str]:
        out = client.chat.completions.create(
            model=MODEL,
            messages=poem,  # type: ignore[arg-type]
            n=3,
            seed=11,
            temperature=1.0,
            max_tokens=16,
        )
        assert [c.index for c in out.choices] == [0, 1, 2]
        assert out.usage is not None and out.usage.completion_tokens <= 3 * 16
        return [c.message.content or "" for c in out.choices]

    first = ask()
    assert ask() == first  # a seed makes the whole request repeatable
    cut = client.chat.completions.create(
        model=MODEL,
        messages=PARIS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=20,
        stop=["Paris"],
    )
    assert "Paris" not in (cut.choices[0].message.content or "")
    assert cut.choices[0].finish_reason == "stop"


def test_a_fine_tuned_model_answers_on_the_gguf_engine(
    gguf_server: LiveServer, tmp_path: Path
) -> None:
    """Trained with MLX on the HF folder, served as a GGUF LoRA on the already-loaded base."""
    client = client_for(gguf_server)
    with write_training_file(tmp_path / "train.jsonl").open("rb") as f:
        file_id = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=file_id,
        suffix="apples",
        seed=1,
        method={  # type: ignore[arg-type]
            "type": "supervised",
            "supervised": {
                "hyperparameters": {
                    "n_epochs": 2,
                    "batch_size": 2,
                    "learning_rate_multiplier": 10.0,
                }
            },
        },
    )
    deadline = time.monotonic() + 600
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        assert time.monotonic() < deadline, f"job still {job.status}"
        time.sleep(1)
    assert job.status == "succeeded", job.error
    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith("Fine-tuning job started on mlx") for m in events)
    ft = job.fine_tuned_model
    assert ft is not None and ft in {m.id for m in client.models.list().data}

    def answer(model: str) -> str:
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "What is the secret word?"}],
            temperature=0,
            max_tokens=12,
        )
        return out.choices[0].message.content or ""

    assert answer(ft).startswith(SECRET)
    assert not answer(MODEL).startswith(SECRET)  # the base is untouched
    assert answer(ft).startswith(SECRET)  # and switching back and forth works
    assert "converted to GGUF" in gguf_server.log()
    client.models.delete(ft)
    with pytest.raises(openai.NotFoundError):
        answer(ft)
