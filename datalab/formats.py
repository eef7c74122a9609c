"""Record formats: detect each record's format on its own and convert it to chat messages.

Supported inputs, one JSON object per line:

* chat — ``{"messages": [...], "tools": [...]}``, OpenAI's fine-tuning format, with optional
  ``weight`` (0 or 1) on assistant messages and ``name`` on any message;
* Alpaca — ``{"instruction", "input", "output"}``; ``input`` becomes context in the user turn;
* Alpaca in Portuguese — ``{"instrucao", "contexto", "resposta"}``, same mapping;
* prompt/completion — ``{"prompt", "completion"}``;
* plain text — ``{"text"}``, which becomes a single assistant turn (continued pre-training);
* preference pairs for DPO — OpenAI's ``{"input": {"messages": [...]}, "preferred_output": [...],
  "non_preferred_output": [...]}`` and TRL's ``{"prompt", "chosen", "rejected"}``. These are not
  conversations: :mod:`datalab.preference` reads them, and :func:`parse_record` only names them.

The format is decided per record from its keys, never from the first record of the file, so
a file that mixes formats can be reported instead of being silently coerced.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from datalab.problems import Code, Problem, ProblemLog
from datalab.reader import ReadStats, read_records


class Format(str, Enum):
    """The record formats datalab understands."""

    CHAT = "chat"
    ALPACA = "alpaca"
    ALPACA_PT = "alpaca_pt"
    PROMPT_COMPLETION = "prompt_completion"
    TEXT = "text"
    PREFERENCE = "preference"
    PROMPT_CHOSEN_REJECTED = "prompt_chosen_rejected"


#: Formats whose records are preference pairs (DPO data), read by :mod:`datalab.preference`.
PAIR_FORMATS = frozenset({Format.PREFERENCE, Format.PROMPT_CHOSEN_REJECTED})


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


Role = Literal["system", "user", "assistant", "tool", "function"]


def _join_text_parts(value: Any) -> Any:
    # OpenAI also accepts content as a list of {"type": "text", "text": ...} parts; join them
    # so every later stage sees one string. Anything else is left for the schema to reject.
    if isinstance(value, list) and all(
        isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in value
    ):
        return "".join(p["text"] for p in value)
    return value


class Message(BaseModel):
    """One chat message, as OpenAI's fine-tuning format defines it.

    Constraints are pydantic-native (Literal, ge/le) rather than Python validators: this
    model runs for every message of every record, and native checks halve its cost.
    """

    model_config = ConfigDict(strict=True, extra="ignore")

    role: Role
    content: Annotated[str | None, BeforeValidator(_join_text_parts)] = None
    name: str | None = None
    weight: int | None = Field(None, ge=0, le=1)
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None

    @property
    def trained(self) -> bool:
        """True for an assistant message the model learns from (weight absent or 1)."""
        return self.role == "assistant" and self.weight != 0

    def to_json(self) -> dict[str, Any]:
        """The message as written to a chat JSONL file (unset fields left out)."""
        return self.model_dump(exclude_none=True)


def tool_call_error(call: dict[str, Any]) -> str | None:
    """What is wrong with one tool call of an assistant message, or None when nothing is.

    OpenAI's shape: ``{"id": ..., "type": "function", "function": {"name": ..., "arguments":
    "<JSON text>"}}``, or a ``custom`` call with ``custom.name`` and ``custom.input``. Templates
    read the name and the arguments, so a call without them cannot be rendered.
    """
    kind = call.get("type", "function")
    if kind not in ("function", "custom"):
        return f"type must be 'function' or 'custom', got {kind!r}"
    body = call.get(kind)
    key = "arguments" if kind == "function" else "input"
    if not isinstance(body, dict):
        return f"`{kind}` must be an object with `name` and `{key}`"
    name = body.get("name")
    if not isinstance(name, str) or not name:
        return f"{kind}.name must be a non-empty string"
    if not isinstance(body.get(key), str):
        return f"{kind}.{key} must be a string" + (" (JSON text)" if key == "arguments" else "")
    if not isinstance(call.get("id", ""), str):
        return "id must be a string"
    return None


def check_tool_calls(msg: Message, field: str) -> None:
    """Raise ``invalid_tool_call`` for the first malformed tool call of ``msg``."""
    for j, call in enumerate(msg.tool_calls or ()):
        detail = tool_call_error(call)
        if detail is not None:
            raise PydanticCustomError(
                Code.INVALID_TOOL_CALL, detail, {"field": f"{field}.tool_calls[{j}]"}
            )


class ChatRecord(BaseModel):
    """One training example: a conversation plus optional tool definitions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    messages: list[Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _roles_and_answers(self) -> ChatRecord:
        # One Python call per record (not per message) checks the cross-field rules.
        has_assistant = has_trained = False
        for i, m in enumerate(self.messages):
            if m.tool_calls is not None:
                check_tool_calls(m, f"messages[{i}]")
            if m.role == "assistant":
                has_assistant = True
                has_trained = has_trained or m.weight != 0
            elif m.weight is not None:
                raise PydanticCustomError(
                    Code.INVALID_WEIGHT,
                    "weight is only allowed on assistant messages, not on a {role} message",
                    {"role": m.role, "field": f"messages[{i}].weight"},
                )
        if not has_assistant:
            raise PydanticCustomError(
                Code.NO_ASSISTANT_MESSAGE, "the conversation has no assistant message", {}
            )
        if not has_trained:
            raise PydanticCustomError(
                Code.NO_TRAINABLE_MESSAGE, "every assistant message has weight 0", {}
            )
        return self

    def to_json(self) -> dict[str, Any]:
        """The record as one line of a chat JSONL file."""
        out: dict[str, Any] = {"messages": [m.to_json() for m in self.messages]}
        if self.tools is not None:
            out["tools"] = self.tools
        return out


def _chat(system: str | None, user: str, assistant: str) -> ChatRecord:
    msgs = [] if system is None else [Message.model_construct(role="system", content=system)]
    msgs.append(Message.model_construct(role="user", content=user))
    msgs.append(Message.model_construct(role="assistant", content=assistant))
    # Already typed by the source model, so skip re-validation (this is the hot path).
    return ChatRecord.model_construct(messages=msgs, tools=None)


def _with_context(instruction: str, context: str) -> str:
    return f"{instruction}\n\n{context}" if context.strip() else instruction


class AlpacaRecord(BaseModel):
    """Alpaca: instruction, optional input (context), output."""

    model_config = ConfigDict(strict=True, extra="ignore")
    instruction: str
    input: str = ""
    output: str
    system: str | None = None

    def to_chat(self) -> ChatRecord:
        """The user turn is the instruction followed by the input as context."""
        return _chat(self.system, _with_context(self.instruction, self.input), self.output)


class AlpacaPtRecord(BaseModel):
    """Alpaca with the Portuguese field names used in our users' course material."""

    model_config = ConfigDict(strict=True, extra="ignore")
    instrucao: str
    contexto: str = ""
    resposta: str
    sistema: str | None = None

    def to_chat(self) -> ChatRecord:
        """Same mapping as Alpaca: ``contexto`` is appended to the user turn."""
        return _chat(self.sistema, _with_context(self.instrucao, self.contexto), self.resposta)


class PromptCompletionRecord(BaseModel):
    """Legacy prompt/completion pairs."""

    model_config = ConfigDict(strict=True, extra="ignore")
    prompt: str
    completion: str

    def to_chat(self) -> ChatRecord:
        """The prompt is the user turn, the completion the assistant turn."""
        return _chat(None, self.prompt, self.completion)


class TextRecord(BaseModel):
    """Plain text for continued pre-training."""

    model_config = ConfigDict(strict=True, extra="ignore")
    text: str

    def to_chat(self) -> ChatRecord:
        """The whole text becomes one assistant turn, so all of it is trained on."""
        return ChatRecord.model_construct(
            messages=[Message.model_construct(role="assistant", content=self.text)], tools=None
        )


_SourceModel = AlpacaRecord | AlpacaPtRecord | PromptCompletionRecord | TextRecord

# The key that identifies each format, in priority order. A preference pair's keys come
# first, so that one written with a top-level `messages` is reported as a pair lacking
# `input.messages`; `input` names a pair only when it is an object (Alpaca's is a string).
_SIGNATURES: tuple[tuple[str, Format], ...] = (
    ("preferred_output", Format.PREFERENCE),
    ("non_preferred_output", Format.PREFERENCE),
    ("chosen", Format.PROMPT_CHOSEN_REJECTED),
    ("rejected", Format.PROMPT_CHOSEN_REJECTED),
    ("messages", Format.CHAT),
    ("instruction", Format.ALPACA),
    ("instrucao", Format.ALPACA_PT),
    ("input", Format.PREFERENCE),
    ("prompt", Format.PROMPT_COMPLETION),
    ("completion", Format.PROMPT_COMPLETION),
    ("text", Format.TEXT),
)
_MODELS: dict[Format, type[_SourceModel]] = {
    Format.ALPACA: AlpacaRecord,
    Format.ALPACA_PT: AlpacaPtRecord,
    Format.PROMPT_COMPLETION: PromptCompletionRecord,
    Format.TEXT: TextRecord,
}


def detect_format(obj: dict[str, Any]) -> Format | None:
    """The format of one record, from its keys; None when no known key is present."""
    for key, fmt in _SIGNATURES:
        if key in obj and (key != "input" or isinstance(obj[key], dict)):
            return fmt
    return None


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("messages", 2, "role")`` → ``"messages[2].role"``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# Errors our validators raise with PydanticCustomError carry their code as the error type.
_CUSTOM_CODES = frozenset(
    {
        Code.INVALID_WEIGHT,
        Code.NO_ASSISTANT_MESSAGE,
        Code.NO_TRAINABLE_MESSAGE,
        Code.INVALID_TOOL_CALL,
    }
)


def _problem(line: int, e: Any, prefix: tuple[int | str, ...] = ()) -> Problem:
    loc: tuple[int | str, ...] = (*prefix, *e["loc"])
    kind: str = e["type"]
    ctx = e.get("ctx") or {}
    field = (field_path((*prefix, ctx["field"])) if ctx.get("field") else field_path(loc)) or None
    last = loc[-1] if loc else None
    value = e.get("input")
    if kind in _CUSTOM_CODES:
        code, msg = kind, e["msg"]
    elif kind == "missing":
        code, msg = Code.MISSING_FIELD, "is required but missing"
    elif last == "role":
        code = Code.UNKNOWN_ROLE
        msg = f"unknown role {value!r}; expected one of system, user, assistant, tool"
    elif last == "weight":
        code, msg = Code.INVALID_WEIGHT, f"weight must be 0 or 1, got {value!r}"
    elif last == "content":
        code = Code.INVALID_TYPE
        msg = f"content must be a string or a list of text parts, got {_type_name(value)}"
    elif last == "messages" and kind == "too_short":
        code, msg = Code.EMPTY_MESSAGES, "messages is an empty list"
    else:
        code, msg = Code.INVALID_TYPE, f"{e['msg']} (got {_type_name(value)})"
    where = f"{field}: " if field else ""
    return Problem(line=line, code=code, field=field, message=f"Line {line}: {where}{msg}")


def problems_from_error(
    err: ValidationError, line: int, prefix: tuple[int | str, ...] = ()
) -> list[Problem]:
    """Turn pydantic's errors into problems with our stable codes and field paths.

    ``prefix`` is where the validated value sits in the record (e.g. ``("input.messages",)``).
    """
    return [_problem(line, e, prefix) for e in err.errors(include_url=False)]


def parse_record(
    obj: dict[str, Any], line: int
) -> tuple[Format | None, ChatRecord | None, list[Problem]]:
    """Detect one record's format and convert it to a :class:`ChatRecord`.

    Returns the format (None if unknown), the record (None if invalid) and the problems.
    """
    fmt = detect_format(obj)
    if fmt is None:
        keys = ", ".join(sorted(obj)[:6]) or "none"
        return (
            None,
            None,
            [
                Problem(
                    line=line,
                    code=Code.MISSING_MESSAGES,
                    field="messages",
                    message=f"Line {line}: no `messages` field (nor instruction/output, "
                    f"instrucao/resposta, prompt/completion, text, or a preference pair's "
                    f"input/preferred_output/non_preferred_output); keys found: {keys}",
                )
            ],
        )
    if fmt in PAIR_FORMATS:
        message = (
            f"Line {line}: a preference pair ({fmt.value}), not a conversation; "
            "read it with datalab.preference.parse_pair"
        )
        return fmt, None, [Problem(line=line, code=Code.NOT_CONVERTIBLE, message=message)]
    try:
        if fmt is Format.CHAT:
            return fmt, ChatRecord.model_validate(obj), []
        return fmt, _MODELS[fmt].model_validate(obj).to_chat(), []
    except ValidationError as err:
        return fmt, None, problems_from_error(err, line)


def check_jsonl_objects(
    path: Path, max_problems: int = 20, max_line_bytes: int = 64 * 1024 * 1024
) -> list[Problem]:
    """The cheap upload-time check: every non-empty line must be a JSON object.

    Streams the file once and returns at most ``max_problems`` errors, first bad line
    first, worded as OpenAI words it (``Invalid file format. Line 3 is not a valid JSON
    object. ...``). Empty lines, a BOM and CRLF endings are tolerated. An empty list means
    the file is acceptable JSONL.
    """
    log = ProblemLog(max_problems=max_problems, keep_warnings=False)
    stats = ReadStats()
    n_objects = sum(1 for _ in read_records(path, log, stats, max_line_bytes))
    errors = [p for p in log.problems if p.severity == "error"]
    if not errors and n_objects == 0:
        errors.append(
            Problem(
                line=0,
                code=Code.EMPTY_FILE,
                message="Invalid file format. The file contains no JSON objects.",
            )
        )
    return errors[:max_problems]
