"""torch engine (transformers): the fallback backend, on mps, cuda or cpu."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from finetune.devices import pick_device
from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop
from server.engine.lookup import lookup_draft
from server.engine.templates import end_of_turn_ids

#: prompt tokens read per forward pass when scoring a prompt: bounds the logits held at
#: once (SCORE_STEP x vocabulary floats, 100 MB for the embedded model's 49k vocabulary)
SCORE_STEP = 512


class TorchEngine(Engine):
    """A transformers causal LM sampled token by token with its KV cache.

    A hand-written decode loop rather than `model.generate`: it yields each token as
    it is sampled and stops between any two tokens when the client leaves, without
    a streamer thread per request.
    """

    backend = "torch"

    def __init__(
        self,
        model_path: Path,
        device: str | None = None,
        context: int | None = None,
        draft_tokens: int = 0,
    ) -> None:
        """`context` caps the model's own context length (a per-model setting);
        `draft_tokens` > 0 turns on prompt-lookup speculation (`server.engine.lookup`)."""
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
        own = int(getattr(self.model.config, "max_position_embeddings", 2048) or 2048)
        self._context = min(own, context or own)
        # transformers 5 renamed `past_key_values` to `cache`; older releases only know the former
        forward_params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        # the prompt's forward needs the last position's logits only: all of them would be
        # len(prompt) x vocab floats (~200 MB for a 1000-token prompt on a 49k vocabulary)
        self._last_logits = {"logits_to_keep": 1} if "logits_to_keep" in forward_params else {}
        self._adapters: Any = None
        self._draft_tokens = draft_tokens if self._last_logits else 0
        #: tokens prompt lookup proposed, and how many of them the model confirmed
        self.drafted = self.accepted = 0

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

    def stats(self) -> dict[str, int]:
        own = {"drafted_tokens": self.drafted, "accepted_tokens": self.accepted}
        return {**super().stats(), **(own if self._draft_tokens else {})}

    def describe(self) -> str:
        return f"torch ({self.device}, {str(self._dtype).removeprefix('torch.')})"

    def score(self, prompt_ids: list[int], top: int) -> list[Sampled]:
        """Each prompt token's logprob given the ones before it (see `Engine.score`)."""
        torch = self._torch
        from transformers import DynamicCache

        if len(prompt_ids) > self._context:
            raise ValueError(f"{len(prompt_ids)} prompt tokens exceed the context")
        out: list[Sampled] = []
        with torch.inference_mode():
            cache = DynamicCache()
            kw = {self._cache_kw: cache, "use_cache": True}
            # the last prompt token predicts nothing that is scored: never read
            for start in range(0, len(prompt_ids) - 1, SCORE_STEP):
                chunk = prompt_ids[start : start + SCORE_STEP]
                targets = prompt_ids[start + 1 : start + 1 + len(chunk)]
                inputs = torch.tensor([chunk[: len(targets)]], device=self.device)
                logits = self.model(input_ids=inputs, **kw).logits[0].float()
                logprobs = torch.log_softmax(logits, dim=-1)
                ids = torch.tensor(targets, device=self.device)
                own = logprobs.gather(-1, ids[:, None])[:, 0].tolist()
                if top <= 0:
                    out.extend(Sampled(t, lp) for t, lp in zip(targets, own, strict=True))
                    continue
                # topk sorts best first; the same floats as `own` for the same id
                values, best = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
                rows = zip(targets, own, best.tolist(), values.tolist(), strict=True)
                out.extend(Sampled(t, lp, tuple(zip(i, v, strict=True))) for t, lp, i, v in rows)
        return out

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        torch = self._torch
        from transformers import DynamicCache

        from server.engine.sampling import CompletionSampler

        room = self._context - len(prompt_ids)
        limit = max(0, min(params.max_tokens, room))
        history = list(prompt_ids)
        with torch.inference_mode():
            cache = DynamicCache()
            inputs = torch.tensor([prompt_ids], device=self.device)
            kw = {self._cache_kw: cache, "use_cache": True}
            logits = self.model(input_ids=inputs, **kw, **self._last_logits).logits
            sampler = CompletionSampler(params, int(logits.shape[-1]))
            drafts: list[int] = []
            made = 0
            while made < limit:
                # the CPU sampler (as the GGUF engine's) on float32 copies of the logits;
                # row i saw the drafts before it: go on while the sample is the draft
                rows = logits[0, -(len(drafts) + 1) :].float().cpu().numpy()
                for i in range(len(drafts) + 1):
                    out = sampler.next(rows[i].copy())
                    yield out
                    made += 1
                    if should_stop() or made >= limit:
                        return
                    sampler.accept(out.token)
                    history.append(out.token)
                    if i == len(drafts) or out.token != drafts[i]:
                        break
                confirmed = i
                if drafts:
                    self.drafted += len(drafts)
                    self.accepted += confirmed
                    refused = cache.get_seq_length() - (len(history) - 1)
                    if refused > 0:  # the refused drafts' keys and values
                        cache.crop(-refused)
                drafts = lookup_draft(history, min(self._draft_tokens, limit - made - 1))
                step = torch.tensor([[history[-1], *drafts]], device=self.device)
                logits = self.model(input_ids=step, **kw).logits
