"""One MLX model sharded across the ranks of an `mx.distributed` group (several hosts).

mlx-lm shards a model two ways: tensor parallel (`model.shard(group)`: each rank holds a
slice of every attention and MLP matrix, and the layers sum their partial results across
the group each pass) and pipeline parallel (`model.model.pipeline(group)`: each rank
holds a run of whole layers and hands its activations on). `plan` takes the first that
the architecture has and the model's shape allows (`POMAR_SHARDING=tensor|pipeline`
insists on one), and names the architecture when there is none. This is
`mlx_lm.utils.sharded_load`'s rule; it is written out here because that function needs
a `model.safetensors.index.json` for pipelines (single-file models have none) and gives
no reason when the model's heads do not split over the ranks.

`ShardedEngine` serves the model on rank 0, one sequence at a time, each forward pass run
on every rank in lockstep (`server.engine.mlx.lockstep`); the other ranks run `follow`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop
from server.engine.mlx.backend import (
    SCORE_STEP,
    _context_length,
    _sampled,
    _scored,
    request_sampling,
)
from server.engine.mlx.doorbell import Doorbell
from server.engine.mlx.lockstep import Lockstep
from server.engine.templates import end_of_turn_ids
from server.errors import InvalidRequest

#: the environment variable that insists on one way of sharding
SHARDING_ENV = "POMAR_SHARDING"


class ShardingError(ValueError):
    """The model cannot be sharded over this many ranks; the message says why."""


@dataclass(frozen=True)
class Plan:
    """How a model is split: `mode` is "tensor", "pipeline" or "none" (one rank)."""

    mode: str
    ranks: int
    architecture: str

    def describe(self) -> str:
        """e.g. "tensor parallel over 2 ranks"."""
        if self.mode == "none":
            return "one rank"
        return f"{self.mode} parallel over {self.ranks} ranks"


def plan(model: Any, config: dict[str, Any], ranks: int, insist: str = "") -> Plan:
    """How to shard `model` (an `mlx_lm` model, possibly lazy) over `ranks` ranks.

    `insist` is "tensor" or "pipeline" to allow that one only ("" or "auto": either,
    tensor parallel first). Raises `ShardingError` naming the architecture and why.
    """
    architecture = str(config.get("model_type", type(model).__module__.rsplit(".", 1)[-1]))
    if ranks == 1:
        return Plan("none", 1, architecture)
    reasons: dict[str, str] = {}
    if hasattr(model, "shard"):
        bad = _uneven_heads(config, ranks)
        if bad is None:
            reasons["tensor"] = ""
        else:
            reasons["tensor"] = f"its {bad} do not split evenly over {ranks} ranks"
    else:
        reasons["tensor"] = "mlx-lm has no tensor parallel version of it"
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "pipeline"):
        layers = len(getattr(inner, "layers", []))
        reasons["pipeline"] = (
            "" if layers >= ranks else f"its {layers} layers are fewer than {ranks}"
        )
    else:
        reasons["pipeline"] = "mlx-lm has no pipeline version of it"
    modes = ["tensor", "pipeline"] if insist in ("", "auto") else [insist]
    for mode in modes:
        if mode not in reasons:
            raise ShardingError(f"{SHARDING_ENV}={insist}: expected auto, tensor or pipeline")
        if not reasons[mode]:
            return Plan(mode, ranks, architecture)
    why = "; ".join(f"{mode} parallel: {reasons[mode]}" for mode in modes)
    hint = "serve it on one machine (without --hosts)"
    if any(not reasons[mode].startswith("mlx-lm has no") for mode in modes):
        hint += ", or over a number of ranks that fits"
    raise ShardingError(
        f"the {architecture} architecture cannot be sharded over {ranks} ranks ({why}): {hint}"
    )


def _uneven_heads(config: dict[str, Any], ranks: int) -> str | None:
    """Which attention head counts of `config` `ranks` does not divide, if any."""
    text = config.get("text_config")
    source = text if isinstance(text, dict) and "num_attention_heads" in text else config
    heads = source.get("num_attention_heads")
    kv_heads = source.get("num_key_value_heads") or heads
    counts = {"attention heads": heads, "key/value heads": kv_heads}
    bad = [f"{n} {name}" for name, n in counts.items() if isinstance(n, int) and n % ranks]
    return " and ".join(bad) or None


def check(model_path: Path, ranks: int) -> Plan:
    """The plan for serving `model_path` over `ranks` ranks, from a lazy load (no weights
    read): what the launcher checks before it starts any rank. Raises `ShardingError`."""
    from mlx_lm.utils import load_model

    model, config = load_model(model_path, lazy=True, strict=False)
    return plan(model, config, ranks, os.environ.get(SHARDING_ENV, ""))


def load_sharded(model_path: Path, group: Any) -> tuple[Any, dict[str, Any], Plan]:
    """Load this rank's part of the model: every rank calls it with the same arguments.

    Weights load lazily, so a rank reads only its slices (tensor) or its layers
    (pipeline). On the CPU the weights become float32, as `MLXEngine` has them. Ends
    with a collective that also checks every rank loaded the same plan.
    """
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, config = load_model(model_path, lazy=True)
    chosen = plan(model, config, group.size(), os.environ.get(SHARDING_ENV, ""))
    layers = len(model.layers)  # all of them: a pipeline stage keeps its own only
    if chosen.mode == "tensor":
        model.shard(group)
    elif chosen.mode == "pipeline":
        model.model.pipeline(group)
    if mx.default_device() == mx.cpu:
        model.set_dtype(mx.float32)  # bf16 matmuls skip BLAS on the CPU (docs/platform.md)
    mx.eval(model.parameters())
    if group.size() > 1:
        mine = [1, ["none", "tensor", "pipeline"].index(chosen.mode), layers]
        total = mx.distributed.all_sum(mx.array(mine), group=group, stream=mx.cpu).tolist()
        if total != [group.size() * m for m in mine]:
            raise ShardingError(
                "the ranks did not load the same model the same way: every host needs "
                f"the same model files at {model_path} and the same {SHARDING_ENV}"
            )
    return model, config, chosen


class ShardedEngine(Engine):
    """Rank 0's engine over a sharded model: one sequence at a time, no prompt cache.

    Sampling (temperature, top_p, top_k, seed, penalties, logit_bias, grammars, logprobs)
    is the MLX engine's own, done on rank 0 only: the logits are the same on every rank.
    """

    backend = "mlx"

    def __init__(
        self,
        model_path: Path,
        group: Any,
        *,
        bell: Doorbell | None = None,
        context: int | None = None,
    ) -> None:
        """`bell` wakes the followers between sequences (`follow` is given its other end)."""
        import mlx.core as mx
        from mlx_lm.utils import load_tokenizer

        self._mx = mx
        model, config, self.plan = load_sharded(model_path, group)
        self.model = model
        self.lockstep = Lockstep(model, group, bell)
        eos = config.get("eos_token_id")
        self.tokenizer = load_tokenizer(model_path, eos_token_ids=eos)._tokenizer
        self.model_path = str(model_path)
        self.eos_token_ids = end_of_turn_ids(self.tokenizer, model_path)
        self._context = min(_context_length(model_path), context or 1 << 62)
        self._on_cpu = mx.default_device() == mx.cpu
        #: a token stream is open (the lockstep runs one sequence at a time)
        self._open = False

    @property
    def context_length(self) -> int:
        return self._context

    def describe(self) -> str:
        device = "cpu, float32" if self._on_cpu else "gpu"
        return f"mlx sharded ({self.plan.architecture}, {self.plan.describe()}; {device})"

    def stats(self) -> dict[str, int]:
        return {"max_batch_size": 1, "ranks": self.plan.ranks}

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        if adapter_dir is not None:
            raise InvalidRequest(
                "this base is served sharded across hosts, which serves no LoRA adapters: "
                "fuse the fine-tune (pomar models export) and serve that, or serve it on one "
                "host",
                param="model",
            )

    def close(self) -> bool:
        """End the follower ranks (they exit); later passes raise `RankLost`.

        False when they could not be told (one is gone already).
        """
        return self.lockstep.close()

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache

        mx = self._mx
        limit = min(params.max_tokens, self._context - len(prompt_ids))
        if limit <= 0 or not prompt_ids:
            return
        sampler, processors = request_sampling(mx, params)
        if self._open:
            raise RuntimeError("the sharded engine runs one sequence at a time")
        cache = make_prompt_cache(self.model)
        self._open = True
        try:
            # all but the last prompt token read here (cache only, in lockstep); mlx-lm's
            # loop then samples from the last one on, and its model is the lockstep
            self.lockstep.prefill(prompt_ids[:-1], cache)
            steps = generate_step(
                mx.array(prompt_ids[-1:]),
                self.lockstep,  # type: ignore[arg-type]  # called like the model it wraps
                max_tokens=limit,
                sampler=sampler,
                logits_processors=processors,
                prompt_cache=cache,
            )
            first = True
            for token, logprobs in steps:
                sampled = _sampled(mx, int(token), logprobs, params.top_logprobs)
                if first:
                    sampled, first = replace(sampled, cached_tokens=0), False
                yield sampled
                if should_stop():
                    return
        finally:
            self._open = False
            self.lockstep.rest(cache)

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """Each prompt token's logprob given the ones before it (see `Engine.score`)."""
        from mlx_lm.models.cache import make_prompt_cache

        mx = self._mx
        if len(prompt_ids) > self._context:
            raise ValueError(f"{len(prompt_ids)} prompt tokens exceed the context")
        cache = make_prompt_cache(self.model)
        out: list[Sampled] = []
        try:
            for start in range(0, len(prompt_ids), SCORE_STEP):
                chunk = prompt_ids[start : start + SCORE_STEP]
                targets = prompt_ids[start + 1 : start + 1 + len(chunk)]
                logits = self.lockstep(mx.array(chunk)[None], cache=cache)[0]
                if targets:
                    out.extend(_scored(mx, logits[: len(targets)], targets, top))
        finally:
            self.lockstep.rest(cache)
        return out
