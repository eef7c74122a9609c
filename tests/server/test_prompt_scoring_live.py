"""Prompt scoring on `/v1/completions` (`echo` + `logprobs`) through a real server, on the
three engines (tiny model), with the official `openai` client.

The expected logprobs are the tiny model's own log-softmax, computed here by a
transformers forward pass over the whole prompt (the GGUF server serves the f32 GGUF
converted from the same weights, which sit beside it in its folder).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import openai
import pytest
from live_server import LiveServer, client_for

from server.engine.base import Sampled
from server.engine.token_bytes import TokenBytes
from server.services.completions import LogprobWriter, PromptInput, TokenizerFacts

TOLERANCE = 1e-3
PROMPT = "The cat likes the red apple today. A dog sees the river."


@cache
def reference_model(path: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@cache
def tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def log_softmax(server: LiveServer, ids: list[int]) -> np.ndarray:
    """The model's log-softmax at every position of `ids`, in this process."""
    import torch

    with torch.no_grad():
        logits = reference_model(server.model)(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


@cache
def token_bytes(path: str) -> TokenBytes:
    return TokenBytes(tokenizer(path))


def token_text(server: LiveServer, token: int) -> str:
    """A token as OpenAI writes it: its text, or `bytes:\\xNN` for a piece of a character."""
    _, raw = token_bytes(server.model)(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def check_prompt_logprobs(server: LiveServer, logprobs: Any, ids: list[int], top: int) -> None:
    """The echoed prompt's entries: null first, then the model's logprobs and best tokens."""
    n = len(ids)
    reference = log_softmax(server, ids)
    assert logprobs.tokens[:n] == [token_text(server, t) for t in ids]
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None
    # offsets point at each token in the echoed text
    text = "".join(logprobs.tokens[:n])
    assert logprobs.text_offset[:n] == [len("".join(logprobs.tokens[:i])) for i in range(n)]
    pieces = zip(logprobs.text_offset[:n], logprobs.tokens[:n], strict=True)
    assert all(text[o:].startswith(t) for o, t in pieces)
    for i in range(1, n):
        row = reference[i - 1]
        assert logprobs.token_logprobs[i] == pytest.approx(row[ids[i]], abs=TOLERANCE)
        best = np.argsort(-row, kind="stable")[:top]
        want = {token_text(server, int(t)): row[t] for t in best}
        want.setdefault(token_text(server, ids[i]), row[ids[i]])  # the token itself, as OpenAI
        got = logprobs.top_logprobs[i]
        assert got.keys() == want.keys()
        assert [got[k] for k in want] == pytest.approx(list(want.values()), abs=TOLERANCE)


def completion(server: LiveServer, prompt: Any, max_tokens: int, **kw: Any) -> Any:
    return client_for(server).completions.create(
        model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )


def test_echo_with_max_tokens_0_scores_the_prompt(tiny_server: LiveServer) -> None:
    ids = tokenizer(tiny_server.model).encode(PROMPT, add_special_tokens=False)
    out = completion(tiny_server, PROMPT, 0, echo=True, logprobs=2)
    [choice] = out.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert len(choice.logprobs.tokens) == len(ids)
    check_prompt_logprobs(tiny_server, choice.logprobs, ids, 2)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 0
    # no logprobs asked: the prompt comes back without them
    assert completion(tiny_server, PROMPT, 0, echo=True).choices[0].logprobs is None


def test_token_id_prompts_are_scored_each(tiny_server: LiveServer) -> None:
    tok = tokenizer(tiny_server.model)
    first = tok.encode(PROMPT, add_special_tokens=False)
    second = tok.encode("Every child plants an orange tree.", add_special_tokens=False)
    one = completion(tiny_server, first, 0, echo=True, logprobs=1).choices
    assert len(one) == 1 and one[0].text == tok.decode(first)
    check_prompt_logprobs(tiny_server, one[0].logprobs, first, 1)
    both = completion(tiny_server, [first, second], 0, echo=True, logprobs=1, n=2).choices
    # choice p * n + j is the j-th of prompt p; each of a prompt's choices has its scores
    assert [c.index for c in both] == [0, 1, 2, 3]
    for choice, ids in zip(both, [first, first, second, second], strict=True):
        assert choice.text == tok.decode(ids)
        check_prompt_logprobs(tiny_server, choice.logprobs, ids, 1)


def test_echo_scores_then_generates(tiny_server: LiveServer) -> None:
    ids = tokenizer(tiny_server.model).encode(PROMPT, add_special_tokens=False)
    scored = completion(tiny_server, PROMPT, 0, echo=True, logprobs=1).choices[0].logprobs
    plain = completion(tiny_server, PROMPT, 5).choices[0].text
    out = completion(tiny_server, PROMPT, 5, echo=True, logprobs=1).choices[0]
    assert out.text == PROMPT + plain
    n = len(ids)
    assert len(out.logprobs.tokens) == n + 5
    # the prompt's part is what scoring alone gives, and the generated part follows it
    assert out.logprobs.token_logprobs[:n] == scored.token_logprobs
    assert out.logprobs.top_logprobs[:n] == scored.top_logprobs
    assert out.logprobs.text_offset[n] == len(PROMPT)
    assert None not in out.logprobs.token_logprobs[1:]
    # greedy: each generated token is the best one
    for lp, top in zip(out.logprobs.token_logprobs[n:], out.logprobs.top_logprobs[n:], strict=True):
        assert lp == pytest.approx(max(top.values()))


def test_streamed_echo_carries_the_scores(tiny_server: LiveServer) -> None:
    whole = completion(tiny_server, PROMPT, 3, echo=True, logprobs=1).choices[0]
    chunks = list(completion(tiny_server, PROMPT, 3, echo=True, logprobs=1, stream=True))
    echo = chunks[0].choices[0]
    assert echo.text == PROMPT
    n = len(echo.logprobs.tokens)
    assert echo.logprobs.token_logprobs == whole.logprobs.token_logprobs[:n]
    assert echo.logprobs.top_logprobs == whole.logprobs.top_logprobs[:n]
    tokens = [t for c in chunks for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in chunks for o in c.choices[0].logprobs.text_offset]
    assert tokens == whole.logprobs.tokens and offsets == whole.logprobs.text_offset
    # scoring only, streamed: the echo chunk, then the finish
    only = list(completion(tiny_server, PROMPT, 0, echo=True, logprobs=1, stream=True))
    assert only[0].choices[0].logprobs.token_logprobs == whole.logprobs.token_logprobs[:n]
    assert [c.choices[0].finish_reason for c in only] == [None, "length"]


def test_scoring_fills_the_context_and_no_more(tiny_server: LiveServer) -> None:
    tok = tokenizer(tiny_server.model)
    context = int(reference_model(tiny_server.model).config.max_position_embeddings)
    ids = (tok.encode(PROMPT, add_special_tokens=False) * context)[:context]
    # only scored: the whole context may be used
    out = completion(tiny_server, ids, 0, echo=True, logprobs=0).choices[0]
    assert len(out.logprobs.token_logprobs) == context
    reference = log_softmax(tiny_server, ids)
    got = np.array(out.logprobs.token_logprobs[1:], dtype=np.float64)
    assert np.abs(got - reference[np.arange(context - 1), ids[1:]]).max() < TOLERANCE
    # a token more, or a token to generate after it: refused before any work
    for prompt, max_tokens in ((ids + ids[:1], 0), (ids, 1)):
        with pytest.raises(openai.BadRequestError) as err:
            completion(tiny_server, prompt, max_tokens, echo=True, logprobs=0)
        body = err.value.body
        assert isinstance(body, dict)
        assert body["code"] == "context_length_exceeded" and body["param"] == "prompt"
        assert str(context) in body["message"] and "/" not in body["message"]


def test_a_server_bos_is_read_but_not_echoed(tiny_model_path: Any) -> None:
    """A string prompt of a tokenizer that adds a bos: the model reads the bos, so the
    first echoed token has a logprob (given the bos); token-id prompts are echoed as sent."""
    from transformers import AutoTokenizer

    facts = TokenizerFacts.of(AutoTokenizer.from_pretrained(str(tiny_model_path)))
    ids = facts.tokenizer.encode("A dog sees", add_special_tokens=False)
    bos = facts.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    prompt = PromptInput([bos, *ids], "A dog sees", ids, echo_start=1)
    scores = [Sampled(t, -float(i + 1), ((t, -float(i + 1)),)) for i, t in enumerate(ids)]
    logprobs = LogprobWriter(facts).echo(prompt, scores)
    assert logprobs.token_logprobs == [-float(i + 1) for i in range(len(ids))]
    assert "".join(logprobs.tokens) == "A dog sees"
    as_sent = PromptInput([bos, *ids], "<|endoftext|>A dog sees", [bos, *ids])
    sent = LogprobWriter(facts).echo(as_sent, scores)
    assert sent.token_logprobs == [None] + [-float(i + 1) for i in range(len(ids))]
    assert sent.top_logprobs[0] is None and sent.tokens[0] == "<|endoftext|>"
