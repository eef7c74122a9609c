"""The model store in-process: import, list, remove, crash safety, and `info`'s facts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from server.models import CatalogError, ModelCatalog, folder_size
from server.models.gguf_meta import read_gguf_meta
from server.models.importing import detect_format, import_model
from server.models.info import model_info, parse_size
from server.models.memory import SYSTEM_RESERVE, default_budget
from server.models.memory import total_memory as total_ram


def real_param_count(folder: Path) -> int:
    """Parameters counted by loading every safetensors tensor (what info must not do)."""
    return sum(
        int(np.prod(t.shape)) for f in folder.glob("*.safetensors") for t in load_file(f).values()
    )


@pytest.fixture(scope="module")
def tiny_mlx_q4(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model quantized to 4 bits (groups of 64) by mlx-lm (~10 s)."""
    from mlx_lm import convert

    dest = tmp_path_factory.mktemp("tiny-mlx") / "tiny-mlx-q4"
    convert(str(tiny_model_path), str(dest), quantize=True, q_bits=4, q_group_size=64)
    return dest


def test_import_hf_folder_is_listed_and_resolved(tmp_path: Path, tiny_model_path: Path) -> None:
    from server.models.loading import resolve_model_path

    catalog = ModelCatalog(tmp_path / "models")
    entry = import_model(catalog, tiny_model_path)
    assert (entry.id, entry.format, entry.source, entry.precision) == (
        "tiny-llama",
        "hf",
        "imported",
        "fp32",
    )
    assert entry.origin == str(tiny_model_path.resolve())
    assert [e.id for e in catalog.list()] == ["tiny-llama"]
    # the copy holds every file of the original, plus the manifest
    assert entry.size_bytes >= folder_size(tiny_model_path)
    assert sorted(p.name for p in tiny_model_path.iterdir()) == sorted(
        p.name for p in entry.path.iterdir() if p.name != "pomar-model.json"
    )
    assert resolve_model_path("tiny-llama", catalog.models_dir) == entry.path


def test_import_gguf_file_and_folder(tmp_path: Path, tiny_gguf_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    from_file = import_model(catalog, tiny_gguf_path)
    assert (from_file.id, from_file.format, from_file.precision) == (
        "tiny-llama-f32",
        "gguf",
        "F32",
    )
    assert (from_file.path / tiny_gguf_path.name).stat().st_size == tiny_gguf_path.stat().st_size
    # a folder holding one GGUF (beside its HF files) is a GGUF model too
    from_folder = import_model(catalog, tiny_gguf_path.parent, "tiny-gguf-folder")
    assert (from_folder.format, from_folder.precision) == ("gguf", "F32")
    assert {e.id for e in catalog.list()} == {"tiny-llama-f32", "tiny-gguf-folder"}


def test_import_mlx_folder(tmp_path: Path, tiny_mlx_q4: Path, tiny_model_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    entry = import_model(catalog, tiny_mlx_q4)
    assert (entry.id, entry.format, entry.precision) == ("tiny-mlx-q4", "mlx", "q4")
    info = model_info(entry)
    # packed uint32 weights unpacked, scales and biases skipped: the logical count
    assert info.parameters == real_param_count(tiny_model_path)
    assert info.chat_template  # mlx-lm writes chat_template.jinja


def test_detect_format_dtype_from_weights_when_config_names_none(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    folder = tmp_path / "no-dtype"
    shutil.copytree(tiny_model_path, folder)
    config = json.loads((folder / "config.json").read_text())
    config.pop("torch_dtype", None)
    config.pop("dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    assert detect_format(folder) == ("hf", "fp32")


def test_duplicate_invalid_and_non_models_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    import_model(catalog, tiny_model_path)
    with pytest.raises(CatalogError, match="already in the store"):
        import_model(catalog, tiny_model_path)
    for bad in ("../escape", "-dash", "has space", "a//b"):
        with pytest.raises(CatalogError, match="not a valid model id"):
            import_model(catalog, tiny_model_path, bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CatalogError, match="neither a Hugging Face or MLX model folder"):
        import_model(catalog, empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(CatalogError, match="no weights"):
        import_model(catalog, empty)
    with pytest.raises(CatalogError, match="does not exist"):
        import_model(catalog, tmp_path / "missing")
    assert [e.id for e in catalog.list()] == ["tiny-llama"]
    assert [p.name for p in catalog.models_dir.iterdir()] == ["tiny-llama"]


def test_remove_leaves_nothing(tmp_path: Path, tiny_model_path: Path, tiny_gguf_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")
    import_model(catalog, tiny_model_path, "org/tiny:v1")
    import_model(catalog, tiny_gguf_path)
    removed = catalog.remove("org/tiny:v1")
    assert removed.id == "org/tiny:v1" and not removed.path.exists()
    catalog.remove("tiny-llama-f32")
    assert catalog.list() == []
    assert list(catalog.models_dir.iterdir()) == []
    with pytest.raises(CatalogError, match="no model 'tiny-llama-f32'"):
        catalog.remove("tiny-llama-f32")


def test_crashed_add_leaves_nothing_listed(tmp_path: Path) -> None:
    catalog = ModelCatalog(tmp_path / "models")

    def build(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half a model")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        catalog.add("crashed", build, format="hf", source="imported")
    assert catalog.list() == []
    assert list(catalog.models_dir.iterdir()) == []
    assert catalog.get("crashed") is None


def test_info_counts_params_from_headers(tmp_path: Path, tiny_model_path: Path) -> None:
    info = model_info(tiny_model_path, budget=parse_size("1GiB"))
    real = real_param_count(tiny_model_path)
    assert info.parameters == real
    assert (info.architecture, info.context_length, info.chat_template) == (
        "LlamaForCausalLM",
        2048,
        True,
    )
    figures = {m.precision: m.weights_bytes for m in info.memory}
    weights_file = (tiny_model_path / "model.safetensors").stat().st_size
    # fp32 weights on disk are the fp32 figure plus the safetensors header
    assert figures["fp32"] == real * 4
    assert figures["fp32"] == pytest.approx(weights_file, rel=0.01)
    assert figures["fp16"] == pytest.approx(weights_file / 2, rel=0.01)
    assert figures["int8"] == pytest.approx(real * (1 + 4 / 64), abs=1)
    assert figures["int4"] == pytest.approx(real * (0.5 + 4 / 64), abs=1)
    # KV cache: 2 layers × (K and V) × 2 KV heads × head dim 16 × 2048 tokens × 2 bytes
    assert info.kv_cache_bytes == 2 * 2 * 2 * 16 * 2048 * 2
    assert all(m.fits for m in info.memory)
    assert all(m.runtime_bytes > m.weights_bytes for m in info.memory)


def test_info_gguf_matches_hf(tiny_gguf_path: Path, tiny_model_path: Path) -> None:
    info = model_info(tiny_gguf_path)
    assert (info.format, info.precision, info.architecture) == ("gguf", "F32", "llama")
    assert info.parameters == real_param_count(tiny_model_path)
    assert info.context_length == 2048
    assert info.size_bytes == tiny_gguf_path.stat().st_size
    assert info.kv_cache_bytes == model_info(tiny_model_path).kv_cache_bytes


def test_gguf_meta_reader_agrees_with_gguf_package(tiny_gguf_path: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_gguf_path)
    meta = read_gguf_meta(tiny_gguf_path)
    assert meta.tensors == {t.name: int(t.n_elements) for t in reader.tensors}
    for key, field in reader.fields.items():
        if key in meta.metadata and not key.startswith("GGUF."):
            assert meta.metadata[key] == pytest.approx(field.contents()), key


def test_budget_verdicts(tiny_model_path: Path) -> None:
    assert default_budget() == total_ram() - SYSTEM_RESERVE
    tight = model_info(tiny_model_path, budget=parse_size("800KB"))
    verdicts = {m.precision: m.fits for m in tight.memory}
    assert verdicts == {"fp32": False, "fp16": False, "int8": True, "int4": True}
    assert not any(m.fits for m in model_info(tiny_model_path, budget=1000).memory)


def test_parse_size() -> None:
    assert parse_size("16GB") == 16 * 10**9
    assert parse_size("16GiB") == 16 * 2**30
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("1.5G") == 1_500_000_000
    assert parse_size(1024) == parse_size("1024") == 1024
    with pytest.raises(CatalogError, match="not a size"):
        parse_size("lots")


@pytest.mark.slow
def test_info_embedded_model(embedded_model_path: Path, pomar_home: Path) -> None:
    entry = ModelCatalog(pomar_home / "models").require("smollm2-135m-instruct")
    info = model_info(entry)
    assert info.parameters == pytest.approx(135e6, rel=0.01)
    assert (info.context_length, info.chat_template) == (8192, True)
    bf16 = (embedded_model_path / "model.safetensors").stat().st_size
    figures = {m.precision: m.weights_bytes for m in info.memory}
    assert figures["fp16"] == pytest.approx(bf16, rel=0.001)
    assert figures["fp32"] == pytest.approx(2 * bf16, rel=0.001)
