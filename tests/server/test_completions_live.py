"""Legacy `/v1/completions` through a real server, driven by the official `openai` SDK.

The tiny model (both backends) has no fill-in-the-middle tokens: `suffix` is refused.
A copy of it with StarCoder's FIM tokens added serves the infilling tests; the
embedded SmolLM2 has none either (its vocabulary was checked), so it refuses too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from live_server import LiveServer, async_client_for, client_for

FIM_TOKENS = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]


def tokenizer_of(server: LiveServer) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(server.model)


def greedy(server: LiveServer, prompt: Any, max_tokens: int, **kw: Any) -> Any:
    """A temperature-0 completion on the server's model."""
    return client_for(server).completions.create(
        model=server.model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )


def check_logprobs(text: str, logprobs: Any, top: int) -> None:
    """Lengths agree, offsets rise and point at each token, top dicts are k or k+1 wide."""
    n = len(logprobs.tokens)
    assert n == len(logprobs.token_logprobs) == len(logprobs.top_logprobs)
    assert n == len(logprobs.text_offset)
    offsets = logprobs.text_offset
    assert offsets == sorted(offsets) and all(0 <= o <= len(text) for o in offsets)
    for token, offset in zip(logprobs.tokens, offsets, strict=True):
        # a piece of a UTF-8 character has no text of its own; a token after a broken
        # character starts with the replacement character the decoder put there
        if not token.startswith("bytes:"):
            assert text[offset:].startswith(token) or text[offset] == "\ufffd"
    for token, logprob, alternatives in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        if logprob is None:  # a prompt token (echo)
            assert alternatives is None
            continue
        assert logprob <= 0 and len(alternatives) in (top, top + 1)
        assert alternatives[token] == pytest.approx(logprob)


def test_completion_shape_usage_and_prompt_forms(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    tok = tokenizer_of(tiny_server)
    out = greedy(tiny_server, "The cat likes", 6)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.model == tiny_server.model and out.system_fingerprint.startswith("fp_")
    [choice] = out.choices
    assert choice.index == 0 and choice.finish_reason == "length" and choice.logprobs is None
    ids = tok.encode("The cat likes", add_special_tokens=False)
    # a raw prompt: no chat template around it
    assert out.usage.prompt_tokens == len(ids)
    assert out.usage.completion_tokens == 6 and out.usage.total_tokens == len(ids) + 6
    # greedy is deterministic, and the token-id form of the prompt is the same prompt
    assert greedy(tiny_server, "The cat likes", 6).choices[0].text == choice.text
    assert greedy(tiny_server, ids, 6).choices[0].text == choice.text
    assert greedy(tiny_server, [ids], 6).choices[0].text == choice.text
    # OpenAI's default max_tokens is 16
    default = client.completions.create(model=tiny_server.model, prompt="The cat", temperature=0)
    assert default.usage is not None and default.usage.completion_tokens == 16


def test_list_prompts_with_n_number_choices_prompt_major(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    prompts = ["The cat likes", "A dog sees"]
    alone = [greedy(tiny_server, p, 5).choices[0].text for p in prompts]
    out = greedy(tiny_server, prompts, 5, n=2)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    # choice i * n + j is the j-th sample of prompt i
    assert [c.text for c in out.choices] == [alone[0], alone[0], alone[1], alone[1]]
    tok = tokenizer_of(tiny_server)
    # each prompt counted once, each choice's tokens counted
    assert out.usage.prompt_tokens == sum(len(tok.encode(p)) for p in prompts)
    assert out.usage.completion_tokens == 4 * 5
    sampled = client.completions.create(
        model=tiny_server.model, prompt=prompts, max_tokens=5, n=2, seed=7, temperature=1.0
    )
    again = client.completions.create(
        model=tiny_server.model, prompt=prompts, max_tokens=5, n=2, seed=7, temperature=1.0
    )
    assert [c.text for c in sampled.choices] == [c.text for c in again.choices]


def test_stop_string_cuts_the_text(tiny_server: LiveServer) -> None:
    full = greedy(tiny_server, "The cat likes", 12).choices[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    out = greedy(tiny_server, "The cat likes", 12, stop=[stop, "never-appears"])
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_streaming_matches_non_streaming(tiny_server: LiveServer) -> None:
    whole = greedy(tiny_server, "The cat likes", 10, logprobs=2)
    chunks = list(
        greedy(
            tiny_server,
            "The cat likes",
            10,
            logprobs=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len({c.id for c in chunks}) == 1 and all(c.object == "text_completion" for c in chunks)
    body = [c for c in chunks if c.choices]
    assert "".join(c.choices[0].text for c in body) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] == ["length"]
    # streamed logprobs, put together, are the non-streamed ones (offsets into the whole text)
    tokens = [t for c in body for t in c.choices[0].logprobs.tokens]
    offsets = [o for c in body for o in c.choices[0].logprobs.text_offset]
    assert tokens == whole.choices[0].logprobs.tokens
    assert offsets == whole.choices[0].logprobs.text_offset
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    # echo: the prompt comes first, as its own piece
    echoed = list(greedy(tiny_server, "The cat likes", 10, echo=True, stream=True))
    assert echoed[0].choices[0].text == "The cat likes"
    assert "".join(c.choices[0].text for c in echoed) == "The cat likes" + whole.choices[0].text


async def test_async_client_and_async_stream(tiny_server: LiveServer) -> None:
    client = async_client_for(tiny_server)
    kw: dict[str, Any] = {"model": tiny_server.model, "prompt": "A dog sees", "temperature": 0}
    whole = await client.completions.create(max_tokens=6, **kw)
    stream = await client.completions.create(max_tokens=6, stream=True, **kw)
    text = "".join([c.choices[0].text async for c in stream if c.choices])
    assert text == whole.choices[0].text
    await client.close()


def test_echo_with_logprobs(tiny_server: LiveServer) -> None:
    prompt = "The cat likes"
    plain = greedy(tiny_server, prompt, 6).choices[0].text
    out = greedy(tiny_server, prompt, 6, echo=True, logprobs=3)
    choice = out.choices[0]
    assert choice.text == prompt + plain
    n_prompt = len(tokenizer_of(tiny_server).encode(prompt))
    logprobs = choice.logprobs
    assert len(logprobs.tokens) == n_prompt + 6
    # the prompt is scored (tests/server/test_prompt_scoring_live.py): null for its first
    # token only, which has nothing before it, as OpenAI gives it
    assert logprobs.token_logprobs[0] is None
    assert None not in logprobs.token_logprobs[1:n_prompt]
    assert "".join(logprobs.tokens[:n_prompt]) == prompt
    assert logprobs.text_offset[n_prompt] == len(prompt)
    check_logprobs(choice.text, logprobs, 3)
    # greedy takes the most likely token at every step
    for logprob, alternatives in zip(
        logprobs.token_logprobs[n_prompt:], logprobs.top_logprobs[n_prompt:], strict=True
    ):
        assert logprob == pytest.approx(max(alternatives.values()))
    # max_tokens 0 with echo: the prompt alone (scoring requests do this)
    only = greedy(tiny_server, prompt, 0, echo=True, logprobs=0).choices[0]
    assert only.text == prompt and only.finish_reason == "length"
    assert len(only.logprobs.tokens) == n_prompt


def test_logprobs_without_echo_and_zero_alternatives(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    out = client.completions.create(
        model=tiny_server.model, prompt="A dog sees", max_tokens=8, logprobs=0, seed=3
    )
    choice = out.choices[0]
    assert len(choice.logprobs.tokens) == 8
    check_logprobs(choice.text, choice.logprobs, 0)


def test_best_of_returns_the_most_likely_candidate(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    kw: dict[str, Any] = {"model": tiny_server.model, "prompt": "A dog sees", "max_tokens": 6}
    kw.update(seed=11, temperature=1.0)
    # best_of=3 draws the same three candidates as n=3 with the same seed
    three = client.completions.create(n=3, logprobs=0, **kw)

    def mean(choice: Any) -> float:
        values = choice.logprobs.token_logprobs
        return sum(values) / len(values)

    best = max(three.choices, key=mean)
    out = client.completions.create(best_of=3, **kw)
    assert [c.index for c in out.choices] == [0] and out.choices[0].text == best.text
    assert out.choices[0].logprobs is None  # ranked with logprobs, not asked for them
    assert out.usage.completion_tokens == three.usage.completion_tokens


def test_suffix_refused_without_fim_tokens(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=tiny_server.model, prompt="def f(", suffix="return x")
    assert err.value.code == "fim_not_supported" and err.value.param == "suffix"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[100000]]}, "prompt"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "x", "n": 2, "best_of": 1}, "best_of"),
        ({"prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"prompt": "x", "n": 99}, "n"),
        ({"prompt": "x", "echo": True, "suffix": "y"}, "echo"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "x", "logit_bias": {"100000": 1}}, "logit_bias"),
        ({}, "prompt"),
    ],
)
def test_bad_requests_get_the_openai_envelope(
    tiny_server: LiveServer, body: dict[str, Any], param: str
) -> None:
    headers = {"Authorization": f"Bearer {tiny_server.api_key or 'unused'}"}
    reply = httpx.post(
        f"{tiny_server.base_url}/v1/completions",
        json={"model": tiny_server.model, **body},
        headers=headers,
    )
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


def test_unknown_model_is_404(tiny_server: LiveServer) -> None:
    client = client_for(tiny_server)
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="no-such-model", prompt="hi")
    assert err.value.code == "model_not_found"


# --- fill-in-the-middle on a tiny model that has StarCoder's FIM tokens ---


def build_fim_model(source: Path, dest: Path) -> Path:
    """The tiny model plus `<fim_prefix>` & co. as special tokens, with embedding rows."""
    from safetensors.numpy import load_file, save_file
    from tokenizers import Tokenizer

    shutil.copytree(source, dest)
    tokenizer = Tokenizer.from_file(str(dest / "tokenizer.json"))
    tokenizer.add_special_tokens(FIM_TOKENS)
    tokenizer.save(str(dest / "tokenizer.json"))
    config = json.loads((dest / "config.json").read_text())
    config["vocab_size"] = tokenizer.get_vocab_size()
    (dest / "config.json").write_text(json.dumps(config))
    weights = load_file(str(dest / "model.safetensors"))
    rng = np.random.default_rng(1)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        old = weights[name]
        rows = config["vocab_size"] - old.shape[0]
        extra = (rng.standard_normal((rows, old.shape[1])) * 0.2).astype(np.float32)
        weights[name] = np.concatenate([old, extra])
    save_file(weights, str(dest / "model.safetensors"), {"format": "pt"})
    return dest


@pytest.fixture(scope="module")
def fim_server(
    tiny_model_path: Path, pomar_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    path = build_fim_model(tiny_model_path, tmp_path_factory.mktemp("fim") / "tiny-fim")
    server = LiveServer(model=str(path), backend="torch", home=pomar_home).start()
    try:
        yield server
    finally:
        server.stop()


def test_suffix_builds_a_psm_prompt(fim_server: LiveServer) -> None:
    tok = tokenizer_of(fim_server)
    prefix, suffix = "def add(a, b):\n    ", "\n    return c\n"
    pre, suf, mid = tok.convert_tokens_to_ids(["<fim_prefix>", "<fim_suffix>", "<fim_middle>"])
    psm = [
        pre,
        *tok.encode(prefix, add_special_tokens=False),
        suf,
        *tok.encode(suffix, add_special_tokens=False),
        mid,
    ]
    out = greedy(fim_server, prefix, 8, suffix=suffix)
    raw = greedy(fim_server, psm, 8)
    # the same prompt, token for token: prefix, suffix, then the middle is generated
    assert out.usage.prompt_tokens == len(psm)
    assert raw.choices[0].text.startswith(out.choices[0].text)
    if out.choices[0].finish_reason == "length":
        assert out.choices[0].text == raw.choices[0].text
    stream = greedy(fim_server, prefix, 8, suffix=suffix, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == out.choices[0].text


def test_fim_end_tokens_stop_only_in_fim_mode(fim_server: LiveServer) -> None:
    tok = tokenizer_of(fim_server)
    pad = str(tok.convert_tokens_to_ids("<fim_pad>"))
    forced = {"logit_bias": {pad: 100}}
    infill = greedy(fim_server, "x = ", 5, suffix="\n", **forced).choices[0]
    assert infill.text == "" and infill.finish_reason == "stop"
    plain = greedy(fim_server, "x = ", 5, **forced)
    # outside FIM, <fim_pad> is just an (invisible) special token
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 5
    # <|endoftext|> ends any raw completion: it separates documents
    end = str(tok.convert_tokens_to_ids("<|endoftext|>"))
    done = greedy(fim_server, "x = ", 5, logit_bias={end: 100})
    assert done.choices[0].finish_reason == "stop" and done.usage.completion_tokens == 0


@pytest.mark.slow
def test_embedded_model_completes_raw_text_and_refuses_suffix(
    embedded_server: LiveServer,
) -> None:
    out = greedy(embedded_server, "The capital of France is", 5)
    assert "Paris" in out.choices[0].text
    with pytest.raises(openai.BadRequestError) as err:
        greedy(embedded_server, "def f(", 5, suffix="    return x")
    assert err.value.code == "fim_not_supported"
