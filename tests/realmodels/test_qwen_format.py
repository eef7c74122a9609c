"""Qwen2.5's tool-call format on its real tokenizer, read from the real GGUF: detection,
the special-token markers the grammar forces, and the text the parser reads back.

In Qwen's vocabulary `<tool_call>` and `</tool_call>` are single tokens that llguidance
treats as special: a grammar that spells them as text refuses the token the model
writes (the 500 `token "<tool_call>"[151657] doesn't satisfy the grammar`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import _fetched
from model_fetch import QWEN

from chatfmt.toolcalls import parse_calls
from server.engine.constraints import ToolSpec, compiler_for
from server.engine.detokenizer import Detokenizer
from server.engine.output_grammar import Marks, ToolGrammar, output_grammar
from server.engine.templates import ChatTemplate

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
SPECS = [ToolSpec("get_weather", TOOLS[0]["function"]["parameters"])]  # type: ignore[index]
CALL = '\n{"name": "get_weather", "arguments": {"city": "Lisbon"}}\n'


@pytest.fixture(scope="module")
def qwen_tokenizer() -> Any:
    """The tokenizer transformers reads from the GGUF, with the file's chat template."""
    import llama_cpp
    from transformers import AutoTokenizer

    from server.engine.gguf.cpu import ensure_cpu_backend

    gguf: Path = _fetched(QWEN)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    ensure_cpu_backend()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    try:
        import ctypes

        buffer = ctypes.create_string_buffer(1 << 16)
        key = b"tokenizer.chat_template"
        llama_cpp.llama_model_meta_val_str(model, key, buffer, ctypes.sizeof(buffer))
        tokenizer.chat_template = buffer.value.decode()
    finally:
        llama_cpp.llama_model_free(model)
    return tokenizer


def test_qwen_speaks_hermes_with_special_token_tags(qwen_tokenizer: Any) -> None:
    template = ChatTemplate(qwen_tokenizer)
    fmt = template.format
    assert fmt.tools.name == "hermes" and fmt.reasoning is None
    ids = qwen_tokenizer.convert_tokens_to_ids(["<tool_call>", "</tool_call>"])
    assert fmt.marks.ids == {"<tool_call>": ids[0], "</tool_call>": ids[1]}
    prompt = template.render([{"role": "user", "content": "Weather in Lisbon?"}], TOOLS)
    assert "<tools>" in prompt and '"get_weather"' in prompt  # Qwen's own tool block


def test_the_grammar_takes_the_tag_tokens_the_model_writes(qwen_tokenizer: Any) -> None:
    fmt = ChatTemplate(qwen_tokenizer).format
    eos = frozenset({qwen_tokenizer.convert_tokens_to_ids("<|im_end|>")})
    compiler = compiler_for(qwen_tokenizer, eos, "tools")
    open_id, close_id = fmt.marks.ids["<tool_call>"], fmt.marks.ids["</tool_call>"]
    tokens = [open_id, *qwen_tokenizer.encode(CALL, add_special_tokens=False), close_id]

    def run(marks: Marks) -> bool:
        constraint = compiler.compile(
            output_grammar(marks=marks, tools=ToolGrammar(SPECS, "required", False, fmt.tools))
        )()
        for token in tokens:
            if not constraint.allowed(len(qwen_tokenizer))[token]:
                return False
            constraint.advance(token)  # raises when llguidance refuses the token
        return True

    assert run(fmt.marks)
    # tags as text: the mask lets the tag token through but the matcher refuses it, the
    # very error that was a 500
    with pytest.raises(RuntimeError, match="doesn't satisfy the grammar"):
        run(Marks())

    shown = Detokenizer(qwen_tokenizer, fmt.shown_token_ids)
    text = "".join(shown.add(t) for t in tokens)
    parsed = parse_calls(text, fmt.tools, ["get_weather"])
    assert [(n, json.loads(a)) for _i, n, a in parsed.calls] == [
        ("get_weather", {"city": "Lisbon"})
    ]
    assert parsed.content == ""
