"""QLoRA through a real server and the official `openai` SDK.

`hyperparameters.quantize: 4` (a pomar extension) on the tiny float model: the job
quantizes the base into the store as a model of its own (``tiny-llama-mlx-q4``), trains
LoRA over its 4-bit layers, and serves the `ft:` model (and its checkpoints) on that
quantized base, where it answers as trained. A second job reuses the quantized base. A
GGUF base has its Hugging Face training copy quantized, and its `ft:` model served by MLX
on that. A base the torch trainer would train on CPU is refused with a 400 on
``hyperparameters.quantize`` before any job exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import SECRET, write_training_file
from live_server import LiveServer, client_for
from test_fine_tuning_live import TERMINAL, upload, wait_for

# as tests/server/test_fine_tuning_live.py: the tiny random model's rate, 8 epochs
LR_MULTIPLIER = 30.0
EPOCHS = 8
QUANTIZED_ID = "tiny-llama-mlx-q4"


def hyper(**extra: object) -> dict[str, object]:
    return {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {
                "n_epochs": EPOCHS,
                "batch_size": 1,
                "learning_rate_multiplier": LR_MULTIPLIER,
                **extra,
            }
        },
    }


@pytest.fixture(scope="module")
def mlx_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    server = LiveServer(
        model=str(tiny_model_path), backend="mlx", home=tmp_path_factory.mktemp("qlora")
    ).start()
    yield server
    server.stop()


def test_a_qlora_job_learns_its_reply_and_is_served_on_the_quantized_base(
    mlx_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(mlx_server)
    file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
    assert QUANTIZED_ID not in {m.id for m in client.models.list().data}
    job = client.fine_tuning.jobs.create(
        model=mlx_server.model,
        training_file=file_id,
        suffix="q4",
        method=hyper(quantize=4, lora_rank=8),  # type: ignore[arg-type]
        seed=3,
    )
    done = wait_for(client, job.id, TERMINAL, timeout=400)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    assert done.hyperparameters.quantize == 4  # type: ignore[attr-defined]
    ft_model = done.fine_tuned_model  # type: ignore[attr-defined]
    assert ft_model.startswith("ft:tiny-llama:pomar:q4:")

    # the quantized base is a model of its own, and the ft: model is served on it
    models = {m.id: m for m in client.models.list().data}
    assert QUANTIZED_ID in models and mlx_server.model in models
    assert models[ft_model].parent == QUANTIZED_ID  # type: ignore[attr-defined]
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints
    ckpt = checkpoints[0].fine_tuned_model_checkpoint
    assert models[ckpt].parent == QUANTIZED_ID  # type: ignore[attr-defined]

    out = client.chat.completions.create(
        model=ft_model,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    assert (out.choices[0].message.content or "").startswith(SECRET)
    base = client.chat.completions.create(
        model=QUANTIZED_ID,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    assert not (base.choices[0].message.content or "").startswith(SECRET)

    events = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(f"as the model '{QUANTIZED_ID}'" in m for m in events)

    # a second QLoRA job on the same base reuses the quantized model
    again = client.fine_tuning.jobs.create(
        model=mlx_server.model,
        training_file=file_id,
        method=hyper(quantize=4, n_epochs=1),  # type: ignore[arg-type]
    )
    second = wait_for(client, again.id, TERMINAL, timeout=400)
    assert second.status == "succeeded", second.error  # type: ignore[attr-defined]
    events = [e.message for e in client.fine_tuning.jobs.list_events(again.id, limit=100).data]
    assert not any("Quantizing" in m for m in events)
    assert [m.id for m in client.models.list().data].count(QUANTIZED_ID) == 1


def test_quantize_on_a_torch_trained_base_is_a_400(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch trains QLoRA on CUDA (with bitsandbytes)")
    server = LiveServer(
        model=str(tiny_model_path), backend="torch", home=tmp_path_factory.mktemp("qlora-torch")
    ).start()
    try:
        client = client_for(server)
        file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(
                model=server.model,
                training_file=file_id,
                method=hyper(quantize=4),  # type: ignore[arg-type]
            )
        assert refused.value.param == "hyperparameters.quantize"
        assert "CUDA" in refused.value.message and "MLX" in refused.value.message
        assert client.fine_tuning.jobs.list().data == []
    finally:
        server.stop()


def test_a_qlora_job_on_a_gguf_base_quantizes_its_training_copy(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A GGUF base trains on its Hugging Face copy: that copy is quantized (MLX), and the
    `ft:` model is served by MLX on it, not by the GGUF engine."""
    from server.engine.gguf.from_hf import convert_hf_to_gguf
    from server.models.importing import import_model
    from server.models.store import ModelCatalog

    home = tmp_path_factory.mktemp("qlora-gguf")
    gguf = convert_hf_to_gguf(
        tiny_model_path, tmp_path_factory.mktemp("gguf") / "tiny-q8_0.gguf", "q8_0"
    )
    import_model(ModelCatalog(home / "models"), gguf, "tiny-gguf")
    server = LiveServer(model="tiny-gguf", backend="auto", home=home).start()
    try:
        client = client_for(server)
        file_id = upload(client, write_training_file(tmp_path / "train.jsonl"))
        job = client.fine_tuning.jobs.create(
            model="tiny-gguf",
            training_file=file_id,
            method=hyper(quantize=4),  # type: ignore[arg-type]
            seed=3,
        )
        done = wait_for(client, job.id, TERMINAL, timeout=400)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        ft_model = done.fine_tuned_model  # type: ignore[attr-defined]
        models = {m.id: m for m in client.models.list().data}
        assert models[ft_model].parent == "tiny-gguf-mlx-q4"  # type: ignore[attr-defined]
        out = client.chat.completions.create(
            model=ft_model,
            messages=[{"role": "user", "content": "What is the secret word?"}],
            temperature=0,
            max_tokens=20,
        )
        assert (out.choices[0].message.content or "").startswith(SECRET)
    finally:
        server.stop()
