"""Fine-tuning a model imported from a GGUF file, through a live server and the `openai` SDK.

The tiny model is written as a Q8_0 GGUF and imported with `pomar models import`'s
`import_model`, so its store folder holds nothing but the GGUF: the job builds its Hugging
Face weights once (de-quantized by transformers), trains on them, and the `ft:` model is
served on the GGUF engine (its adapter converted to a GGUF LoRA). A GGUF whose architecture
transformers cannot read is refused with a 400 before any job exists, naming no path.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from finetune_data import SECRET, write_training_file
from live_server import LiveServer, client_for, run_pomar

from server.engine.gguf.from_hf import convert_hf_to_gguf
from server.models.importing import import_model
from server.models.store import ModelCatalog
from server.models.trainable import FAILED_FILE, TRAIN_DIR, TRAIN_MARKER

TERMINAL = {"succeeded", "failed", "cancelled"}
# as tests/server/test_fine_tuning_live.py: what teaches the tiny model its reply
LR_MULTIPLIER = 30.0
EPOCHS = 8
GGUF_ID = "tiny-gguf"
UNREADABLE_ID = "tiny-rwkv6"


def _unreadable_gguf(path: Path) -> Path:
    """A small, valid GGUF whose architecture (rwkv6) transformers has no GGUF loader for."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name("tiny rwkv6")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(32)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tensor("token_embd.weight", np.zeros((16, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def imported_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A server whose store holds the tiny model imported as a bare Q8_0 GGUF (served on
    the GGUF engine) and an rwkv6 GGUF transformers cannot read."""
    home = tmp_path_factory.mktemp("ft-imported")
    work = tmp_path_factory.mktemp("gguf-files")
    catalog = ModelCatalog(home / "models")
    gguf = convert_hf_to_gguf(tiny_model_path, work / "tiny-q8_0.gguf", "q8_0")
    entry = import_model(catalog, gguf, GGUF_ID)
    assert entry.format == "gguf" and not (entry.path / "config.json").exists()
    import_model(catalog, _unreadable_gguf(work / "tiny-rwkv6.gguf"), UNREADABLE_ID)
    server = LiveServer(model=GGUF_ID, backend="auto", home=home).start()
    yield server
    server.stop()


def _hyper(n_epochs: int) -> dict[str, object]:
    hp = {"n_epochs": n_epochs, "batch_size": 1, "learning_rate_multiplier": LR_MULTIPLIER}
    return {"type": "supervised", "supervised": {"hyperparameters": hp}}


def _wait(client: openai.OpenAI, job_id: str, timeout: float = 600) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in TERMINAL:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout}s")


def _upload(client: openai.OpenAI, path: Path) -> str:
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def _ask(client: openai.OpenAI, model: str) -> str:
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the secret word?"}],
        temperature=0,
        max_tokens=20,
    )
    return out.choices[0].message.content or ""


def test_fine_tune_an_imported_gguf_then_chat_on_the_gguf_engine(
    imported_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(imported_server)
    store_folder = imported_server.home / "models" / GGUF_ID
    assert not (store_folder / TRAIN_DIR).exists()  # nothing is built before a job asks
    file_id = _upload(client, write_training_file(tmp_path / "train.jsonl"))
    job = client.fine_tuning.jobs.create(
        model=GGUF_ID,
        training_file=file_id,
        suffix="secret",
        method=_hyper(EPOCHS),  # type: ignore[arg-type]
        seed=3,
    )
    assert job.status == "validating_files"
    done = _wait(client, job.id)
    assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
    ft_model = done.fine_tuned_model  # type: ignore[attr-defined]
    assert ft_model.startswith(f"ft:{GGUF_ID}:pomar:secret:")

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert any(m.startswith(f"Building the Hugging Face weights of '{GGUF_ID}'") for m in messages)
    assert any(m.startswith("Weights de-quantized") for m in messages)
    assert any("Fine-tuning job started on" in m for m in messages)
    # the build is kept in the model's own folder, marked with the GGUF it came from
    assert (store_folder / TRAIN_DIR / TRAIN_MARKER).is_file()
    assert any((store_folder / TRAIN_DIR).glob("*.safetensors"))

    # the fine-tuned model answers as trained, the base does not, both on the GGUF engine
    assert _ask(client, ft_model).startswith(SECRET)
    assert not _ask(client, GGUF_ID).startswith(SECRET)
    log = imported_server.log()
    assert re.search(r"adapter \S+ converted to GGUF and loaded on tiny-q8_0\.gguf", log), log

    # a second job on the same base trains on the weights already built
    built = (store_folder / TRAIN_DIR / TRAIN_MARKER).stat().st_mtime_ns
    again = client.fine_tuning.jobs.create(
        model=GGUF_ID,
        training_file=file_id,
        method=_hyper(1),  # type: ignore[arg-type]
    )
    assert _wait(client, again.id).status == "succeeded"  # type: ignore[attr-defined]
    events = [e.message for e in client.fine_tuning.jobs.list_events(again.id, limit=100).data]
    assert not any("Building the Hugging Face weights" in m for m in events)
    assert (store_folder / TRAIN_DIR / TRAIN_MARKER).stat().st_mtime_ns == built

    # exported as a K-quant GGUF of its own: fused into the weights it was trained on
    out = tmp_path / "exported"
    export = run_pomar(
        ["models", "export", ft_model, "--to", "gguf", "--quant", "Q8_0", "--out", str(out)],
        imported_server.home,
    )
    assert export.returncode == 0, export.stderr
    assert [p.suffix for p in out.glob("*.gguf")] == [".gguf"]
    exported = LiveServer(model=str(out), backend="gguf", home=imported_server.home).start()
    try:
        assert _ask(client_for(exported), str(out)).startswith(SECRET)
    finally:
        exported.stop()


def test_an_architecture_transformers_cannot_read_is_refused_before_any_job(
    imported_server: LiveServer, tmp_path: Path
) -> None:
    client = client_for(imported_server)
    file_id = _upload(client, write_training_file(tmp_path / "train.jsonl"))
    before = {j.id for j in client.fine_tuning.jobs.list(limit=100).data}
    with pytest.raises(openai.BadRequestError) as raised:
        client.fine_tuning.jobs.create(model=UNREADABLE_ID, training_file=file_id)
    error = raised.value.body
    assert isinstance(error, dict)
    assert raised.value.status_code == 400
    assert error["code"] == "model_not_trainable" and error["param"] == "model"
    message = error["message"]
    assert UNREADABLE_ID in message and "'rwkv6'" in message and "llama" in message
    assert str(imported_server.home) not in message and not re.search(r"/\w+/", message)
    assert not re.search(r"Traceback|\.py\b|\w+Error\b", message)
    assert {j.id for j in client.fine_tuning.jobs.list(limit=100).data} == before
    assert not (imported_server.home / "models" / UNREADABLE_ID / FAILED_FILE).exists()
