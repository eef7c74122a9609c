"""The output items of a streamed Responses turn: one item as it grows (`StreamedItem`),
the events that open and finish it (`added_events`, `done_events`), and the chat
service's logprobs as Responses logprobs (`response_logprobs`).

Split from `server.services.response_stream` (the stream driver, which decides when an
item opens and closes and numbers the events through `seq`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from server.protocol.chat import ChoiceLogprobs
from server.protocol.responses import (
    ArgumentsDoneEvent,
    ContentPartEvent,
    CustomInputDoneEvent,
    CustomToolCall,
    FunctionCall,
    Logprob,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    ReasoningDoneEvent,
    ReasoningItem,
    ReasoningText,
    TextDoneEvent,
    TopLogprob,
)


@dataclass
class StreamedItem:
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


def added_events(item: StreamedItem, seq: Callable[[], int]) -> list[BaseModel]:
    """`response.output_item.added` for a new item (and, for text, its content part)."""
    events: list[BaseModel] = [
        OutputItemEvent(
            type="response.output_item.added",
            sequence_number=seq(),
            output_index=item.output_index,
            item=item.started(),
        )
    ]
    if item.kind in ("reasoning", "message"):
        part = ReasoningText(text="") if item.kind == "reasoning" else OutputText(text="")
        events.append(
            ContentPartEvent(
                type="response.content_part.added",
                sequence_number=seq(),
                item_id=item.id,
                output_index=item.output_index,
                content_index=0,
                part=part,
            )
        )
    return events


def done_events(
    item: StreamedItem, status: str, seq: Callable[[], int]
) -> tuple[OutputItem, list[BaseModel]]:
    """The finished item (`status`: completed or incomplete) and the events that finish
    it, `response.output_item.done` last."""
    events: list[BaseModel] = []
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
            ArgumentsDoneEvent(sequence_number=seq(), name=item.name, arguments=item.text, **where)
        )
    else:
        events.append(CustomInputDoneEvent(sequence_number=seq(), input=item.text, **where))
    done = item.done(status)
    events.append(
        OutputItemEvent(
            type="response.output_item.done",
            sequence_number=seq(),
            output_index=item.output_index,
            item=done,
        )
    )
    return done, events


def response_logprobs(logprobs: ChoiceLogprobs | None) -> list[Logprob]:
    """A chat chunk's logprobs as a Responses text delta's."""
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
