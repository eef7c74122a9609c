"""Family chat formats for models without a chat template (`chatfmt.families`).

Each family's template renders a conversation exactly as the family's published format
(written out below from the families' model cards and `tokenizer_config.json` chat
templates), and as the official template itself renders it. The tokenizers are built
offline: a word-level vocabulary holding the family's special tokens, saved in a folder
with the `config.json` (or GGUF header) a model of that architecture would have.
"""

from __future__ import annotations

import json
import logging
import struct
from pathlib import Path
from typing import Any

import pytest

from chatfmt.architecture import gguf_architecture, model_architecture
from chatfmt.families import CHATML, FAMILIES, GEMMA, LLAMA3, MISTRAL, PHI3, Family, choose_family
from chatfmt.template import fallback_of, render, template_of
from finetune.data import assistant_spans
from server.engine.templates import ChatTemplate, end_of_turn_ids

SYSTEM, HI, HELLO, ASK = "You are terse.", "Hi!", "Hello.", "Name a colour."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": HI},
    {"role": "assistant", "content": HELLO},
    {"role": "user", "content": ASK},
]

# the published formats of CONVERSATION with the generation prompt
EXPECTED = {
    "gemma": (
        "<bos><start_of_turn>user\nYou are terse.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    ),
    "llama3": (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nName a colour.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "mistral": "<s>[INST] You are terse.\n\nHi! [/INST]Hello.</s>[INST] Name a colour. [/INST]",
    "phi3": (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi!<|end|>\n<|assistant|>\nHello.<|end|>\n"
        "<|user|>\nName a colour.<|end|>\n<|assistant|>\n"
    ),
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n"
        "<|im_start|>assistant\n"
    ),
}

# the official templates, verbatim: google/gemma-3-*-it, meta-llama/Meta-Llama-3-8B-Instruct,
# mistralai/Mistral-7B-Instruct-v0.1, microsoft/Phi-3-mini-4k-instruct
OFFICIAL = {
    "gemma": (
        "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
        "    {%- if messages[0]['content'] is string -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
        "    {%- else -%}\n"
        "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
        "    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
        '    {%- set first_user_prefix = "" -%}\n    {%- set loop_messages = messages -%}\n'
        "{%- endif -%}\n{%- for message in loop_messages -%}\n"
        "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
        '        {{ raise_exception("Conversation roles must alternate '
        'user/assistant/user/assistant/...") }}\n    {%- endif -%}\n'
        "    {%- if (message['role'] == 'assistant') -%}\n"
        '        {%- set role = "model" -%}\n    {%- else -%}\n'
        "        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
        "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
        "    {%- if message['content'] is string -%}\n"
        "        {{ message['content'] | trim }}\n"
        "    {%- elif message['content'] is iterable -%}\n"
        "        {%- for item in message['content'] -%}\n"
        "            {%- if item['type'] == 'image' -%}\n"
        "                {{ '<start_of_image>' }}\n"
        "            {%- elif item['type'] == 'text' -%}\n"
        "                {{ item['text'] | trim }}\n"
        "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
        '        {{ raise_exception("Invalid content type") }}\n    {%- endif -%}\n'
        "    {{ '<end_of_turn>\\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
        "    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n"
    ),
    "llama3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
    ),
    "mistral": (
        "{{ bos_token }}{% for message in messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate "
        "user/assistant/user/assistant/...') }}"
        "{% endif %}{% if message['role'] == 'user' %}"
        "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
        "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
        "{% endif %}{% endfor %}"
    ),
    "phi3": (
        "{% for message in messages %}{% if message['role'] == 'system' %}"
        "{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
        "{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
    ),
    "chatml": CHATML.template,
}

# a model of each family: (architecture, bos, eos, extra special tokens)
MODELS: dict[str, tuple[str, str | None, str, list[str]]] = {
    "gemma": ("gemma3", "<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>"]),
    "llama3": (
        "llama",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
    "mistral": ("mistral", "<s>", "</s>", []),  # v1: [INST] is plain text
    "phi3": (
        "phi3",
        "<s>",
        "<|endoftext|>",
        ["<|user|>", "<|assistant|>", "<|end|>", "<|system|>"],
    ),
    "chatml": ("qwen2", None, "<|im_end|>", ["<|im_start|>", "<|im_end|>"]),
}
WORDS = ["Hi!", "Hello.", "You", "are", "terse.", "Name", "a", "colour.", "Paris"]


def build_tokenizer(folder: Path, bos: str | None, eos: str, specials: list[str]) -> Any:
    """A word-level fast tokenizer with these special tokens, saved in and loaded from `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = ["<unk>", *(t for t in (bos, eos) if t), *specials, *WORDS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = [t for t in dict.fromkeys(specials) if t not in (bos, eos)]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token=bos,
        eos_token=eos,
        additional_special_tokens=extra,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return PreTrainedTokenizerFast.from_pretrained(str(folder))


def family_model(tmp_path: Path, name: str) -> Any:
    """The tokenizer of a model of family `name`, in a folder with its config.json."""
    architecture, bos, eos, specials = MODELS[name]
    folder = tmp_path / name
    tokenizer = build_tokenizer(folder, bos, eos, specials)
    (folder / "config.json").write_text(json.dumps({"model_type": architecture}))
    return tokenizer


def write_gguf_header(path: Path, architecture: str) -> None:
    """A GGUF v3 file holding only metadata: a version, a string array, the architecture."""

    def string(text: str) -> bytes:
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    kvs = [
        string("general.file_type") + struct.pack("<II", 4, 15),
        string("general.tags") + struct.pack("<IIQ", 9, 8, 2) + string("a") + string("bc"),
        string("general.architecture") + struct.pack("<I", 8) + string(architecture),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_family_renders_its_published_format(tmp_path: Path, name: str) -> None:
    tokenizer = family_model(tmp_path, name)
    assert fallback_of(tokenizer).family.name == name
    assert template_of(tokenizer) == next(f for f in FAMILIES if f.name == name).template
    assert render(tokenizer, CONVERSATION, add_generation_prompt=True) == EXPECTED[name]


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_family_renders_as_the_official_template(tmp_path: Path, name: str) -> None:
    tokenizer = family_model(tmp_path, name)
    conversations: list[list[dict[str, str]]] = [CONVERSATION[1:2], CONVERSATION[1:]]
    if name != "mistral":  # Mistral's original refuses a system message
        conversations.append(CONVERSATION)
    for conversation in conversations:
        for prompt in (True, False):
            official = tokenizer.apply_chat_template(
                conversation,
                chat_template=OFFICIAL[name],
                tokenize=False,
                add_generation_prompt=prompt,
            )
            ours = render(tokenizer, conversation, add_generation_prompt=prompt)
            if name == "phi3" and not prompt:
                ours += tokenizer.eos_token  # left out on purpose (see PHI3_TEMPLATE)
            assert ours == official, (conversation, prompt)


@pytest.mark.parametrize(
    ("architecture", "vocabulary", "family", "why"),
    [
        ("gemma3", GEMMA.markers, GEMMA, "architecture gemma3, vocabulary has <start_of_turn>"),
        (None, GEMMA.markers, GEMMA, "architecture unknown"),
        ("llama", LLAMA3.markers, LLAMA3, "architecture llama has no format of its own"),
        ("llama", CHATML.markers, CHATML, "vocabulary has <|im_start|>"),  # SmolLM2
        ("gemma3", CHATML.markers, CHATML, "suggests gemma, whose markers it lacks"),
        ("mistral", (), MISTRAL, "its markers are not single tokens"),
        ("phi3", PHI3.markers, PHI3, "architecture phi3"),
        ("qwen2", (), CHATML, "its markers are not single tokens"),
        ("falcon", (), CHATML, "last resort"),
        (None, (), CHATML, "last resort"),
    ],
)
def test_choice_by_architecture_checked_by_vocabulary(
    architecture: str | None, vocabulary: tuple[str, ...], family: Family, why: str
) -> None:
    choice = choose_family(architecture, lambda token: token in vocabulary)
    assert choice.family is family
    assert why in choice.reason


def test_architecture_from_config_or_gguf(tmp_path: Path) -> None:
    config = tmp_path / "hf"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    assert model_architecture(config) == "gemma3"
    single = tmp_path / "gguf"
    single.mkdir()
    write_gguf_header(single / "model.gguf", "gemma3")
    assert gguf_architecture(single / "model.gguf") == "gemma3"
    assert model_architecture(single) == "gemma3"
    write_gguf_header(single / "other.gguf", "qwen2")
    assert model_architecture(single) is None  # two models: which one is unknown
    assert model_architecture(tmp_path / "missing") is None
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 40)
    assert gguf_architecture(tmp_path / "junk.gguf") is None


def test_gguf_folder_gets_the_architectures_format(tmp_path: Path) -> None:
    """A GGUF's folder (no config.json): the header names the family."""
    architecture, bos, eos, specials = MODELS["gemma"]
    folder = tmp_path / "gemma-gguf"
    tokenizer = build_tokenizer(folder, bos, eos, specials)
    write_gguf_header(folder / "gemma-3-270m.gguf", architecture)
    choice = fallback_of(tokenizer)
    assert choice.family is GEMMA and "architecture gemma3" in choice.reason


def test_served_template_logs_its_choice_and_ends_turns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = family_model(tmp_path, "gemma")
    with caplog.at_level(logging.INFO, logger="server.engine.templates"):
        template = ChatTemplate(tokenizer)
    lines = [r.getMessage() for r in caplog.records if r.name == "server.engine.templates"]
    assert lines == [
        "chat template: gemma (none in the model; "
        "architecture gemma3, vocabulary has <start_of_turn> <end_of_turn>)"
    ]
    assert template.is_fallback and template.family is GEMMA
    ids = template.encode(CONVERSATION)
    assert tokenizer.convert_ids_to_tokens(ids[:2]) == ["<bos>", "<start_of_turn>"]
    ends = end_of_turn_ids(tokenizer, tmp_path / "gemma")
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in ends
    assert tokenizer.eos_token_id in ends
    # a model with its own template: said so, and no family's tokens added
    tokenizer.chat_template = CHATML.template
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="server.engine.templates"):
        assert not ChatTemplate(tokenizer).is_fallback
    assert [r.getMessage() for r in caplog.records] == ["chat template: the model's own"]
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") not in end_of_turn_ids(
        tokenizer, tmp_path / "gemma"
    )


@pytest.mark.parametrize("name", ["gemma", "llama3", "phi3"])
def test_family_end_of_turn_ends_generation(tmp_path: Path, name: str) -> None:
    tokenizer = family_model(tmp_path, name)
    family = fallback_of(tokenizer).family
    ends = end_of_turn_ids(tokenizer, tmp_path / name)
    assert family.end_of_turn and all(
        tokenizer.convert_tokens_to_ids(t) in ends for t in family.end_of_turn
    )


@pytest.mark.parametrize("name", list(EXPECTED))
def test_training_trains_the_answer_and_its_end_of_turn(tmp_path: Path, name: str) -> None:
    """finetune renders through the same fallback; the span ends with the end of turn."""
    tokenizer = family_model(tmp_path, name)
    conversation = [*CONVERSATION[:3]]
    text, spans = assistant_spans(tokenizer, conversation)
    assert text == render(tokenizer, conversation, add_generation_prompt=False)
    assert text.startswith(render(tokenizer, conversation[:2], add_generation_prompt=True))
    ((start, end),) = spans
    family = fallback_of(tokenizer).family
    end_token = family.end_of_turn[0] if family.end_of_turn else tokenizer.eos_token
    assert text[start:end] == HELLO + end_token


def test_tools_go_through_the_system_block(tmp_path: Path) -> None:
    """A family template does not read `tools`: pomar's tool block opens the first user turn."""
    tokenizer = family_model(tmp_path, "gemma")
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
    text = render(tokenizer, CONVERSATION[1:2], [tool], add_generation_prompt=True)
    assert text.startswith("<bos><start_of_turn>user\n# Tools\n")
    assert '"name": "get_weather"' in text and text.count("<start_of_turn>user") == 1
    assert text.endswith(f"\n\n{HI}<end_of_turn>\n<start_of_turn>model\n")
