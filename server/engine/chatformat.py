"""What a served model's conversation format is: its tool-call format, whether it
reasons, its thinking switch, and which markers are special tokens.

Read once per model from its chat template and tokenizer (`ChatTemplate.format`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from chatfmt.reasoning import ReasoningFormat, detect_reasoning
from chatfmt.toolcalls import ToolFormat, detect_format
from server.engine.output_grammar import Marks, special_marks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFormat:
    """How one model writes tool calls and reasoning."""

    tools: ToolFormat
    reasoning: ReasoningFormat | None
    #: markers the grammar forces as special tokens
    marks: Marks
    #: the chat template's free variables (`tools`, `enable_thinking`, ...)
    variables: frozenset[str]

    @property
    def shown_token_ids(self) -> frozenset[int]:
        """Special tokens the detokenizer must show: the parsers read these markers."""
        return frozenset(self.marks.ids.values())

    def describe(self) -> str:
        """One line for the log."""
        thinking = "no reasoning block"
        if self.reasoning is not None:
            switch = f", switch {self.reasoning.switch}" if self.reasoning.switch else ""
            thinking = f"reasoning in {self.reasoning.open}…{self.reasoning.close}{switch}"
        tokens = ", ".join(sorted(self.marks.ids)) or "none"
        return f"tool calls: {self.tools.name}; {thinking}; special-token markers: {tokens}"


def model_format(template: str, tokenizer: Any) -> ModelFormat:
    """The format of a model with chat template `template` and this HF tokenizer."""
    variables = template_variables(template)
    vocab = tokenizer.get_vocab()
    tools = detect_format(template, "tools" in variables, vocab)
    reasoning = detect_reasoning(template, variables, vocab)
    markers = list(tools.markers)
    if reasoning is not None:
        markers += [reasoning.open, reasoning.close]
    fmt = ModelFormat(
        tools, reasoning, special_marks(tokenizer.get_added_vocab(), markers), variables
    )
    log.info("conversation format: %s", fmt.describe())
    return fmt


def template_variables(template: str) -> frozenset[str]:
    """The variables a Jinja chat template reads from outside."""
    import jinja2
    from jinja2 import meta

    try:
        parsed = jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError:
        return frozenset()
    return frozenset(meta.find_undeclared_variables(parsed))
