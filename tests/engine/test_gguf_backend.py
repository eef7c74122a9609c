"""The GGUF engine (llama.cpp) on the embedded model's own GGUF file: the engine contract."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from server.engine.base import PAUSE, GenerationParams, Sampled, TokenConstraint
from server.engine.generation import complete
from server.engine.gguf.backend import GGUFEngine
from server.engine.gguf.rows import Rows
from server.engine.gguf.slots import Slot
from server.engine.sampling import CompletionSampler
from server.engine.templates import ChatTemplate
from server.engine.worker import job_state
from server.errors import ModelLoadError
from server.models.loading import choose_backend, load_engine, training_backend
from tests.prompts import PARIS_QUESTION

GREEDY = GenerationParams(max_tokens=12, temperature=0.0)
PARIS = PARIS_QUESTION  # a first token that is no near tie, whatever the CPU kernels
NEVER: Callable[[], bool] = lambda: False  # noqa: E731


def prompt(engine: GGUFEngine, text: str) -> list[int]:
    return ChatTemplate(engine.tokenizer).encode([{"role": "user", "content": text}])


def run(engine: GGUFEngine, ids: list[int], params: GenerationParams) -> list[Sampled]:
    return [s for s in engine.token_stream(ids, params, NEVER) if s is not PAUSE]


def tokens(engine: GGUFEngine, ids: list[int], params: GenerationParams) -> list[int]:
    return [s.token for s in run(engine, ids, params)]


class _Capture:
    """A sampler that keeps the logits it is given and answers greedily."""

    def __init__(self) -> None:
        self.logits: np.ndarray | None = None

    def next(self, logits: np.ndarray) -> Sampled:
        self.logits = logits.copy()
        return Sampled(int(np.argmax(logits)))

    def accept(self, token: int) -> None:
        pass


def next_logits(engine: GGUFEngine, ids: list[int]) -> np.ndarray:
    """The raw logits llama.cpp gives for the token after `ids`, adapter included."""
    capture = _Capture()
    batcher = engine._batcher
    adapter = job_state().get("gguf.adapter", "")
    sequence = batcher.open(ids, adapter, cast(Any, capture), 1)
    try:
        batcher.next(sequence)
    finally:
        batcher.close(sequence)
    assert capture.logits is not None
    return capture.logits


def test_loads_the_shipped_gguf_with_its_folder(
    gguf_engine: GGUFEngine, embedded_model_path: Path
) -> None:
    assert gguf_engine.backend == "gguf"
    assert gguf_engine.gguf_file.suffix == ".gguf"
    assert gguf_engine.model_path == str(embedded_model_path)  # jobs train on the folder
    assert gguf_engine.context_length == 8192
    im_end = gguf_engine.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in gguf_engine.eos_token_ids
    assert "llama.cpp" in gguf_engine.describe()


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "  def f(x):\n\treturn x**2  # ünïcödé, 日本語, emoji 🍐",
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    ],
)
def test_token_ids_agree_with_llama_cpp(gguf_engine: GGUFEngine, text: str) -> None:
    ours = gguf_engine.tokenizer.encode(text, add_special_tokens=False)
    theirs = gguf_engine.llama.tokenize(text.encode(), add_bos=False, special=True)
    assert ours == theirs


def test_chat_template_comes_from_the_gguf(gguf_engine: GGUFEngine) -> None:
    assert (
        gguf_engine.tokenizer.chat_template == gguf_engine.llama.metadata["tokenizer.chat_template"]
    )


def test_greedy_is_deterministic_and_answers(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, PARIS)
    params = replace(GREEDY, max_tokens=20)
    first = complete(gguf_engine, ids, params, NEVER)
    second = complete(gguf_engine, ids, params, NEVER)
    assert first.text == second.text
    assert "Paris" in first.text and first.finish_reason == "stop"


def test_prefix_reuse_evaluates_only_the_new_tokens(
    gguf_engine: GGUFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = prompt(gguf_engine, "Name three fruits.")
    b = prompt(gguf_engine, "Name three vegetables.")
    gguf_engine.clear_cache()  # a cold cache: every token evaluated
    cold = tokens(gguf_engine, a, GREEDY)
    evaluated: list[int] = []
    original = Rows.decode

    def spy(self: Rows, ctx: Any) -> int:
        evaluated.append(len(self))
        return original(self, ctx)

    monkeypatch.setattr(Rows, "decode", spy)
    stream = (s for s in gguf_engine.token_stream(a, GREEDY, NEVER) if s is not PAUSE)
    first = next(stream)
    # the same prompt: its first token comes from the logits its slot kept, no step
    assert evaluated == [] and first.cached_tokens == len(a)
    again = [first, *stream]
    assert [s.token for s in again] == cold and again[1].cached_tokens is None
    assert evaluated[0] == 1  # then one row a token, from the first sampled one on
    evaluated.clear()
    other = tokens(gguf_engine, b, GREEDY)
    shared = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert evaluated[:2] == [len(b) - shared, 1]  # what differs, last token included
    gguf_engine.clear_cache()
    assert tokens(gguf_engine, b, GREEDY) == other  # same as from a cold cache


def test_the_same_prompt_again_samples_from_the_same_logits(gguf_engine: GGUFEngine) -> None:
    """A prompt's last row is read with its last slice; the slot keeps its logits, so
    the prompt again (from the slot or a copy of its prefix) starts from them exactly.
    (From ~100 rows on llama.cpp's kernels give that last row logits up to ~0.5 from a
    one-row step's: measured on this file, 0.48 at 103 tokens, 0.0 at 42.)"""
    ids = prompt(gguf_engine, "Tell me a long story about apples and pears in an orchard " * 6)
    gguf_engine.clear_cache()
    cold = next_logits(gguf_engine, ids)
    assert np.array_equal(next_logits(gguf_engine, ids), cold)
    batcher = gguf_engine._batcher
    holder = batcher.open(ids, "", cast(Any, _Capture()), 1)  # holds the slot with `ids`
    try:
        batcher.next(holder)
        copied = next_logits(gguf_engine, ids)  # another slot: the prefix is copied
    finally:
        batcher.close(holder)
    assert np.array_equal(copied, cold)


def test_a_slot_forgets_kept_logits_with_the_position_they_follow() -> None:
    slot = Slot(0, tokens=[5, 6, 7, 8], kept=(4, np.zeros(3)))
    slot.truncate(4)
    assert slot.kept is not None  # its positions 0-3 are all still there
    slot.truncate(3)
    assert slot.kept is None and slot.tokens == [5, 6, 7]


def test_kept_logits_survive_a_new_context(gguf_engine: GGUFEngine) -> None:
    """A sequence about to sample from kept logits when the cache is replaced reads its
    prompt again instead, and answers the same."""
    ids = prompt(gguf_engine, PARIS)
    gguf_engine.clear_cache()
    cold = tokens(gguf_engine, ids, GREEDY)
    batcher = gguf_engine._batcher
    sequence = batcher.open(ids, "", CompletionSampler(GREEDY, gguf_engine._vocab), 12)
    try:
        assert sequence.first is not None
        gguf_engine.clear_cache()  # what a grown context does to every open sequence
        assert sequence.first is None and len(sequence.todo) == len(ids) - 1
        got = []
        while (out := batcher.next(sequence)) is not None:
            got.append(out.token)
    finally:
        batcher.close(sequence)
    assert got == cold


def test_stop_strings_and_max_tokens(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, PARIS)
    full = complete(gguf_engine, ids, replace(GREEDY, max_tokens=20), NEVER).text
    word = "Paris"
    cut = complete(gguf_engine, ids, replace(GREEDY, max_tokens=20, stop=(word,)), NEVER)
    assert cut.text == full[: full.index(word)] and cut.finish_reason == "stop"
    short = complete(gguf_engine, ids, replace(GREEDY, max_tokens=3), NEVER)
    assert short.completion_tokens == 3 and short.finish_reason == "length"


def test_seed_makes_sampling_repeatable(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, "Write a short poem about pears.")
    params = GenerationParams(max_tokens=24, temperature=1.0, top_p=0.95, seed=7)
    assert tokens(gguf_engine, ids, params) == tokens(gguf_engine, ids, params)
    others = {tuple(tokens(gguf_engine, ids, replace(params, seed=s))) for s in (8, 9, 10)}
    assert len(others | {tuple(tokens(gguf_engine, ids, params))}) > 1


def test_logit_bias_forces_and_bans(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, "What is the capital of France?")
    greedy = tokens(gguf_engine, ids, GREEDY)
    forced = gguf_engine.tokenizer.convert_tokens_to_ids("banana")
    assert (
        tokens(gguf_engine, ids, replace(GREEDY, max_tokens=3, logit_bias={forced: 100}))
        == [forced] * 3
    )
    banned = tokens(gguf_engine, ids, replace(GREEDY, logit_bias={greedy[0]: -100}))
    assert banned[0] != greedy[0]


def test_penalties_count_sampled_tokens(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, "Say the word 'apple' ten times, separated by spaces.")
    params = replace(GREEDY, max_tokens=24)
    plain = tokens(gguf_engine, ids, params)
    penalized = tokens(gguf_engine, ids, replace(params, frequency_penalty=2.0))
    present = tokens(gguf_engine, ids, replace(params, presence_penalty=2.0))

    def most_repeated(seq: list[int]) -> int:
        return max(seq.count(t) for t in set(seq))

    assert most_repeated(plain) >= 5
    assert most_repeated(penalized) < most_repeated(plain)
    assert most_repeated(present) < most_repeated(plain)
    # the first step sees no sampled token yet: the prompt is not penalized (OpenAI's rule)
    assert penalized[0] == plain[0] == present[0]


def test_top_logprobs_shape(gguf_engine: GGUFEngine) -> None:
    ids = prompt(gguf_engine, "What is the capital of France?")
    none = run(gguf_engine, ids, replace(GREEDY, max_tokens=4))
    assert all(s.logprob is None and s.top == () for s in none)
    only = run(gguf_engine, ids, replace(GREEDY, max_tokens=4, top_logprobs=0))
    assert all(s.logprob is not None and s.top == () for s in only)
    three = run(gguf_engine, ids, replace(GREEDY, max_tokens=4, top_logprobs=3))
    for s in three:
        assert len(s.top) == 3 and s.logprob is not None and s.logprob <= 0
        values = [v for _, v in s.top]
        assert values == sorted(values, reverse=True)
        assert s.top[0] == (s.token, pytest.approx(s.logprob))  # greedy takes the best
    assert [s.token for s in three] == [s.token for s in none]


class OnlyThese(TokenConstraint):
    """Allows a fixed set of ids at every step and records what it was fed."""

    def __init__(self, allowed: set[int], vocab: int) -> None:
        words = np.zeros((vocab + 31) // 32, dtype=np.uint32)
        for token in allowed:
            words[token // 32] |= np.uint32(1 << (token % 32))
        self._mask = words.view(np.int32).reshape(1, -1)
        self.seen: list[int] = []

    def bitmask(self) -> Any:
        return self._mask

    def advance(self, token: int) -> None:
        self.seen.append(token)


def test_constraint_mask_is_honoured(gguf_engine: GGUFEngine) -> None:
    tok = gguf_engine.tokenizer
    digits = {tok.convert_tokens_to_ids(str(d)) for d in range(10)}
    made: list[OnlyThese] = []

    def factory() -> OnlyThese:
        made.append(OnlyThese(digits, len(tok)))
        return made[-1]

    ids = prompt(gguf_engine, "What is the capital of France?")
    for params in (replace(GREEDY, max_tokens=6), GenerationParams(max_tokens=6, seed=1)):
        out = tokens(gguf_engine, ids, replace(params, constraint=factory))
        assert set(out) <= digits
        assert made[-1].seen == out  # a fresh state per completion, advanced token by token
    assert len(made) == 2


def test_adapters_switch_per_request(gguf_engine: GGUFEngine, gguf_adapter: Path) -> None:
    ids = prompt(gguf_engine, "What is the capital of France?")
    base = tokens(gguf_engine, ids, GREEDY)
    gguf_engine.activate_adapter(gguf_adapter)
    try:
        adapted = tokens(gguf_engine, ids, GREEDY)
        assert adapted != base
        assert tokens(gguf_engine, ids, GREEDY) == adapted
    finally:
        gguf_engine.activate_adapter(None)
    assert tokens(gguf_engine, ids, GREEDY) == base  # the cache was not reused across


def test_kept_logits_stay_with_their_adapter(gguf_engine: GGUFEngine, gguf_adapter: Path) -> None:
    """A one-token prompt shares no cached prefix, yet the slot it lands in may hold the
    same prompt's logits under another adapter: those are not its first token's."""
    ids = [gguf_engine.tokenizer.bos_token_id or 1]
    gguf_engine.clear_cache()
    base = next_logits(gguf_engine, ids)
    gguf_engine.activate_adapter(gguf_adapter)
    try:
        adapted = next_logits(gguf_engine, ids)
    finally:
        gguf_engine.activate_adapter(None)
    assert not np.allclose(adapted, base, atol=1e-3)
    gguf_engine.clear_cache()
    gguf_engine.activate_adapter(gguf_adapter)
    try:
        assert np.allclose(next_logits(gguf_engine, ids), adapted, atol=1e-3)
    finally:
        gguf_engine.activate_adapter(None)


AGREEMENT_PROMPTS = [
    "What is the capital of France?",
    "Name three fruits.",
    "How do I boil an egg?",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Who wrote Hamlet?",
]


def test_adapter_does_what_it_does_on_the_torch_engine(
    gguf_engine: GGUFEngine, gguf_adapter: Path, embedded_model_path: Path, tmp_path: Path
) -> None:
    """The converted adapter moves llama.cpp's logits as it moves torch's (Q4_1 vs bf16 base).

    Without the q/k row permutation the correlation falls to ~0.4; with it it is ~0.9.
    """
    import torch

    from finetune.adapters import convert_mlx_to_peft
    from server.engine.torch.backend import TorchEngine

    reference = TorchEngine(embedded_model_path, device="cpu")
    peft = convert_mlx_to_peft(gguf_adapter, tmp_path / "peft", embedded_model_path)

    def logits(adapter: Path | None, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        gguf_engine.activate_adapter(adapter)
        reference.activate_adapter(peft if adapter else None)
        gguf_engine.clear_cache()
        ours = next_logits(gguf_engine, ids)
        with torch.no_grad():
            theirs = reference.model(torch.tensor([ids])).logits[0, -1].float().numpy()
        return ours, theirs

    correlations = []
    try:
        for text in AGREEMENT_PROMPTS:
            ids = prompt(gguf_engine, text)
            base_ours, base_theirs = logits(None, ids)
            ft_ours, ft_theirs = logits(gguf_adapter, ids)
            delta = np.corrcoef(ft_ours - base_ours, ft_theirs - base_theirs)[0, 1]
            correlations.append(float(delta))
    finally:
        gguf_engine.activate_adapter(None)
    assert min(correlations) > 0.75 and float(np.mean(correlations)) > 0.85, correlations


def test_a_truncated_or_foreign_file_is_a_clear_load_error(
    tmp_path: Path, gguf_engine: GGUFEngine
) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_engine.gguf_file.read_bytes()[:20_000_000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_engine("gguf", truncated)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(gguf_engine.gguf_file.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_engine("gguf", header_only)
    foreign = tmp_path / "foreign.gguf"
    foreign.write_bytes(b"PK\x03\x04 not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        load_engine("gguf", foreign)
    with pytest.raises(ModelLoadError, match="--backend gguf"):
        load_engine("mlx", gguf_engine.gguf_file)


def test_auto_picks_gguf_on_a_cpu_only_machine(
    embedded_model_path: Path, tiny_model_path: Path
) -> None:
    import mlx.core as mx
    import torch

    backend, why = choose_backend("auto", embedded_model_path)
    if mx.default_device() == mx.gpu:
        assert backend == "mlx" and "GPU" in why
    elif torch.cuda.is_available():
        assert backend == "torch" and "CUDA" in why
    else:
        assert backend == "gguf" and "fastest on CPU" in why
        assert choose_backend("auto", tiny_model_path)[0] == "mlx"  # no GGUF file there
        assert "has no GGUF file" in choose_backend("auto", tiny_model_path)[1]
        # `gguf` chosen without the model (app start-up): a model without one gets MLX
        assert choose_backend("auto")[0] == "gguf"
        assert load_engine("gguf", tiny_model_path).backend == "mlx"
    assert training_backend("gguf") in ("mlx", "torch")


def test_the_kv_cache_grows_on_demand_and_answers_the_same(tiny_gguf_path: Path) -> None:
    """A cache allocated small grows for a long prompt; greedy output is unchanged."""
    small = GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, initial_context=256, max_batch_size=2)
    full = GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, initial_context=4096, max_batch_size=2)
    start = small.allocated_context  # llama.cpp pads to a multiple of 256
    assert start < full.allocated_context and small.context_length == full.context_length
    ids = prompt(small, "apples and pears " * 120)
    assert len(ids) > start
    params = GenerationParams(max_tokens=8, temperature=0.0, top_logprobs=2)
    grown = run(small, ids, params)
    assert small.allocated_context >= len(ids) + 7 and small.allocated_context > start
    reference = run(full, ids, params)
    assert [s.token for s in grown] == [s.token for s in reference]
    assert np.allclose([s.logprob for s in grown], [s.logprob for s in reference], atol=1e-4)
    # and a short request after the growth still answers as before
    short = prompt(small, "hello")
    assert tokens(small, short, GREEDY) == tokens(full, short, GREEDY)
