"""`export_model`: a fine-tuned tiny model fused and exported, then served on its own.

The tiny model learns a fixed reply (36 MLX steps, as tests/finetune does), is registered
in a home's store as the job runner registers a finished job's model, and is exported to
Hugging Face and GGUF folders that real servers serve with the trained behaviour.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from live_server import LiveServer, client_for

sys.path.insert(0, str(Path(__file__).parents[1] / "finetune"))
from ft_helpers import (
    HELD_OUT_PROMPT,
    SECRET,
    Recorder,
    run_in_thread,
    secret_config,
    write_secret_data,
)

from finetune.adapters import convert_mlx_to_peft
from server.models.export import default_export_id, export_model
from server.models.store import CatalogError, ModelCatalog
from server.store import Store

FT_ID = "ft:tiny:pomar:secret:abcd1234"
PEFT_ID = "ft:tiny:pomar:peft:abcd5678"
ORPHAN_ID = "ft:no-such-base:pomar::11111111"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """A home with the tiny base in its store and a trained adapter registered on it.

    `FT_ID` holds the MLX adapter; `PEFT_ID` the same adapter in PEFT's format.
    """
    root = tmp_path_factory.mktemp("export")
    home = root / "home"

    def copy(folder: Path) -> None:
        for path in tiny_model_path.iterdir():
            shutil.copy2(path, folder / path.name)

    base = ModelCatalog(home / "models").add("tiny", copy, format="hf", source="imported")
    config = secret_config(base.path, write_secret_data(root / "data"), root / "run", "mlx")
    adapter = run_in_thread(config, Recorder()).adapter_path
    peft = convert_mlx_to_peft(adapter, root / "peft-adapter", base.path)
    store = Store.open(home)
    try:
        store.models.register(FT_ID, base_model="tiny", adapter_path=str(adapter))
        store.models.register(PEFT_ID, base_model="tiny", adapter_path=str(peft))
        store.models.register(ORPHAN_ID, base_model="no-such-base", adapter_path=str(adapter))
        store.models.register("ft:tiny:pomar:gone:00000000", base_model="tiny", adapter_path="x")
        store.models.delete("ft:tiny:pomar:gone:00000000")
    finally:
        store.close()
    return home


def reply(server: LiveServer, model: str | None = None) -> str:
    out = client_for(server).chat.completions.create(
        model=model or server.model,
        messages=[{"role": "user", "content": HELD_OUT_PROMPT}],
        temperature=0,
        max_tokens=16,
    )
    return out.choices[0].message.content or ""


def served_reply(home: Path, model: str, backend: str) -> str:
    server = LiveServer(model=model, backend=backend, home=home).start()
    try:
        return reply(server)
    finally:
        server.stop()


def test_the_adapter_learned_the_reply_and_the_base_did_not(home: Path) -> None:
    # the base serves its fine-tuned model from the store too: both answers, one start
    server = LiveServer(model="tiny", backend="mlx", home=home).start()
    try:
        assert reply(server, FT_ID) == SECRET
        assert not reply(server).startswith(SECRET)
    finally:
        server.stop()


def test_export_to_hf_answers_as_trained(home: Path) -> None:
    path = export_model(home, FT_ID, "hf")
    entry = ModelCatalog(home / "models").require("tiny-pomar-secret-abcd1234")
    assert entry.path == path
    assert (entry.format, entry.source, entry.precision) == ("hf", "exported", "fp32")
    assert (entry.fine_tuned_from, entry.origin) == (FT_ID, "tiny")
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    assert (path / "config.json").read_bytes() == (home / "models/tiny/config.json").read_bytes()
    assert served_reply(home, entry.id, "mlx") == SECRET


def test_export_to_gguf_answers_as_trained(home: Path) -> None:
    path = export_model(home, FT_ID, "gguf")
    entry = ModelCatalog(home / "models").require("tiny-pomar-secret-abcd1234-gguf-f16")
    assert (entry.path, entry.format, entry.precision) == (path, "gguf", "F16")
    assert (path / "tiny-pomar-secret-abcd1234-gguf-f16.gguf").is_file()
    assert not list(path.glob("*.safetensors"))
    assert served_reply(home, entry.id, "gguf") == SECRET


def test_peft_merge_matches_mlx_fuse_and_out_folder(home: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    mlx_fused = home / "models" / "tiny-pomar-secret-abcd1234"
    if not mlx_fused.is_dir():
        mlx_fused = export_model(home, FT_ID, "hf", out=tmp_path / "mlx-fused")
    out = tmp_path / "peft-fused"
    out.mkdir()  # an empty folder is fine
    assert export_model(home, PEFT_ID, "hf", out=out) == out
    assert ModelCatalog(home / "models").get(default_export_id(PEFT_ID, "hf", None)) is None
    a, b = (
        load_file(str(mlx_fused / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert a.keys() == b.keys()
    base = load_file(str(home / "models/tiny/model.safetensors"))
    key = "model.layers.1.self_attn.q_proj.weight"
    assert np.abs(a[key] - base[key]).max() > 1e-3  # the adapter was fused in
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, rtol=0)
    with pytest.raises(CatalogError, match="not empty"):
        export_model(home, PEFT_ID, "gguf", out=out)


def test_without_mlx_an_mlx_adapter_is_merged_by_peft(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.numpy import load_file

    from server.models import export

    def no_mlx(*_args: object) -> None:
        raise ImportError("No module named 'mlx'")

    reference = export_model(home, PEFT_ID, "hf", out=tmp_path / "peft")
    monkeypatch.setattr(export, "_fuse_mlx", no_mlx)
    out = export_model(home, FT_ID, "hf", out=tmp_path / "fallback")
    assert not (out / ".peft-adapter").exists()
    a, b = (
        load_file(str(reference / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_default_export_ids() -> None:
    assert default_export_id(FT_ID, "hf", None) == "tiny-pomar-secret-abcd1234"
    assert default_export_id(FT_ID, "gguf", 8) == "tiny-pomar-secret-abcd1234-gguf-q8_0"
    assert default_export_id(FT_ID, "mlx", 4) == "tiny-pomar-secret-abcd1234-mlx-q4"
    ckpt = "ft:tiny:pomar::abcd1234:ckpt-step-12"
    assert default_export_id(ckpt, "gguf", None) == "tiny-pomar-abcd1234-ckpt-step-12-gguf-f16"


def test_refusals(home: Path) -> None:
    with pytest.raises(CatalogError, match="no fine-tuned model"):
        export_model(home, "ft:tiny:pomar:nope:12345678", "hf")
    with pytest.raises(CatalogError, match="not a fine-tuned model"):
        export_model(home, "tiny", "gguf")
    with pytest.raises(CatalogError, match="was deleted"):
        export_model(home, "ft:tiny:pomar:gone:00000000", "hf")
    with pytest.raises(CatalogError, match=r"base model 'no-such-base' .* is not available"):
        export_model(home, ORPHAN_ID, "gguf")
    with pytest.raises(CatalogError, match="not quantized"):
        export_model(home, FT_ID, "hf", q_bits=8)
    with pytest.raises(CatalogError, match="cannot export to 'onnx'"):
        export_model(home, FT_ID, "onnx")
    with pytest.raises(CatalogError, match="not both"):
        export_model(home, FT_ID, "hf", new_id="x", out=home / "x")
    assert not [p for p in (home / "models").iterdir() if p.name.startswith(".")]
