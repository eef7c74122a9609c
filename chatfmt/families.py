"""Chat formats of the model families, for models whose tokenizer has no chat template.

A GGUF file or a Hugging Face folder without a chat template (Gemma 3 270M's GGUF, say)
is prompted in its family's own turn format, not in ChatML, whose markers it never saw.
The family comes from the model's architecture (`config.json`'s `model_type`, a GGUF's
`general.architecture`) and, as a check, from the marker tokens its vocabulary holds:

* an architecture of a known family whose markers are tokens of the vocabulary: that family;
* otherwise the first family whose markers are all tokens (Llama 3 and SmolLM share the
  `llama` architecture; a Gemma fine-tuned to ChatML has `<|im_start|>`);
* otherwise the architecture's family even without its markers (Mistral v1's `[INST]` is
  plain text to its tokenizer);
* otherwise ChatML, the last resort.

Each template is the family's published chat template (its `tokenizer_config.json`),
written for `chatfmt.template.render`: plain-string contents, no exception on roles
that do not alternate (tool results become user turns: two user turns may follow each
other), and the conversation rendered without a generation prompt is a prefix of the
same conversation continued, which training's loss masks rely on
(`finetune.data.assistant_spans`). Where a template departs from its original in any
other way, its docstring says how.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """A model family's chat format."""

    name: str
    #: Jinja chat template, rendered as Hugging Face's `apply_chat_template` renders
    template: str
    #: tokens whose presence in the vocabulary identifies the family
    markers: tuple[str, ...]
    #: tokens that end a turn of the model (added to the end-of-turn ids)
    end_of_turn: tuple[str, ...]
    #: `model_type` / `general.architecture` values of the family
    architectures: frozenset[str] = frozenset()


@dataclass(frozen=True)
class FamilyChoice:
    """The format chosen for a model without a chat template, and why (one line for the log)."""

    family: Family
    reason: str


CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML (Qwen, SmolLM, Hermes): `<|im_start|>role\\n…<|im_end|>\\n`."""

GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = (messages[0]['content'] or '') + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ (message['content'] or '') | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
"""Gemma 3 (google/gemma-3-*-it): bos, `<start_of_turn>user\\n…<end_of_turn>\\n`, the
assistant as `model`, the system prompt folded into the first user turn."""

LLAMA3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + (message['content'] or '') | trim + '<|eot_id|>' -%}"
    "{%- if loop.index0 == 0 -%}{%- set content = bos_token + content -%}{%- endif -%}"
    "{{ content }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif -%}"
)
"""Llama 3 (meta-llama/Meta-Llama-3-8B-Instruct):
`<|start_header_id|>role<|end_header_id|>\\n\\n…<|eot_id|>`, bos first."""

MISTRAL_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system_prefix = (messages[0]['content'] or '') + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ (message['content'] or '') + eos_token }}"
    "{%- else -%}"
    "{{ '[INST] ' + (system_prefix if loop.first else '') + (message['content'] or '')"
    " + ' [/INST]' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
"""Mistral (mistralai/Mistral-7B-Instruct-v0.1, Mixtral-8x7B-Instruct):
`<s>[INST] … [/INST]answer</s>`. The original refuses a system message; here it opens
the first `[INST]` block, followed by a blank line (Mistral's own guidance, and
llama.cpp's `mistral-v1` format). The model's turn follows `[/INST]` directly: there is
no generation prompt to add."""

PHI3_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' + (message['content'] or '') + '<|end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)
"""Phi-3 (microsoft/Phi-3-mini-4k-instruct, Phi-3.5-mini-instruct): `<|user|>\\n…<|end|>\\n`.
The original ends a conversation rendered without a generation prompt with eos; left out
here, so a conversation stays a prefix of its continuation (training's masks)."""

CHATML = Family(
    name="chatml",
    template=CHATML_TEMPLATE,
    markers=("<|im_start|>", "<|im_end|>"),
    end_of_turn=("<|im_end|>",),
    architectures=frozenset(
        {"qwen", "qwen2", "qwen2_moe", "qwen2moe", "qwen3", "qwen3_moe", "qwen3moe", "smollm3"}
    ),
)
GEMMA = Family(
    name="gemma",
    template=GEMMA_TEMPLATE,
    markers=("<start_of_turn>", "<end_of_turn>"),
    end_of_turn=("<end_of_turn>",),
    architectures=frozenset(
        {"gemma", "gemma2", "gemma3", "gemma3_text", "gemma3n", "gemma3n_text"}
    ),
)
LLAMA3 = Family(
    name="llama3",
    template=LLAMA3_TEMPLATE,
    markers=("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    end_of_turn=("<|eot_id|>",),
    # `llama` is also Llama 2, Mistral's GGUFs, SmolLM, TinyLlama: the vocabulary decides
)
MISTRAL = Family(
    name="mistral",
    template=MISTRAL_TEMPLATE,
    markers=("[INST]", "[/INST]"),
    end_of_turn=(),  # the turn ends with eos, which always ends a completion
    architectures=frozenset({"mistral", "mixtral"}),
)
PHI3 = Family(
    name="phi3",
    template=PHI3_TEMPLATE,
    markers=("<|user|>", "<|assistant|>", "<|end|>"),
    end_of_turn=("<|end|>",),
    architectures=frozenset({"phi3", "phimoe"}),
)

FAMILIES = (GEMMA, LLAMA3, PHI3, MISTRAL, CHATML)
"""Every family, in the order the vocabulary check tries them (ChatML, the commonest
marker set among fine-tunes of other families, last)."""


def choose_family(architecture: str | None, has_token: Callable[[str], bool]) -> FamilyChoice:
    """The format for a model without a chat template, and the reason for the log.

    `architecture` is the model's `model_type` / `general.architecture` (None when
    unknown); `has_token(t)` says whether `t` is one token of the vocabulary.
    """
    arch = architecture.lower() if architecture else None
    by_arch = next((f for f in FAMILIES if arch in f.architectures), None) if arch else None
    if by_arch is not None and all(has_token(m) for m in by_arch.markers):
        return FamilyChoice(by_arch, f"architecture {arch}, vocabulary has {_list(by_arch)}")
    by_vocab = next((f for f in FAMILIES if all(has_token(m) for m in f.markers)), None)
    if by_vocab is not None:
        if by_arch is not None:
            why = f"architecture {arch} suggests {by_arch.name}, whose markers it lacks"
        elif arch:
            why = f"architecture {arch} has no format of its own"
        else:
            why = "architecture unknown"
        return FamilyChoice(by_vocab, f"vocabulary has {_list(by_vocab)} ({why})")
    if by_arch is not None:
        return FamilyChoice(by_arch, f"architecture {arch} (its markers are not single tokens)")
    known = f"architecture {arch}" if arch else "unknown architecture"
    return FamilyChoice(CHATML, f"{known}, no family's markers in the vocabulary: last resort")


def _list(family: Family) -> str:
    return " ".join(family.markers)
