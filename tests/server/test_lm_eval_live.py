"""lm-evaluation-harness's `local-completions` model scoring through a live pomar server.

Its loglikelihood requests are `echo: true, logprobs: 1, max_tokens: 1` on token-id
prompts, and it sums the echoed `token_logprobs` of the continuation (`is_greedy`: each
of them is the best of its `top_logprobs`). The requests here are made by hand (no
data sets) and handed to the harness's own LM object, on the three engines (tiny
model); the expected numbers come from the model's log-softmax in this process.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from live_server import LiveServer

TOLERANCE = 1e-3
PAIRS = [
    ("The cat likes", " the red apple today."),
    ("A dog sees the river", " every morning."),
    ("My friend reads an old book", " in the park."),
    ("", "Every child plants an orange tree."),  # no context: the harness puts eos first
]
ROLLING = "The teacher explains the final report with care."


@cache
def model_and_tokenizer(path: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def log_softmax(path: str, ids: list[int]) -> np.ndarray:
    import torch

    model, _ = model_and_tokenizer(path)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def expected(path: str, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """The continuation's loglikelihood after the context, and whether greedy decoding
    would have produced it, from the model in this process."""
    ids = context + continuation
    rows = log_softmax(path, ids)[len(context) - 1 : len(ids) - 1]
    total = float(sum(row[t] for row, t in zip(rows, continuation, strict=True)))
    greedy = all(int(np.argmax(row)) == t for row, t in zip(rows, continuation, strict=True))
    return total, greedy


def split(path: str, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The token ids of a pair, as the harness makes them (encode the whole, then cut)."""
    _, tok = model_and_tokenizer(path)
    if not context:
        return [tok.eos_token_id], tok.encode(continuation, add_special_tokens=False)
    whole = tok.encode(context + continuation, add_special_tokens=False)
    cut = len(tok.encode(context, add_special_tokens=False))
    return whole[:cut], whole[cut:]


def greedy_pair(path: str) -> tuple[str, str]:
    """A context and the text of the model's own greedy next tokens (which tokenize back
    to those tokens, so the harness sends them)."""
    _, tok = model_and_tokenizer(path)
    for context, _ in PAIRS[:3]:
        ids = tok.encode(context, add_special_tokens=False)
        best: list[int] = []
        for _ in range(3):
            best.append(int(np.argmax(log_softmax(path, ids + best)[-1])))
        for k in (3, 2, 1):
            text = tok.decode(best[:k])
            if split(path, context, text) == (ids, best[:k]):
                return context, text
    raise AssertionError("no greedy continuation of the tiny model tokenizes back to itself")


def harness(server: LiveServer) -> Any:
    """lm_eval's `local-completions` model pointed at the server, two prompts a request."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return LocalCompletionsAPI(
        model=server.model,
        base_url=f"{server.base_url}/v1/completions",
        tokenizer=server.model,
        tokenizer_backend="huggingface",
        header={"Authorization": f"Bearer {server.api_key or 'unused'}"},
        batch_size=2,
        max_retries=1,
    )


def test_lm_eval_loglikelihood_matches_the_model(tiny_server: LiveServer) -> None:
    from lm_eval.api.instance import Instance

    path = tiny_server.model
    pairs = [*PAIRS, greedy_pair(path)]
    requests = [
        Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i)
        for i, pair in enumerate(pairs)
    ]
    results = harness(tiny_server).loglikelihood(requests, disable_tqdm=True)
    assert len(results) == len(pairs)
    for pair, (logprob, is_greedy) in zip(pairs, results, strict=True):
        want, want_greedy = expected(path, *split(path, *pair))
        assert logprob == pytest.approx(want, abs=TOLERANCE), pair
        assert is_greedy == want_greedy, pair
    # both answers were checked: the model's own words are greedy, hand-made ones are not
    assert {greedy for _, greedy in results} == {True, False}


def test_lm_eval_rolling_loglikelihood_matches_the_model(tiny_server: LiveServer) -> None:
    """A whole text's loglikelihood (perplexity tasks), each token given all before it."""
    from lm_eval.api.instance import Instance

    path = tiny_server.model
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(ROLLING,), idx=0)
    [total] = harness(tiny_server).loglikelihood_rolling([request], disable_tqdm=True)
    _, tok = model_and_tokenizer(path)
    want, _ = expected(path, [tok.eos_token_id], tok.encode(ROLLING, add_special_tokens=False))
    assert total == pytest.approx(want, abs=TOLERANCE)
