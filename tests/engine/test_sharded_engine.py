"""The sharded MLX engine on one rank (no launch), and how a model's sharding is chosen.

Two ranks over loopback are tests/server/test_sharded_serving_live.py's.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("mlx.core")


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path) -> tuple[Any, Any]:
    """The sharded engine on a group of one, and the one-host MLX engine."""
    import mlx.core as mx

    from server.engine.mlx.backend import MLXEngine
    from server.engine.mlx.sharded import ShardedEngine

    return ShardedEngine(tiny_model_path, mx.distributed.init()), MLXEngine(tiny_model_path)


def _tokens(engine: Any, prompt: list[int], **params: Any) -> list[int]:
    from server.engine.base import PAUSE, GenerationParams

    stream = engine.token_stream(prompt, GenerationParams(**params), lambda: False)
    return [s.token for s in stream if s is not PAUSE]


@pytest.mark.parametrize(
    "params",
    [
        {"max_tokens": 24, "temperature": 0},
        {"max_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 7},
        {"max_tokens": 24, "temperature": 0, "frequency_penalty": 1.5, "logit_bias": {42: 5.0}},
    ],
)
def test_it_samples_as_the_mlx_engine_does(engines: tuple[Any, Any], params: Any) -> None:
    sharded, single = engines
    prompt = list(range(5, 600))  # two prefill passes of the lockstep (512 ids each)
    assert _tokens(sharded, prompt, **params) == _tokens(single, prompt, **params)


def test_it_scores_prompts_as_the_mlx_engine_does(engines: tuple[Any, Any]) -> None:
    sharded, single = engines
    prompt = list(range(9, 60))
    ours, theirs = sharded.score(prompt, 2), single.score(prompt, 2)
    assert [s.token for s in ours] == [s.token for s in theirs]
    gaps = [abs((a.logprob or 0) - (b.logprob or 0)) for a, b in zip(ours, theirs, strict=True)]
    assert max(gaps) < 1e-4


def test_it_serves_one_sequence_and_no_adapter(engines: tuple[Any, Any], tmp_path: Path) -> None:
    from server.engine.base import GenerationParams
    from server.errors import InvalidRequest

    sharded, _ = engines
    assert sharded.stats() == {"max_batch_size": 1, "ranks": 1}
    sharded.activate_adapter(None)
    with pytest.raises(InvalidRequest, match="serves no LoRA adapters"):
        sharded.activate_adapter(tmp_path)
    first = sharded.token_stream([5, 6, 7], GenerationParams(max_tokens=4), lambda: False)
    next(first)
    with pytest.raises(RuntimeError, match="one sequence at a time"):
        next(sharded.token_stream([5, 6], GenerationParams(max_tokens=4), lambda: False))
    first.close()
    assert len(_tokens(sharded, [5, 6], max_tokens=3, temperature=0)) == 3


def _model(*, shard: bool, pipeline_layers: int | None) -> Any:
    model = SimpleNamespace()
    if shard:
        model.shard = lambda group: None
    if pipeline_layers is not None:
        model.model = SimpleNamespace(pipeline=lambda group: None, layers=[0] * pipeline_layers)
    return model


HEADS = {"model_type": "qwen2", "num_attention_heads": 8, "num_key_value_heads": 2}


@pytest.mark.parametrize(
    ("model", "config", "ranks", "insist", "mode"),
    [
        (_model(shard=True, pipeline_layers=4), HEADS, 2, "", "tensor"),
        (_model(shard=True, pipeline_layers=4), HEADS, 1, "", "none"),
        (_model(shard=True, pipeline_layers=4), HEADS, 4, "", "pipeline"),  # 2 kv heads
        (_model(shard=True, pipeline_layers=4), HEADS, 2, "pipeline", "pipeline"),
        (_model(shard=False, pipeline_layers=4), HEADS, 2, "auto", "pipeline"),
        (_model(shard=True, pipeline_layers=None), {"text_config": HEADS}, 2, "", "tensor"),
    ],
)
def test_the_plan_is_tensor_parallel_first(
    model: Any, config: dict[str, Any], ranks: int, insist: str, mode: str
) -> None:
    from server.engine.mlx.sharded import plan

    assert plan(model, config, ranks, insist).mode == mode


@pytest.mark.parametrize(
    ("model", "ranks", "insist", "says"),
    [
        (_model(shard=True, pipeline_layers=4), 8, "", "its 4 layers are fewer than 8"),
        (_model(shard=True, pipeline_layers=None), 3, "", "its 8 attention heads and 2 key"),
        (_model(shard=False, pipeline_layers=4), 2, "tensor", "no tensor parallel version"),
        (_model(shard=True, pipeline_layers=4), 2, "columns", "expected auto, tensor or"),
    ],
)
def test_a_model_that_cannot_shard_is_named_with_why(
    model: Any, ranks: int, insist: str, says: str
) -> None:
    from server.engine.mlx.sharded import ShardingError, plan

    with pytest.raises(ShardingError, match=says):
        plan(model, HEADS, ranks, insist)
