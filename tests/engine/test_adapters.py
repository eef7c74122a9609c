"""Per-request LoRA adapters on a loaded base: same logits as the libraries' own loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def random_mlx_adapter(base: Path, dest: Path, seed: int) -> Path:
    """An adapter in mlx-lm's format with random (non-zero) weights, saved like mlx-lm does."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(seed)
    model, _ = load(str(base))[:2]
    params = {
        "rank": 4,
        "scale": 2.0,
        "dropout": 0.0,
        "keys": ["self_attn.q_proj", "self_attn.v_proj"],
    }
    linear_to_lora_layers(model, 2, params)
    weights = {
        k: mx.random.normal(v.shape) * 0.5
        for k, v in tree_flatten(model.trainable_parameters())
        if k.endswith(("lora_a", "lora_b"))
    }
    dest.mkdir(parents=True)
    mx.save_safetensors(str(dest / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params}
    (dest / "adapter_config.json").write_text(json.dumps(config))
    return dest


def mlx_logits(model: object, ids: list[int]) -> np.ndarray:
    import mlx.core as mx

    out = model(mx.array([ids]))  # type: ignore[operator]
    return np.array(out[0, -1].astype(mx.float32))


@pytest.fixture(scope="module")
def adapters(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return (
        random_mlx_adapter(tiny_model_path, root / "one", seed=1),
        random_mlx_adapter(tiny_model_path, root / "two", seed=2),
    )


def test_mlx_switchable_adapters_match_mlx_lm(
    tiny_model_path: Path, adapters: tuple[Path, Path]
) -> None:
    import mlx.core as mx
    from mlx_lm import load

    from server.engine.mlx.adapters import MLXAdapterSet

    ids = [5, 17, 42, 99, 7]
    base, _ = load(str(tiny_model_path))[:2]
    base.set_dtype(mx.float32)
    bare = mlx_logits(base, ids)
    expected = []
    for adapter in adapters:
        ref, _ = load(str(tiny_model_path), adapter_path=str(adapter))[:2]
        ref.set_dtype(mx.float32)
        expected.append(mlx_logits(ref, ids))
    assert not np.allclose(expected[0], bare, atol=1e-3)  # the adapter really changes the output

    bank = MLXAdapterSet(base, max_loaded=1)
    bank.activate(adapters[0])
    np.testing.assert_allclose(mlx_logits(base, ids), expected[0], atol=1e-4)
    bank.activate(adapters[1])  # evicts the first (max_loaded=1) and switches
    np.testing.assert_allclose(mlx_logits(base, ids), expected[1], atol=1e-4)
    bank.activate(None)
    np.testing.assert_allclose(mlx_logits(base, ids), bare, atol=1e-5)
    bank.activate(adapters[0])  # reloaded after eviction
    np.testing.assert_allclose(mlx_logits(base, ids), expected[0], atol=1e-4)
