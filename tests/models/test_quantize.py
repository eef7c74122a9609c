"""`--quant`: llama.cpp's own quantizer (the K-quants and the legacy types) behind `pomar
models convert --to gguf` and `export`, each result served by a real server.

Conversions run in a store of their own (the tiny model added to it as an import would).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from live_server import LiveServer, client_for, run_pomar

from server.engine.gguf.quantize import QUANT_BITS, QUANT_TYPES
from server.engine.gguf.to_hf import Reporter
from server.models.convert import convert_model, default_id
from server.models.store import CatalogEntry, CatalogError, ModelCatalog
from tests.models.tiny_store import tiny_catalog
from tests.prompts import PARIS_QUESTION


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("quantize-home")


@pytest.fixture(scope="module")
def catalog(home: Path, tiny_model_path: Path) -> ModelCatalog:
    """A store holding the tiny model as `tiny` (fp32 Hugging Face folder)."""
    return tiny_catalog(home, tiny_model_path)


def tensor_types(entry: CatalogEntry) -> tuple[str, dict[str, str]]:
    """The GGUF's file type and each tensor's type."""
    import gguf

    (path,) = entry.path.glob("*.gguf")
    reader = gguf.GGUFReader(str(path))
    field = reader.fields["general.file_type"]
    file_type = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
    return file_type, {t.name: t.tensor_type.name for t in reader.tensors}


def serve(model: str, home: Path) -> Iterator[LiveServer]:
    server = LiveServer(model=model, backend="gguf", home=home).start()
    try:
        yield server
    finally:
        server.stop()


def greedy(server: LiveServer, prompt: str, max_tokens: int) -> tuple[str, int]:
    out = client_for(server).chat.completions.create(
        model=server.model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    assert out.usage is not None
    return out.choices[0].message.content or "", out.usage.completion_tokens


def test_tiny_q4_k_m_falls_back_per_tensor_and_is_served(catalog: ModelCatalog, home: Path) -> None:
    """The tiny model's rows (64, 128 values) are no multiple of a K-quant's 256-value
    block: llama.cpp gives each such tensor a legacy type, says how many, and the file
    is still a valid Q4_K_M GGUF that llama.cpp serves."""
    told: list[str] = []
    entry = convert_model(
        catalog, "tiny", "gguf", quant="q4_k_m", report=Reporter(False, told.append)
    )
    assert (entry.id, entry.format, entry.precision) == ("tiny-gguf-q4_k_m", "gguf", "Q4_K_M")
    files = sorted(p.name for p in entry.path.iterdir())
    assert "tiny-gguf-q4_k_m.gguf" in files and "tokenizer.json" in files
    assert not any(f.endswith(".safetensors") or f.startswith(".f16") for f in files)
    file_type, types = tensor_types(entry)
    assert file_type == "MOSTLY_Q4_K_M"
    assert types["blk.0.attn_q.weight"] == "Q5_0"  # Q4_K's fallback for 64-value rows
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert not {"Q4_K", "Q6_K"} & set(types.values())
    notes = [m for m in told if m.startswith("note:")]
    assert len(notes) == 1 and "15 of 16 tensors" in notes[0] and "256" in notes[0], told
    assert "Q5_0" in notes[0]  # the types llama.cpp chose, from its own log
    for server in serve(entry.id, home):
        assert greedy(server, "Hello", 8)[1] > 0


def test_an_unquantized_gguf_in_the_store_is_quantized_as_it_is(catalog: ModelCatalog) -> None:
    f16 = catalog.get("tiny-gguf-f16") or convert_model(catalog, "tiny", "gguf")
    entry = convert_model(catalog, f16.id, "gguf", quant="Q8_0")
    assert (entry.id, entry.precision) == ("tiny-gguf-f16-gguf-q8_0", "Q8_0")
    file_type, types = tensor_types(entry)
    assert file_type == "MOSTLY_Q8_0" and types["blk.1.ffn_up.weight"] == "Q8_0"
    assert (entry.path / "tokenizer_config.json").is_file()  # the side files travel along
    with pytest.raises(CatalogError, match="F32, F16 or BF16 GGUF, not a Q8_0 one"):
        convert_model(catalog, entry.id, "gguf", quant="Q4_K_M")
    with pytest.raises(CatalogError, match="is a GGUF model"):
        convert_model(catalog, f16.id, "gguf", q_bits=8)


def test_quant_ids_and_refusals(catalog: ModelCatalog) -> None:
    assert default_id("m", "gguf", None, None, "Q4_K_M") == "m-gguf-q4_k_m"
    bad: list[dict[str, object]] = [
        {"to": "gguf", "quant": "Q4_K_X"},
        {"to": "gguf", "quant": "IQ2_XS"},  # llama.cpp has it, but it needs an imatrix
        {"to": "mlx", "quant": "Q4_K_M"},
        {"to": "gguf", "quant": "Q4_K_M", "q_bits": 4},
        {"to": "gguf", "quant": "Q4_K_M", "dtype": "float32"},
        {"to": "gguf", "q_bits": 6},
    ]
    for options in bad:
        with pytest.raises(CatalogError):
            convert_model(catalog, "tiny", **options)  # type: ignore[arg-type]
    assert not [p for p in catalog.models_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_embedded_model_as_q4_k_m_knows_paris_and_is_smaller_than_q8_0(
    embedded_model_path: Path, tmp_path: Path
) -> None:
    """SmolLM2-135M: its 576-wide rows fall back (576 = 2.25 × 256), its 1536-wide FFN
    down projections take real K-quant blocks."""
    home = tmp_path / "home"
    shutil.copytree(embedded_model_path, home / "models" / embedded_model_path.name)
    catalog = ModelCatalog(home / "models")
    q4 = convert_model(catalog, "smollm2-135m-instruct", "gguf", quant="Q4_K_M")
    q8 = convert_model(catalog, "smollm2-135m-instruct", "gguf", quant="Q8_0")
    (q4_file,), (q8_file,) = q4.path.glob("*.gguf"), q8.path.glob("*.gguf")
    assert q4_file.stat().st_size < 0.8 * q8_file.stat().st_size
    file_type, types = tensor_types(q4)
    counts = Counter(types.values())
    assert file_type == "MOSTLY_Q4_K_M"
    assert counts["Q4_K"] + counts["Q6_K"] > 0 and counts["Q5_0"] > 0, counts
    assert types["blk.0.ffn_down.weight"] in ("Q4_K", "Q6_K")
    for server in serve(q4.id, home):
        reply, _ = greedy(server, PARIS_QUESTION, 24)
        assert "Paris" in reply, reply


# --------------------------------------------------------------------------- the CLI


def pomar(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_pomar(["models", *args], home, env={"POMAR_PORT": "9", "COLUMNS": "200"})


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_cli_quant_validation_convert_and_info(tmp_path: Path, tiny_model_path: Path) -> None:
    home = tmp_path / "home"
    assert pomar(home, "import", str(tiny_model_path)).returncode == 0
    unknown = one_line_error(
        pomar(home, "convert", "tiny-llama", "--to", "gguf", "--quant", "Q4_K_X")
    )
    assert "unknown GGUF quantization 'Q4_K_X'" in unknown and all(
        t in unknown for t in QUANT_TYPES
    )
    mlx = one_line_error(pomar(home, "convert", "tiny-llama", "--to", "mlx", "--quant", "Q4_K_M"))
    assert "--to gguf" in mlx
    both = pomar(
        home, "convert", "tiny-llama", "--to", "gguf", "--quant", "Q4_K_M", "--q-bits", "8"
    )
    assert "give it alone" in one_line_error(both)
    bits = one_line_error(pomar(home, "convert", "tiny-llama", "--to", "gguf", "--q-bits", "6"))
    assert "8 (Q8_0) or 4 (Q4_0)" in bits and "--quant" in bits
    hf = one_line_error(pomar(home, "export", "ft:x", "--to", "hf", "--quant", "Q8_0"))
    assert "not quantized" in hf
    bad_export = one_line_error(pomar(home, "export", "ft:x", "--to", "gguf", "--quant", "Q9"))
    assert "unknown GGUF quantization 'Q9'" in bad_export
    listed = json.loads(pomar(home, "list", "--json").stdout)
    assert [r["id"] for r in listed] == ["tiny-llama"]  # no refusal added anything
    assert "Q4_K_M" in pomar(home, "convert", "--help").stdout

    done = pomar(home, "convert", "tiny-llama", "--to", "gguf", "--quant", "q6_k")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("converted tiny-llama-gguf-q6_k (gguf, Q6_K, ")
    assert "Quantizing to Q6_K with llama.cpp" in done.stderr or "quantized to Q6_K" in done.stderr
    assert "note: " in done.stderr and "multiple of" in done.stderr

    info = json.loads(pomar(home, "info", "tiny-llama", "--json").stdout)
    gguf_rows = {m["precision"]: m for m in info["gguf_memory"]}
    assert list(gguf_rows) == list(QUANT_TYPES)
    for name, bits_per_weight in QUANT_BITS.items():
        assert gguf_rows[name]["bits_per_weight"] == bits_per_weight
        expected = math.ceil(info["parameters"] * bits_per_weight / 8)
        assert gguf_rows[name]["weights_bytes"] == expected
    table = pomar(home, "info", "tiny-llama").stdout
    assert "Q4_K_M" in table and "4.84" in table
