"""One Responses turn as it runs: the chat service's chunks become Responses output
items and stream events (`ResponseStream`), the response is stored at the end.

Split from `server.services.responses` (the request side: input items, tools, chains).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from server.errors import PomarError
from server.protocol.chat import ChatCompletionChunk, ChoiceLogprobs
from server.protocol.responses import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    CustomInputDeltaEvent,
    CustomInputDoneEvent,
    CustomToolCall,
    ErrorEvent,
    FunctionCall,
    IncompleteDetails,
    InputTokensDetails,
    Logprob,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ReasoningDeltaEvent,
    ReasoningDoneEvent,
    ReasoningItem,
    ReasoningOut,
    ReasoningText,
    Response,
    ResponseError,
    ResponseLifecycleEvent,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
    TextFormatOut,
    TextOut,
    TopLogprob,
    UnservedTool,
)
from server.protocol.responses_request import FunctionToolParam, ResponseCreateRequest
from server.services.chat import ChatService, PreparedChat
from server.store.responses import ResponseRecord, ResponseRepository

log = logging.getLogger(__name__)


def new_id(prefix: str) -> str:
    """A random id like OpenAI's, e.g. `resp_...`, `msg_...`."""
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass
class EventCounter:
    """The stream's `sequence_number`s, shared with the route's error event."""

    value: int = 0

    def next(self) -> int:
        number = self.value
        self.value += 1
        return number


@dataclass
class ResponseTurn:
    """A validated Responses request, converted, before a model is leased."""

    request: ResponseCreateRequest
    #: the chat service's request (without sampling limits that depend on the model)
    chat: dict[str, Any]
    #: this request's own input items, ids assigned (stored with the response)
    input_items: list[dict[str, Any]]
    #: tools left out of the prompt
    unserved: list[UnservedTool]
    #: index in the request's `tools` of each tool given to the chat service
    tool_index: list[int]
    #: where the replayed chain ends in `chat["messages"]` (truncation never cuts the
    #: instructions)
    system_count: int
    id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))
    events: EventCounter = field(default_factory=EventCounter)

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def stream(self) -> bool:
        return bool(self.request.stream)


@dataclass(frozen=True)
class PreparedResponse:
    turn: ResponseTurn
    chat: PreparedChat


# -- answer: chat chunks -> Responses events -------------------------------------------------


@dataclass
class _Item:
    """An output item being streamed."""

    kind: str  # reasoning | message | function_call | custom_tool_call
    id: str
    output_index: int
    text: str = ""
    logprobs: list[Logprob] = field(default_factory=list)
    call_id: str = ""
    name: str = ""

    def done(self, status: str) -> OutputItem:
        """The finished item."""
        if self.kind == "reasoning":
            return ReasoningItem(id=self.id, content=[ReasoningText(text=self.text)], status=status)
        if self.kind == "message":
            part = OutputText(text=self.text, logprobs=self.logprobs)
            return OutputMessage(id=self.id, status=status, content=[part])
        if self.kind == "function_call":
            return FunctionCall(
                id=self.id,
                call_id=self.call_id,
                name=self.name,
                arguments=self.text,
                status=status,
            )
        return CustomToolCall(id=self.id, call_id=self.call_id, name=self.name, input=self.text)

    def started(self) -> OutputItem:
        """The item as `response.output_item.added` shows it."""
        if self.kind == "reasoning":
            return ReasoningItem(id=self.id, content=[], status="in_progress")
        if self.kind == "message":
            return OutputMessage(id=self.id, status="in_progress", content=[])
        if self.kind == "function_call":
            return FunctionCall(
                id=self.id, call_id=self.call_id, name=self.name, arguments="", status="in_progress"
            )
        return CustomToolCall(id=self.id, call_id=self.call_id, name=self.name, input="")


class ResponseStream:
    """One response's events, from the chat service's chunks; stored at the end."""

    def __init__(
        self, chat: ChatService, store: ResponseRepository, prepared: PreparedResponse
    ) -> None:
        self._chat = chat
        self._store = store
        self._prepared = prepared
        self._turn = prepared.turn
        self._items: list[_Item] = []
        self._done: list[OutputItem] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}
        self._finish: str | None = None
        self._usage: ResponseUsage | None = None

    def _seq(self) -> int:
        return self._turn.events.next()

    def _response(self, status: str, error: ResponseError | None = None) -> Response:
        turn, chat = self._turn, self._prepared.chat
        request = turn.request
        fmt = request.text.format if request.text else None
        text = TextOut(
            format=TextFormatOut(
                type=fmt.type,
                name=fmt.name,
                schema_=fmt.schema_,
                description=fmt.description,
                strict=fmt.strict,
            )
            if fmt is not None
            else TextFormatOut(),
            verbosity=(request.text.verbosity if request.text else None) or "medium",
        )
        reasoning = request.reasoning
        tool_choice = request.tool_choice if request.tool_choice is not None else "auto"
        return Response(
            id=turn.id,
            created_at=turn.created_at,
            status=status,
            completed_at=int(time.time()) if status == "completed" else None,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            max_tool_calls=request.max_tool_calls,
            model=request.model,
            output=list(self._done) if status != "in_progress" else [],
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            reasoning=ReasoningOut(effort=reasoning.effort, summary=reasoning.summary)
            if reasoning is not None
            else None,
            store=request.store is not False,
            temperature=chat.params.temperature,
            text=text,
            tool_choice=tool_choice,
            tools=[_echo(tool) for tool in request.tools or []],
            top_logprobs=request.top_logprobs,
            top_p=chat.params.top_p,
            truncation=request.truncation or "disabled",
            usage=self._usage if status != "in_progress" else None,
            user=request.user,
            metadata=request.metadata or {},
            pomar_unserved_tools=list(turn.unserved) or None,
        )

    async def events(self, *, raises: bool = False) -> AsyncIterator[BaseModel]:
        """The events; with `raises`, an error is raised (after storing the failed
        response) instead of becoming `error` and `response.failed` events."""
        start = self._response("in_progress")
        yield ResponseLifecycleEvent(
            type="response.created", sequence_number=self._seq(), response=start
        )
        yield ResponseLifecycleEvent(
            type="response.in_progress", sequence_number=self._seq(), response=start
        )
        try:
            chunks = self._chat.stream(self._prepared.chat)
            try:
                async for chunk in chunks:
                    for event in self._chunk(chunk):
                        yield event
            finally:  # at once when the client goes away: the engine stops generating
                close = getattr(chunks, "aclose", None)
                if close is not None:
                    await close()
        except PomarError as exc:
            failed = self._failed(exc.code or exc.error_type, exc.message, exc.param)
            if raises:
                raise
            for event in failed:
                yield event
            return
        except Exception:
            log.exception("response %s failed", self._turn.id)
            message = "The server had an error while generating."
            failed = self._failed("server_error", message, None)
            if raises:
                raise
            for event in failed:
                yield event
            return
        for event in self._close("incomplete" if self._finish == "length" else "completed"):
            yield event
        if not any(
            item.kind in ("message", "function_call", "custom_tool_call") for item in self._items
        ):
            for event in self._open_item("message"):
                yield event
            for event in self._close("incomplete" if self._finish == "length" else "completed"):
                yield event
        status = "incomplete" if self._finish == "length" else "completed"
        final = self._response(status)
        self._save(final)
        kind = "response.incomplete" if status == "incomplete" else "response.completed"
        yield ResponseLifecycleEvent(type=kind, sequence_number=self._seq(), response=final)

    def _failed(self, code: str, message: str, param: str | None) -> list[BaseModel]:
        events: list[BaseModel] = list(self._close("incomplete"))
        events.append(
            ErrorEvent(sequence_number=self._seq(), code=code, message=message, param=param)
        )
        final = self._response("failed", ResponseError(code=_error_code(code), message=message))
        self._save(final)
        events.append(
            ResponseLifecycleEvent(
                type="response.failed", sequence_number=self._seq(), response=final
            )
        )
        return events

    def _save(self, final: Response) -> None:
        turn = self._turn
        if turn.request.store is False:
            return
        record = ResponseRecord(
            id=turn.id,
            created_at=turn.created_at,
            model=turn.request.model,
            previous_response_id=turn.request.previous_response_id,
            response=final.model_dump(mode="json"),
            input_items=turn.input_items,
        )
        self._store.add(record)

    def _chunk(self, chunk: ChatCompletionChunk) -> list[BaseModel]:
        events: list[BaseModel] = []
        if chunk.usage is not None:
            usage = chunk.usage
            self._usage = ResponseUsage(
                input_tokens=usage.prompt_tokens,
                input_tokens_details=InputTokensDetails(
                    cached_tokens=usage.prompt_tokens_details.cached_tokens
                ),
                output_tokens=usage.completion_tokens,
                output_tokens_details=OutputTokensDetails(
                    reasoning_tokens=usage.completion_tokens_details.reasoning_tokens
                ),
                total_tokens=usage.total_tokens,
            )
        for choice in chunk.choices:
            delta = choice.delta
            thought = (
                delta.reasoning_content if delta.reasoning_content is not None else delta.reasoning
            )
            if thought:
                events += self._text("reasoning", thought, None)
            if delta.content:
                events += self._text("message", delta.content, choice.logprobs)
            for fragment in delta.tool_calls or []:
                events += self._call(fragment)
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
        return events

    def _open_item(self, kind: str, call_id: str = "", name: str = "") -> list[BaseModel]:
        prefix = {"reasoning": "rs", "message": "msg", "function_call": "fc"}.get(kind, "ctc")
        item = _Item(kind, new_id(prefix), len(self._items), call_id=call_id, name=name)
        self._items.append(item)
        self._open = item
        events: list[BaseModel] = [
            OutputItemEvent(
                type="response.output_item.added",
                sequence_number=self._seq(),
                output_index=item.output_index,
                item=item.started(),
            )
        ]
        if kind in ("reasoning", "message"):
            part = ReasoningText(text="") if kind == "reasoning" else OutputText(text="")
            events.append(
                ContentPartEvent(
                    type="response.content_part.added",
                    sequence_number=self._seq(),
                    item_id=item.id,
                    output_index=item.output_index,
                    content_index=0,
                    part=part,
                )
            )
        return events

    def _close(self, status: str) -> list[BaseModel]:
        """Finish the open item (`status` is the last item's: completed or incomplete)."""
        item, self._open = self._open, None
        if item is None:
            return []
        seq, events = self._seq, list[BaseModel]()
        where = {"item_id": item.id, "output_index": item.output_index}
        if item.kind == "reasoning":
            events.append(
                ReasoningDoneEvent(sequence_number=seq(), content_index=0, text=item.text, **where)
            )
            events.append(
                ContentPartEvent(
                    type="response.content_part.done",
                    sequence_number=seq(),
                    content_index=0,
                    part=ReasoningText(text=item.text),
                    **where,
                )
            )
        elif item.kind == "message":
            events.append(
                TextDoneEvent(
                    sequence_number=seq(),
                    content_index=0,
                    text=item.text,
                    logprobs=item.logprobs,
                    **where,
                )
            )
            events.append(
                ContentPartEvent(
                    type="response.content_part.done",
                    sequence_number=seq(),
                    content_index=0,
                    part=OutputText(text=item.text, logprobs=item.logprobs),
                    **where,
                )
            )
        elif item.kind == "function_call":
            events.append(
                ArgumentsDoneEvent(
                    sequence_number=seq(), name=item.name, arguments=item.text, **where
                )
            )
        else:
            events.append(CustomInputDoneEvent(sequence_number=seq(), input=item.text, **where))
        done = item.done(status)
        self._done.append(done)
        events.append(
            OutputItemEvent(
                type="response.output_item.done",
                sequence_number=seq(),
                output_index=item.output_index,
                item=done,
            )
        )
        return events

    def _text(self, kind: str, text: str, logprobs: ChoiceLogprobs | None) -> list[BaseModel]:
        events: list[BaseModel] = []
        if self._open is None or self._open.kind != kind:
            events += self._close("completed")
            events += self._open_item(kind)
        item = self._open
        assert item is not None
        item.text += text
        where = {"item_id": item.id, "output_index": item.output_index, "content_index": 0}
        if kind == "reasoning":
            events.append(ReasoningDeltaEvent(sequence_number=self._seq(), delta=text, **where))
            return events
        pieces = _logprobs(logprobs) if self._turn.request.logprobs else []
        item.logprobs += pieces
        events.append(
            TextDeltaEvent(sequence_number=self._seq(), delta=text, logprobs=pieces, **where)
        )
        return events

    def _call(self, fragment: Any) -> list[BaseModel]:
        events: list[BaseModel] = []
        custom = fragment.type == "custom" or fragment.custom is not None
        if fragment.id is not None:
            events += self._close("completed")
            body = fragment.custom if custom else fragment.function
            name = (body.name if body is not None else None) or ""
            kind = "custom_tool_call" if custom else "function_call"
            events += self._open_item(kind, call_id=fragment.id, name=name)
            assert self._open is not None
            self._calls[fragment.index] = self._open
        item = self._calls.get(fragment.index)
        if item is None:
            return events
        piece = (
            (fragment.custom.input if fragment.custom is not None else None)
            if custom
            else (fragment.function.arguments if fragment.function is not None else None)
        )
        if not piece:
            return events
        item.text += piece
        where = {"item_id": item.id, "output_index": item.output_index}
        if item.kind == "custom_tool_call":
            events.append(CustomInputDeltaEvent(sequence_number=self._seq(), delta=piece, **where))
        else:
            events.append(ArgumentsDeltaEvent(sequence_number=self._seq(), delta=piece, **where))
        return events


def _echo(tool: BaseModel) -> dict[str, Any]:
    """A request's tool as the response lists it (a function with its effective `strict`
    and `parameters`, null when it has none, as OpenAI's schema wants them)."""
    out = tool.model_dump(exclude_none=True, by_alias=True)
    if isinstance(tool, FunctionToolParam):
        out["parameters"] = tool.parameters
        out["strict"] = tool.strict is not False
    return out


def _logprobs(logprobs: ChoiceLogprobs | None) -> list[Logprob]:
    if logprobs is None or not logprobs.content:
        return []
    return [
        Logprob(
            token=entry.token,
            logprob=entry.logprob,
            bytes=entry.bytes or [],
            top_logprobs=[
                TopLogprob(token=top.token, logprob=top.logprob, bytes=top.bytes or [])
                for top in entry.top_logprobs
            ],
        )
        for entry in logprobs.content
    ]


#: ResponseError.code values OpenAI lists; anything else is a server_error
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


def _error_code(code: str) -> str:
    return code if code in _ERROR_CODES else "server_error"
