"""torch engine (transformers): the fallback backend, on mps, cuda or cpu."""

from __future__ import annotations

import inspect
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop
from server.engine.templates import end_of_turn_ids


def pick_device() -> str:
    """mps, then cuda, then cpu."""
    import torch

    if torch.backends.mps.is_available():
        return "mps"
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


class TorchEngine(Engine):
    """A transformers causal LM sampled token by token with its KV cache.

    A hand-written decode loop rather than `model.generate`: it yields each token as
    it is sampled and stops between any two tokens when the client leaves, without
    a streamer thread per request.
    """

    backend = "torch"

    def __init__(self, model_path: Path, device: str | None = None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.device = device or pick_device()
        # fp32 on cpu keeps greedy output identical to the MLX engine's
        dtype = {"cpu": torch.float32, "mps": torch.float16}.get(self.device, torch.bfloat16)
        self.model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype)
        self.model.to(self.device)  # type: ignore[arg-type]
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        self.model_path = str(model_path)
        self.eos_token_ids = end_of_turn_ids(self.tokenizer, model_path)
        self._dtype = dtype
        self._context = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        # transformers 5 renamed `past_key_values` to `cache`; older releases only know the former
        forward_params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        # the prompt's forward needs the last position's logits only: all of them would be
        # len(prompt) x vocab floats (~200 MB for a 1000-token prompt on a 49k vocabulary)
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward_params else {}
        self._adapters: Any = None

    def activate_adapter(self, adapter_dir: Path | None) -> None:
        if adapter_dir is None and self._adapters is None:
            return
        if self._adapters is None:
            from server.engine.torch.adapters import TorchAdapterSet

            self._adapters = TorchAdapterSet(self.model)
        self._adapters.activate(adapter_dir)

    @property
    def context_length(self) -> int:
        return self._context

    def describe(self) -> str:
        return f"torch ({self.device}, {str(self._dtype).removeprefix('torch.')})"

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        torch = self._torch
        from transformers import DynamicCache

        seed = params.seed if params.seed is not None else random.getrandbits(63)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        room = self._context - len(prompt_ids)
        with torch.inference_mode():
            cache = DynamicCache()
            inputs = torch.tensor([prompt_ids], device=self.device)
            kw = {self._cache_kw: cache, "use_cache": True}
            logits = self.model(input_ids=inputs, **kw, **self._last_logits).logits
            counts: Any = None
            constraint = params.constraint() if params.constraint is not None else None
            for _ in range(max(0, min(params.max_tokens, room))):
                scores = logits[0, -1].float().cpu()
                scores, counts = _adjust(torch, scores, params, counts)
                if constraint is not None:
                    allowed = torch.from_numpy(constraint.allowed(scores.shape[-1]))
                    scores = scores.masked_fill(~allowed, float("-inf"))
                token = _sample(torch, scores, params, generator)
                yield _sampled(torch, token, scores, params.top_logprobs)
                if should_stop():
                    return
                if constraint is not None:
                    constraint.advance(token)
                counts[token] += 1
                step = torch.tensor([[token]], device=self.device)
                logits = self.model(input_ids=step, **kw).logits


def _adjust(torch: Any, scores: Any, params: GenerationParams, counts: Any) -> tuple[Any, Any]:
    """Apply logit_bias and OpenAI's presence/frequency penalties (sampled tokens only)."""
    if counts is None:
        counts = torch.zeros_like(scores)
    for token_id, bias in params.logit_bias.items():
        if token_id < scores.shape[-1]:
            scores[token_id] += bias
    if params.presence_penalty or params.frequency_penalty:
        scores = scores - params.frequency_penalty * counts
        scores = scores - params.presence_penalty * (counts > 0).float()
    return scores, counts


def _sampled(torch: Any, token: int, scores: Any, top: int | None) -> Sampled:
    """The token with its logprob and best alternatives, when the request asked."""
    if top is None:
        return Sampled(token)
    logprobs = torch.log_softmax(scores, dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top > 0:
        values, ids = torch.topk(logprobs, top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return Sampled(token, float(logprobs[token]), best)


def _sample(torch: Any, scores: Any, params: GenerationParams, generator: Any) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling."""
    if params.temperature == 0:
        return int(torch.argmax(scores))
    probs = torch.softmax(scores / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest set whose mass reaches top_p (always at least one token)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > params.top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))
