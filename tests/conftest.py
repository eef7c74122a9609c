"""Session fixtures: the tiny model (built once), the embedded model, live servers."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from live_server import LiveServer
from tiny_model import build_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLX_DISABLE_COMPILE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from live_server import API_KEY


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Llama model, built once per session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def pomar_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A POMAR_HOME shared by the session's servers (so the embedded import happens once)."""
    return tmp_path_factory.mktemp("pomar-home")


@pytest.fixture(scope="session")
def embedded_model_path(pomar_home: Path) -> Path:
    """The embedded SmolLM2 model imported into the session's store."""
    from server.models.embedded import ensure_embedded_model

    return ensure_embedded_model(pomar_home / "models", progress=False)


def _serve(
    model: str, backend: str, home: Path, api_key: str | None = None
) -> Iterator[LiveServer]:
    server = LiveServer(model=model, backend=backend, home=home, api_key=api_key).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tiny_gguf_path(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model converted to an f32 GGUF, in a copy of its folder beside its HF files.

    `find_gguf` finds it there and the GGUF engine takes the folder's HF tokenizer, as it
    does for the embedded model. A copy, not the tiny model's own folder: there a GGUF file
    would turn `--backend auto` (and the tests of that rule) to the GGUF engine.
    """
    import shutil

    from server.engine.gguf.from_hf import convert_hf_to_gguf

    folder = tmp_path_factory.mktemp("tiny-gguf") / tiny_model_path.name
    shutil.copytree(tiny_model_path, folder)
    return convert_hf_to_gguf(folder, folder / "tiny-llama-f32.gguf", "f32")


@pytest.fixture(scope="session", params=["mlx", "torch", "gguf"])
def tiny_server(request: pytest.FixtureRequest, pomar_home: Path) -> Iterator[LiveServer]:
    """A real server on the tiny model, once per backend; MLX's requires an API key.

    The GGUF engine serves the folder holding the tiny model's f32 GGUF (`tiny_gguf_path`).
    """
    fixture = "tiny_gguf_path" if request.param == "gguf" else "tiny_model_path"
    path: Path = request.getfixturevalue(fixture)
    model = str(path.parent if path.suffix == ".gguf" else path)
    key = API_KEY if request.param == "mlx" else None
    yield from _serve(model, request.param, pomar_home, key)


@pytest.fixture(scope="session")
def embedded_server(pomar_home: Path, embedded_model_path: Path) -> Iterator[LiveServer]:
    """A real server on the embedded model, default backend, default model id."""
    yield from _serve("smollm2-135m-instruct", "auto", pomar_home)


@pytest.fixture(scope="session")
def gguf_engine(embedded_model_path: Path) -> object:
    """The GGUF engine (llama.cpp) on the GGUF file the embedded model ships as."""
    from server.models.loading import load_engine

    return load_engine("gguf", embedded_model_path)


@pytest.fixture(scope="session")
def gguf_adapter(embedded_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random, mild LoRA adapter in mlx-lm's format on the embedded model's top 8 blocks.

    q/k/v/o are all adapted, so a wrong q/k row order in the GGUF conversion shows.
    """
    import json

    import numpy as np
    from safetensors.numpy import save_file

    config = json.loads((embedded_model_path / "config.json").read_text())
    hidden, n_layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    outs = {"q_proj": hidden, "k_proj": kv, "v_proj": kv, "o_proj": hidden}
    rank, top = 8, 8
    rng = np.random.default_rng(0)
    weights = {}
    for layer in range(n_layers - top, n_layers):
        for name, out in outs.items():
            key = f"model.layers.{layer}.self_attn.{name}"
            weights[f"{key}.lora_a"] = rng.normal(0, hidden**-0.5, (hidden, rank))
            weights[f"{key}.lora_b"] = rng.normal(0, 0.05, (rank, out))
    dest = tmp_path_factory.mktemp("gguf-adapter") / "adapter"
    dest.mkdir()
    tensors = {k: v.astype(np.float32) for k, v in weights.items()}
    save_file(tensors, str(dest / "adapters.safetensors"))
    params = {"rank": rank, "scale": 2.0, "dropout": 0.0, "keys": [f"self_attn.{n}" for n in outs]}
    adapter_config = {"fine_tune_type": "lora", "num_layers": top, "lora_parameters": params}
    (dest / "adapter_config.json").write_text(json.dumps(adapter_config))
    return dest


@pytest.fixture(scope="session")
def gguf_server(pomar_home: Path, embedded_model_path: Path) -> Iterator[LiveServer]:
    """A real server on the embedded model with `--backend gguf` (llama.cpp)."""
    yield from _serve("smollm2-135m-instruct", "gguf", pomar_home)
