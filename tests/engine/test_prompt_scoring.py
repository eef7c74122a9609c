"""`Engine.score`: each prompt token's logprob under the raw model, on all three engines.

The reference is computed here, independently of the engines: a transformers forward
pass over the whole prompt (no KV cache, no chunks) for the tiny model, and
llama-cpp-python's own `Llama(logits_all=True)` for GGUF files. Prompts are longer than
one scoring chunk (512 tokens) so that the chunks' seams are checked too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.engine.base import PAUSE, GenerationParams, Sampled
from server.models.loading import load_engine

TOLERANCE = 1e-3
TOP = 3
TEXT = (
    "The cat likes the red apple today. A dog sees the river every morning. "
    "My friend reads an old book in the park. "
)
GREEDY = GenerationParams(max_tokens=8, temperature=0.0, top_logprobs=1)


@pytest.fixture(scope="module")
def engines(tiny_model_path: Path, tiny_gguf_path: Path) -> dict[str, Any]:
    """The tiny model on each engine (the GGUF engine on its float32 GGUF)."""
    return {
        "mlx": load_engine("mlx", tiny_model_path),
        "torch": load_engine("torch", tiny_model_path),
        "gguf": load_engine("gguf", tiny_gguf_path),
    }


@pytest.fixture(scope="module")
def reference_model(tiny_model_path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path), dtype=torch.float32)
    return model.eval()


def long_prompt(tokenizer: Any, n: int) -> list[int]:
    ids: list[int] = []
    while len(ids) < n:
        ids += tokenizer.encode(TEXT, add_special_tokens=False)
    return ids[:n]


def torch_log_softmax(model: Any, ids: list[int]) -> np.ndarray:
    """The tiny model's log-softmax at every position, one forward pass in float32."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, dim=-1).numpy()


def llama_log_softmax(gguf_file: Path, ids: list[int], *, f32_cache: bool) -> np.ndarray:
    """llama-cpp-python's own scores for `ids` (logits_all), as log-softmax in float64.

    `f32_cache`: a float32 KV cache, as the GGUF engine keeps for an all-f32 file;
    otherwise llama.cpp's f16 cache with flash attention, as the engine serves other files
    (flash attention moves a Q4_1 file's logprobs by up to ~0.3: the reference must match).
    """
    import llama_cpp
    from llama_cpp import Llama

    from server.engine.gguf.backend import physical_cores

    kv = llama_cpp.GGML_TYPE_F32 if f32_cache else None
    threads = physical_cores()
    llama = Llama(
        model_path=str(gguf_file),
        n_ctx=2048,
        logits_all=True,
        type_k=kv,
        type_v=kv,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=not f32_cache,
        verbose=False,
    )
    try:
        llama.eval(ids)
        logits = np.asarray(llama.scores[: len(ids)], dtype=np.float64)
    finally:
        llama.close()
    logits -= logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def check_scores(
    scores: list[Sampled], ids: list[int], reference: np.ndarray, top: int = TOP
) -> None:
    """Item i is ids[i + 1] with its logprob at row i, and the `top` best ids at row i."""
    assert [s.token for s in scores] == ids[1:]
    got = np.array([s.logprob for s in scores])
    want = reference[np.arange(len(ids) - 1), ids[1:]]
    assert np.abs(got - want).max() < TOLERANCE
    for s, row in zip(scores, reference, strict=False):
        best = np.argsort(-row, kind="stable")[:top]
        assert [t for t, _ in s.top] == best.tolist()
        assert [lp for _, lp in s.top] == pytest.approx(row[best].tolist(), abs=TOLERANCE)
        # the token's own logprob is the very number its entry among the best has
        assert dict(s.top).get(s.token, s.logprob) == s.logprob


def greedy(engine: Any, ids: list[int]) -> list[Sampled]:
    return [s for s in engine.token_stream(ids, GREEDY, lambda: False) if s is not PAUSE]


@pytest.mark.parametrize("name", ["mlx", "torch", "gguf"])
def test_scores_are_the_models_log_softmax(
    engines: dict[str, Any], reference_model: Any, name: str
) -> None:
    engine = engines[name]
    ids = long_prompt(engine.tokenizer, 700)
    check_scores(engine.score(ids, TOP), ids, torch_log_softmax(reference_model, ids))
    # no alternatives asked: the same logprobs, no top
    bare = engine.score(ids[:40], 0)
    assert all(s.top == () for s in bare)
    full = torch_log_softmax(reference_model, ids[:40])
    assert [s.logprob for s in bare] == pytest.approx(
        full[np.arange(39), ids[1:40]].tolist(), abs=TOLERANCE
    )
    # many alternatives (the GGUF engine finds more than 8 another way)
    check_scores(engine.score(ids[:40], 12), ids[:40], full, top=12)
    # a one-token prompt has nothing to score
    assert engine.score(ids[:1], TOP) == []


def test_gguf_scores_are_llama_cpp_own(engines: dict[str, Any], tiny_gguf_path: Path) -> None:
    engine = engines["gguf"]
    ids = long_prompt(engine.tokenizer, 700)
    reference = llama_log_softmax(tiny_gguf_path, ids, f32_cache=True)
    check_scores(engine.score(ids, TOP), ids, reference)


@pytest.mark.slow
def test_gguf_scores_of_the_quantized_embedded_model(
    gguf_engine: Any, embedded_model_path: Path
) -> None:
    """The embedded Q4_1 file, with llama.cpp's default f16 KV cache, as served."""
    from server.modelfiles import find_gguf

    gguf_file = find_gguf(embedded_model_path)
    assert gguf_file is not None
    ids = long_prompt(gguf_engine.tokenizer, 200)
    reference = llama_log_softmax(gguf_file, ids, f32_cache=False)
    check_scores(gguf_engine.score(ids, TOP), ids, reference)


@pytest.mark.parametrize("name", ["mlx", "gguf"])
def test_a_completion_after_scoring_reuses_the_prompt(engines: dict[str, Any], name: str) -> None:
    """The KV cache scoring leaves (GGUF's context, MLX's prompt cache) serves the next
    completion of that prompt, which samples what the torch engine (no cache) does."""
    engine = engines[name]
    ids = long_prompt(engine.tokenizer, 90)
    other = long_prompt(engine.tokenizer, 130)[70:]
    cold = greedy(engines["torch"], ids)
    engine.score(other, TOP)
    scored = engine.score(ids, TOP)
    warm = greedy(engine, ids)
    assert warm[0].cached_tokens == len(ids) - 1
    assert [s.token for s in warm] == [s.token for s in cold]
    assert [s.logprob for s in warm] == pytest.approx([s.logprob for s in cold], abs=TOLERANCE)
    # and what a completion left in the cache does not change the next scores
    assert engine.score(ids, TOP) == scored


def test_scoring_between_mlx_batch_steps_leaves_the_batch_alone(
    engines: dict[str, Any], reference_model: Any
) -> None:
    engine = engines["mlx"]
    ids = long_prompt(engine.tokenizer, 60)
    alone = [s.token for s in greedy(engine, ids)]
    stream = engine.token_stream(ids, GREEDY, lambda: False)
    first = [s.token for s in (next(stream), next(stream), next(stream)) if s is not PAUSE]
    assert engine.open_sequences == 1
    other = long_prompt(engine.tokenizer, 600)[100:]
    check_scores(engine.score(other, TOP), other, torch_log_softmax(reference_model, other))
    rest = [s.token for s in stream if s is not PAUSE]
    assert first + rest == alone
