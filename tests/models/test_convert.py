"""`convert_model`: the tiny and embedded models to MLX and GGUF, each served by a real server.

Conversions run in a store of their own (the tiny model added to it as an import would),
so the session's store stays as other tests expect it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import LiveServer, client_for

from server.models.convert import convert_model, default_id
from server.models.store import CatalogEntry, CatalogError, ModelCatalog
from tests.models.tiny_store import tiny_catalog
from tests.prompts import PARIS_QUESTION

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("convert-home")


@pytest.fixture(scope="module")
def catalog(home: Path, tiny_model_path: Path) -> ModelCatalog:
    """A store holding the tiny model as `tiny` (fp32 Hugging Face folder)."""
    return tiny_catalog(home, tiny_model_path)


@pytest.fixture(scope="module")
def tiny_mlx(catalog: ModelCatalog) -> CatalogEntry:
    return convert_model(catalog, "tiny", "mlx", q_bits=None)


@pytest.fixture(scope="module")
def tiny_mlx_q8(catalog: ModelCatalog) -> CatalogEntry:
    return convert_model(catalog, "tiny", "mlx", q_bits=8)


def serve(model: str, backend: str, home: Path) -> Iterator[LiveServer]:
    server = LiveServer(model=model, backend=backend, home=home).start()
    try:
        yield server
    finally:
        server.stop()


def greedy(server: LiveServer, prompt: str = PROMPT, max_tokens: int = 8) -> tuple[str, int]:
    """One chat request at temperature 0: (reply, completion tokens)."""
    out = client_for(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    assert out.usage is not None
    return out.choices[0].message.content or "", out.usage.completion_tokens


def test_mlx_fp32_conversion_answers_as_the_original(
    catalog: ModelCatalog, tiny_mlx: CatalogEntry, home: Path
) -> None:
    assert (tiny_mlx.id, tiny_mlx.format, tiny_mlx.precision) == ("tiny-mlx", "mlx", "fp32")
    assert (tiny_mlx.source, tiny_mlx.origin) == ("converted", "tiny")
    assert catalog.require("tiny-mlx") == tiny_mlx
    config = json.loads((tiny_mlx.path / "config.json").read_text())
    assert "quantization" not in config
    assert (tiny_mlx.path / "generation_config.json").is_file()
    replies = []
    for model in ("tiny", "tiny-mlx"):
        for server in serve(model, "mlx", home):
            replies.append(greedy(server))
    assert replies[0][1] > 0
    assert replies[0] == replies[1]


def test_mlx_q8_conversion_is_quantized_and_serves(tiny_mlx_q8: CatalogEntry, home: Path) -> None:
    assert (tiny_mlx_q8.id, tiny_mlx_q8.precision) == ("tiny-mlx-q8", "q8")
    config = json.loads((tiny_mlx_q8.path / "config.json").read_text())
    assert config["quantization"]["bits"] == 8 and config["quantization"]["group_size"] == 64
    for server in serve("tiny-mlx-q8", "mlx", home):
        assert greedy(server)[1] > 0


@pytest.mark.parametrize(
    ("q_bits", "name", "precision"), [(None, "f16", "F16"), (8, "q8_0", "Q8_0")]
)
def test_gguf_conversion_serves_on_llama_cpp(
    catalog: ModelCatalog, home: Path, q_bits: int | None, name: str, precision: str
) -> None:
    entry = convert_model(catalog, "tiny", "gguf", q_bits=q_bits)
    assert (entry.id, entry.format, entry.precision) == (f"tiny-gguf-{name}", "gguf", precision)
    files = sorted(p.name for p in entry.path.iterdir())
    assert f"tiny-gguf-{name}.gguf" in files
    # the HF tokenizer and template travel with the GGUF, the weights do not
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert not any(f.endswith(".safetensors") for f in files)
    for server in serve(entry.id, "gguf", home):
        assert greedy(server)[1] > 0


@pytest.mark.slow
def test_embedded_model_to_gguf_q8_0_still_knows_paris(
    embedded_model_path: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    # a copy of the session's import (its marker included), not a second import
    shutil.copytree(embedded_model_path, home / "models" / embedded_model_path.name)
    catalog = ModelCatalog(home / "models")
    entry = convert_model(catalog, "smollm2-135m-instruct", "gguf", q_bits=8)
    assert (entry.id, entry.precision) == ("smollm2-135m-instruct-gguf-q8_0", "Q8_0")
    for server in serve(entry.id, "gguf", home):
        reply, _ = greedy(server, PARIS_QUESTION, max_tokens=24)
        assert "Paris" in reply, reply


@pytest.mark.slow
def test_embedded_model_to_mlx_q8_served_on_demand_knows_paris(
    embedded_model_path: Path, tmp_path: Path
) -> None:
    """HF -> MLX 8-bit with mlx-lm, then named in a request to a server started on another
    model: loaded on demand, and still right."""
    home = tmp_path / "home"
    shutil.copytree(embedded_model_path, home / "models" / embedded_model_path.name)
    catalog = ModelCatalog(home / "models")
    entry = convert_model(catalog, "smollm2-135m-instruct", "mlx", q_bits=8)
    assert (entry.id, entry.format, entry.precision) == (
        "smollm2-135m-instruct-mlx-q8",
        "mlx",
        "q8",
    )
    config = json.loads((entry.path / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    for server in serve("smollm2-135m-instruct", "gguf", home):
        client = client_for(server)
        reply = client.chat.completions.create(
            model=entry.id,
            messages=[{"role": "user", "content": PARIS_QUESTION}],
            temperature=0,
            max_tokens=12,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert f"loaded {entry.id} on mlx" in server.log()


def test_default_ids() -> None:
    assert default_id("org/m", "mlx", None, None) == "org/m-mlx"
    assert default_id("m", "mlx", 4, None) == "m-mlx-q4"
    assert default_id("m", "mlx", None, "bfloat16") == "m-mlx-bf16"
    assert default_id("m", "gguf", None, None) == "m-gguf-f16"
    assert default_id("m", "gguf", None, "float32") == "m-gguf-f32"
    assert default_id("m", "gguf", 4, None) == "m-gguf-q4_0"


def test_gguf_q4_0_and_an_explicit_id(catalog: ModelCatalog) -> None:
    import gguf

    entry = convert_model(catalog, "tiny", "gguf", q_bits=4, new_id="mine/tiny-q4")
    assert (entry.id, entry.precision) == ("mine/tiny-q4", "Q4_0")
    reader = gguf.GGUFReader(str(entry.path / "tiny-q4.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0"
    assert types["output.weight"] == "Q8_0"  # kept at 8 bits, as llama-quantize keeps it
    assert types["blk.0.attn_norm.weight"] == "F32"


def test_refusals(catalog: ModelCatalog, tiny_mlx_q8: CatalogEntry) -> None:
    gguf_entry = catalog.get("tiny-gguf-f16") or convert_model(catalog, "tiny", "gguf")
    with pytest.raises(CatalogError, match="is a GGUF model"):
        convert_model(catalog, gguf_entry.id, "mlx")
    with pytest.raises(CatalogError, match="already quantized"):
        convert_model(catalog, tiny_mlx_q8.id, "gguf", q_bits=8)
    with pytest.raises(CatalogError, match="no model 'nope'"):
        convert_model(catalog, "nope", "mlx")
    with pytest.raises(CatalogError, match="already in the store"):
        convert_model(catalog, "tiny", "mlx", q_bits=8)
    bad: list[dict[str, object]] = [
        {"to": "onnx"},
        {"to": "gguf", "q_bits": 3},
        {"to": "gguf", "dtype": "bfloat16"},
        {"to": "gguf", "group_size": 32},
        {"to": "mlx", "q_bits": 7},
        {"to": "mlx", "group_size": 100},
        {"to": "mlx", "dtype": "float8"},
    ]
    for options in bad:
        with pytest.raises(CatalogError):
            convert_model(catalog, "tiny", **options)  # type: ignore[arg-type]
    # nothing half-built was left behind
    assert not [p for p in catalog.models_dir.iterdir() if p.name.startswith(".")]
