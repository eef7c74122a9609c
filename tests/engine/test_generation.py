"""The backend-independent generation layer: stop strings, limits, cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chatfmt.template import CHATML_TEMPLATE
from server.engine.base import Engine, GenerationParams, Sampled, ShouldStop
from server.engine.generation import StopMatcher, complete, stream_chunks
from server.engine.templates import ChatTemplate


class ScriptedEngine(Engine):
    """An engine that 'samples' a fixed token script with a real tokenizer."""

    backend = "scripted"
    model_path = "scripted"

    def __init__(self, tokenizer: object, script: list[int]) -> None:
        self.tokenizer = tokenizer
        self.script = script
        self.eos_token_ids = frozenset({tokenizer.convert_tokens_to_ids("<|im_end|>")})  # type: ignore[attr-defined]
        self.closed = False
        self.yielded = 0

    def token_stream(
        self, prompt_ids: list[int], params: GenerationParams, should_stop: ShouldStop
    ) -> Iterator[Sampled]:
        try:
            for token in self.script:
                self.yielded += 1
                yield Sampled(token)
        finally:
            self.closed = True


@pytest.fixture(scope="module")
def tokenizer(tiny_model_path: Path) -> object:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_path))


def script_for(tokenizer: object, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))  # type: ignore[attr-defined]


@example("YXX", ["X", "YXX"], [1])  # overlapping stops, fed one char at a time
@example("YXX", ["X", "YXX"], [3])  # ... and all at once: same answer
@given(
    st.text(alphabet="abc XY\n", max_size=40),
    st.lists(st.text(alphabet="abcXY", min_size=1, max_size=4), min_size=1, max_size=3),
    st.lists(st.integers(1, 5), min_size=1, max_size=20),
)
def test_stop_matcher_equals_cutting_the_whole_text(
    text: str, stops: list[str], sizes: list[int]
) -> None:
    """However the text is split into pieces, the emitted text is the text before the first stop."""
    matcher = StopMatcher(tuple(stops))
    out, pos, stopped = "", 0, False
    step = 0
    while pos < len(text):
        size = sizes[step % len(sizes)]
        step += 1
        piece, stopped = matcher.feed(text[pos : pos + size])
        out += piece
        pos += size
        if stopped:
            break
    if not stopped:
        out += matcher.flush()
    # the stop that completes first in the whole text, wherever the pieces were cut
    cuts = [(i + len(s), i) for s in stops if (i := text.find(s)) >= 0]
    expected = text[: min(cuts)[1]] if cuts else text
    assert out == expected
    assert stopped == bool(cuts)


def test_stream_chunks_stop_string_never_emitted(tokenizer: object) -> None:
    engine = ScriptedEngine(
        tokenizer, script_for(tokenizer, "The answer is forty two. END of story")
    )
    chunks = list(
        stream_chunks(engine, [1], GenerationParams(max_tokens=100, stop=("END",)), lambda: False)
    )
    assert "".join(c.text for c in chunks) == "The answer is forty two. "
    assert chunks[-1].finish_reason == "stop"
    assert engine.closed  # the backend's generator is closed when a stop string ends it


def test_stream_chunks_eos_and_length(tokenizer: object) -> None:
    words = script_for(tokenizer, "one two three four five six")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")  # type: ignore[attr-defined]
    engine = ScriptedEngine(tokenizer, [*words[:3], eos, *words[3:]])
    done = complete(engine, [1], GenerationParams(max_tokens=100), lambda: False)
    assert done.finish_reason == "stop" and done.completion_tokens == 3
    assert done.text == tokenizer.decode(words[:3])  # type: ignore[attr-defined]
    engine = ScriptedEngine(tokenizer, words)
    done = complete(engine, [1], GenerationParams(max_tokens=2), lambda: False)
    assert done.finish_reason == "length" and done.completion_tokens == 2
    assert done.text == tokenizer.decode(words[:2])  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params", [GenerationParams(stop=("four",)), GenerationParams(max_tokens=3)]
)
def test_the_engine_stream_is_closed_before_the_last_chunk_goes(
    tokenizer: object, params: GenerationParams
) -> None:
    # so the engine frees the sequence at once, and a runner's stream no longer says it
    # has nothing after its item while the last chunk waits to be taken
    engine = ScriptedEngine(tokenizer, script_for(tokenizer, "one two three four five six"))
    for chunk in stream_chunks(engine, [1], params, lambda: False):
        assert engine.closed == (chunk.finish_reason is not None)
    assert chunk.finish_reason == ("stop" if params.stop else "length")


def test_multibyte_characters_are_never_split(tokenizer: object) -> None:
    text = "café 😀 ação"
    engine = ScriptedEngine(tokenizer, script_for(tokenizer, text))
    chunks = list(stream_chunks(engine, [1], GenerationParams(max_tokens=100), lambda: False))
    assert "".join(c.text for c in chunks) == text
    assert all("\ufffd" not in c.text for c in chunks)


def test_cancel_stops_within_a_token(tokenizer: object) -> None:
    engine = ScriptedEngine(
        tokenizer, script_for(tokenizer, "a b c d e f g h i j k l m n o p") * 10
    )
    seen = 0

    def should_stop() -> bool:
        return seen >= 3

    for chunk in stream_chunks(engine, [1], GenerationParams(max_tokens=1000), should_stop):
        seen += 1
        if chunk.finish_reason:
            assert chunk.finish_reason == "cancelled"
    assert engine.yielded <= 5 and engine.closed


def test_chatml_fallback_template(tokenizer: object) -> None:
    class NoTemplate:
        chat_template = None

        def apply_chat_template(self, messages: list[dict[str, str]], **kw: object) -> str:
            return tokenizer.apply_chat_template(messages, **kw)  # type: ignore[attr-defined, no-any-return]

    template = ChatTemplate(NoTemplate())
    assert template.is_fallback and template.template == CHATML_TEMPLATE
    text = template.render([{"role": "user", "content": "hi"}])
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
