"""A Responses turn before and while it runs: its ids (`new_id`), its event sequence
numbers (`EventCounter`), the validated request (`ResponseTurn`) and the turn with its
prepared chat request (`PreparedResponse`).

Split from `server.services.response_stream` (which streams the turn's events).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from server.protocol.responses import UnservedTool
from server.protocol.responses_request import ResponseCreateRequest
from server.services.chat import PreparedChat


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
