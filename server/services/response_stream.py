"""One Responses turn as it runs: the chat service's chunks become Responses output
items and stream events (`ResponseStream`), the response is stored at the end.

Split from `server.services.responses` (the request side: input items, tools, chains).
The turn itself is in `server.services.response_turn`; each output item and the events
that open and finish it in `server.services.response_items`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from server.errors import PomarError
from server.protocol.chat import ChatCompletionChunk, ChoiceLogprobs
from server.protocol.responses import (
    ArgumentsDeltaEvent,
    CustomInputDeltaEvent,
    ErrorEvent,
    IncompleteDetails,
    InputTokensDetails,
    OutputItem,
    OutputTokensDetails,
    ReasoningDeltaEvent,
    ReasoningOut,
    Response,
    ResponseError,
    ResponseLifecycleEvent,
    ResponseUsage,
    TextDeltaEvent,
    TextFormatOut,
    TextOut,
)
from server.protocol.responses_request import FunctionToolParam
from server.services.chat import ChatService
from server.services.response_items import (
    StreamedItem,
    added_events,
    done_events,
    response_logprobs,
)
from server.services.response_turn import PreparedResponse, new_id
from server.store.responses import ResponseRecord, ResponseRepository

log = logging.getLogger(__name__)


class ResponseStream:
    """One response's events, from the chat service's chunks; stored at the end."""

    def __init__(
        self, chat: ChatService, store: ResponseRepository, prepared: PreparedResponse
    ) -> None:
        self._chat = chat
        self._store = store
        self._prepared = prepared
        self._turn = prepared.turn
        self._items: list[StreamedItem] = []
        self._done: list[OutputItem] = []
        self._open: StreamedItem | None = None
        self._calls: dict[int, StreamedItem] = {}
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
        item = StreamedItem(kind, new_id(prefix), len(self._items), call_id=call_id, name=name)
        self._items.append(item)
        self._open = item
        return added_events(item, self._seq)

    def _close(self, status: str) -> list[BaseModel]:
        """Finish the open item (`status` is the last item's: completed or incomplete)."""
        item, self._open = self._open, None
        if item is None:
            return []
        done, events = done_events(item, status, self._seq)
        self._done.append(done)
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
        pieces = response_logprobs(logprobs) if self._turn.request.logprobs else []
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


#: ResponseError.code values OpenAI lists; anything else is a server_error
_ERROR_CODES = frozenset({"server_error", "rate_limit_exceeded", "invalid_prompt"})


def _error_code(code: str) -> str:
    return code if code in _ERROR_CODES else "server_error"
