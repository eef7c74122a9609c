"""The OpenAI sampling parameters of a request, as the engines take them."""

from __future__ import annotations

from collections.abc import Mapping

from server.engine.base import GenerationParams
from server.protocol.sampling import SamplingRequest


def generation_params(
    request: SamplingRequest,
    max_tokens: int,
    top_logprobs: int | None,
    defaults: Mapping[str, float] | None,
) -> GenerationParams:
    """Map the OpenAI parameters onto the engine's sampling parameters.

    `defaults` (the model's generation_config) fill temperature / top_p when the
    request names none (as vLLM does); OpenAI's 1.0 otherwise.
    """
    defaults = defaults or {}
    stops = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    temperature = request.temperature
    if temperature is None:
        temperature = defaults.get("temperature", 1.0)
    top_p = request.top_p if request.top_p is not None else defaults.get("top_p", 1.0)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=request.top_k or 0,
        stop=tuple(stops),
        # one non-negative seed for every engine (numpy's generator refuses negatives)
        seed=None if request.seed is None else request.seed % 2**63,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        logit_bias={int(k): v for k, v in (request.logit_bias or {}).items()},
        top_logprobs=top_logprobs,
    )
