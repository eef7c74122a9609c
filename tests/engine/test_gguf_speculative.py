"""Prompt-lookup speculative decoding on the GGUF engine: the same output, fewer steps.

On the tiny model's f32 GGUF (llama.cpp's logits for a row do not depend on the rows
beside it there, so a verified draft sees what a plain step would).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from server.engine.base import GenerationParams
from server.engine.generation import complete, interleave, stream_chunks
from server.engine.gguf.backend import GGUFEngine
from server.engine.gguf.rows import Rows
from server.engine.lookup import lookup_draft

GREEDY = GenerationParams(max_tokens=40, temperature=0.0, top_logprobs=1)
NEVER = lambda: False  # noqa: E731


@pytest.fixture(scope="module")
def plain(tiny_gguf_path: Path) -> GGUFEngine:
    return GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, max_batch_size=4)


@pytest.fixture(scope="module")
def drafting(tiny_gguf_path: Path) -> GGUFEngine:
    return GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, max_batch_size=4, draft_tokens=6)


def encode(engine: GGUFEngine, text: str) -> list[int]:
    return list(engine.tokenizer.encode(text, add_special_tokens=False))


def test_lookup_drafts_what_followed_the_last_match() -> None:
    history = [5, 6, 7, 8, 9, 1, 2, 6, 7]
    assert lookup_draft(history, 3) == [8, 9, 1]  # "6 7" was followed by 8 9 1
    assert lookup_draft(history, 1) == [8]
    assert lookup_draft([1, 2, 3, 4], 4) == []  # no earlier match
    # a run: not the latest match (one token follows it) but one with room to follow
    assert lookup_draft([4] * 6, 2) == [4, 4]
    assert lookup_draft(history, 0) == []


def test_forced_repetition_is_drafted_and_accepted(
    plain: GGUFEngine, drafting: GGUFEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = encode(plain, "one two three one two three one two")
    forced = encode(plain, " three")[-1]
    params = replace(GREEDY, max_tokens=30, logit_bias={forced: 100.0})
    expected = complete(plain, ids, params, NEVER)
    steps: list[int] = []
    original = Rows.decode

    def spy(self: Rows, ctx: object) -> int:
        steps.append(len(self))
        return original(self, ctx)

    monkeypatch.setattr(Rows, "decode", spy)
    before = drafting.stats()
    got = complete(drafting, ids, params, NEVER)
    assert got.text == expected.text and got.completion_tokens == 30
    assert [s.token for s in got.tokens] == [s.token for s in expected.tokens] == [forced] * 30
    assert got.tokens[5].logprob == pytest.approx(expected.tokens[5].logprob, abs=1e-4)
    after = drafting.stats()
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    assert accepted > 20 and after["drafted_tokens"] > before["drafted_tokens"]
    assert len(steps) < 12  # 30 tokens in far fewer than 30 steps


@pytest.mark.parametrize(
    "params",
    [GREEDY, replace(GREEDY, temperature=0.9, top_p=0.95, seed=7)],
    ids=["greedy", "seeded"],
)
def test_the_output_is_the_same_with_and_without_drafts(
    plain: GGUFEngine, drafting: GGUFEngine, params: GenerationParams
) -> None:
    """Each drafted row is sampled by the sequence's own sampler in order, so greedy and
    seeded sampling both answer as plain decoding, whatever was accepted."""
    texts = [
        "def add(a, b):\n    return a + b\n\ndef add(a, b):\n    return",
        "The cat sat on the mat. The cat sat on the",
        "1 2 3 4 5 1 2 3 4 5 1 2 3",
    ]
    for text in texts:
        ids = encode(plain, text)
        plain.clear_cache()
        drafting.clear_cache()
        want = [s.token for s in complete(plain, ids, params, NEVER).tokens]
        got = [s.token for s in complete(drafting, ids, params, NEVER).tokens]
        assert got == want, text


def test_drafting_sequences_batch_with_plain_ones(plain: GGUFEngine, drafting: GGUFEngine) -> None:
    texts = ["a b c a b c a b", "hello there, friend", "x y z x y z x", "1 2 3 4"]
    prompts = [encode(plain, t) for t in texts]
    params = replace(GREEDY, max_tokens=24)
    want = [[s.token for s in complete(plain, p, params, NEVER).tokens] for p in prompts]
    drafting.clear_cache()
    streams = [stream_chunks(drafting, p, params, NEVER) for p in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    for index, chunk in interleave(streams):
        got[index].extend(s.token for s in chunk.tokens)
    assert got == want
    assert drafting.open_sequences == 0


@pytest.fixture(scope="module")
def self_drafting(tiny_gguf_path: Path) -> GGUFEngine:
    """The tiny model drafting for itself: every greedy draft should be confirmed."""
    return GGUFEngine(
        tiny_gguf_path,
        tiny_gguf_path.parent,
        max_batch_size=4,
        draft_tokens=6,
        draft_model=tiny_gguf_path,
    )


@pytest.mark.parametrize(
    "params",
    [GREEDY, replace(GREEDY, temperature=0.9, top_p=0.95, seed=7)],
    ids=["greedy", "seeded"],
)
def test_a_draft_model_gives_the_same_output(
    plain: GGUFEngine, self_drafting: GGUFEngine, params: GenerationParams
) -> None:
    before = self_drafting.stats()
    for text in ["Once upon a time", "The cat sat on the mat.", "1 2 3"]:
        ids = encode(plain, text)
        plain.clear_cache()
        want = complete(plain, ids, params, NEVER)
        got = complete(self_drafting, ids, params, NEVER)
        assert [s.token for s in got.tokens] == [s.token for s in want.tokens], text
        assert got.text == want.text
    after = self_drafting.stats()
    drafted = after["drafted_tokens"] - before["drafted_tokens"]
    accepted = after["accepted_tokens"] - before["accepted_tokens"]
    assert drafted > 20
    if params.temperature == 0:  # its own greedy guesses: all but a near tie confirmed
        assert accepted >= 0.9 * drafted


def test_a_draft_model_drafts_for_a_whole_batch(
    plain: GGUFEngine, self_drafting: GGUFEngine
) -> None:
    texts = ["a b c a b c", "hello there, friend", "x y z", "1 2 3 4"]
    prompts = [encode(plain, t) for t in texts]
    params = replace(GREEDY, max_tokens=24)
    want = [[s.token for s in complete(plain, p, params, NEVER).tokens] for p in prompts]
    streams = [stream_chunks(self_drafting, p, params, NEVER) for p in prompts]
    got: list[list[int]] = [[] for _ in prompts]
    for index, chunk in interleave(streams):
        got[index].extend(s.token for s in chunk.tokens)
    assert got == want and self_drafting.largest_batch == 4


def test_a_draft_model_reads_a_long_history_once(
    plain: GGUFEngine, tiny_gguf_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A history longer than the draft cache's first streams grows them once, with room
    for the answer: before, each doubling lost the cache and read the history again."""
    engine = GGUFEngine(
        tiny_gguf_path,
        tiny_gguf_path.parent,
        max_batch_size=2,
        draft_tokens=6,
        draft_model=tiny_gguf_path,
    )
    draft = engine._batcher._drafter
    fed = 0
    add = Rows.add

    def counting(self: Rows, *args: object, **kwargs: object) -> int:
        nonlocal fed
        if self is draft._rows:
            fed += 1
        return add(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Rows, "add", counting)
    ids = encode(plain, " ".join(f"item {i}," for i in range(100)))
    assert len(ids) > 256  # past the draft cache's first 256 positions a stream
    params = replace(GREEDY, max_tokens=60)
    plain.clear_cache()
    want = complete(plain, ids, params, NEVER)
    got = complete(engine, ids, params, NEVER)
    assert [s.token for s in got.tokens] == [s.token for s in want.tokens]
    drafted = engine.stats()["drafted_tokens"]
    assert drafted > 20
    # the history once, plus at most the drafts and the confirmed tokens
    assert fed <= len(ids) + len(got.tokens) + drafted, (fed, len(ids))


def test_a_draft_model_of_another_vocabulary_is_refused(
    tiny_gguf_path: Path, embedded_model_path: Path
) -> None:
    from server.errors import ModelLoadError
    from server.modelfiles import find_gguf

    other = find_gguf(embedded_model_path)
    assert other is not None
    with pytest.raises(ModelLoadError, match="vocabulary"):
        GGUFEngine(tiny_gguf_path, tiny_gguf_path.parent, draft_tokens=4, draft_model=other)


def test_prompt_lookup_on_the_torch_engine_gives_the_same_output(tiny_model_path: Path) -> None:
    from server.engine.torch.backend import TorchEngine

    plain = TorchEngine(tiny_model_path, device="cpu")
    drafting = TorchEngine(tiny_model_path, device="cpu", draft_tokens=6)
    forced = plain.tokenizer.encode(" three", add_special_tokens=False)[-1]
    cases = [
        ("one two three one two three one two", replace(GREEDY, logit_bias={forced: 100.0})),
        ("The cat sat on the mat. The cat sat on the", GREEDY),
        ("1 2 3 4 5 1 2 3 4 5 1 2", replace(GREEDY, temperature=0.9, top_p=0.95, seed=7)),
    ]
    for text, params in cases:
        ids = list(plain.tokenizer.encode(text, add_special_tokens=False))
        want = complete(plain, ids, params, NEVER)
        got = complete(drafting, ids, params, NEVER)
        assert [s.token for s in got.tokens] == [s.token for s in want.tokens], text
        assert got.tokens[3].logprob == pytest.approx(want.tokens[3].logprob, abs=1e-4)
    stats = drafting.stats()
    assert stats["accepted_tokens"] >= 20 and stats["drafted_tokens"] >= stats["accepted_tokens"]
