"""OpenAI's Responses API over the chat service: one conversation core, another wire.

A Responses request becomes the chat service's own request (`ChatCompletionRequest`,
built here): `instructions` a system message, input items messages (`function_call` /
`custom_tool_call` items an assistant's `tool_calls`, their outputs `tool` messages,
`reasoning` items the next assistant turn's `reasoning_content`), flat `function` and
`custom` tools the chat's tools, `text.format` its `response_format`, `reasoning.effort`
its `reasoning_effort`, `max_output_tokens` its `max_completion_tokens`. A stored chain
(`previous_response_id`) is replayed first: the earlier responses' inputs and outputs,
oldest first, so the prompt starts as the previous one did and the engine's prompt cache
serves that part. `ChatService` does all the work (template, tool grammars, reasoning,
logprobs, prompt cache, usage, errors); its chunks become Responses output items and
stream events. A request that does not stream runs the same stream and returns its last
`response`, so the JSON answer and a stream's final response are one and the same.

Hosted tools (`web_search`, `file_search`, `code_interpreter`, `image_generation`,
`computer_use_preview`, `mcp`, `local_shell`, namespaces, ...) only OpenAI's cloud runs:
they are left out of the prompt, listed in the response's `pomar_unserved_tools` and
logged; a `tool_choice` that names one is a 400.

The input items' and tools' conversion is `server.services.response_request`'s.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, ValidationError

from server.errors import InvalidRequest, NotFound, PomarError
from server.models.residency import LoadedModel
from server.protocol.chat import ChatCompletionRequest
from server.protocol.responses import (
    ErrorEvent,
    InputItemList,
    InputItemsQuery,
    Response,
    ResponseLifecycleEvent,
)
from server.protocol.responses_request import ResponseCreateRequest
from server.services.chat import ChatService
from server.services.response_request import (
    add_items,
    chat_tool_choice,
    chat_tools,
    request_items,
)
from server.services.response_stream import ResponseStream
from server.services.response_turn import PreparedResponse, ResponseTurn
from server.store.responses import ResponseRepository

log = logging.getLogger(__name__)


class ResponseNotFound(NotFound):
    """An unknown (or unstored, or deleted) response id; `param` says where it came from."""

    def __init__(self, response_id: str, param: str | None = None) -> None:
        super().__init__(f"Response with id '{response_id}' not found.", param=param)


class ResponseService:
    """`/v1/responses`: create (JSON or stream), retrieve, delete, input items."""

    def __init__(self, chat: ChatService, store: ResponseRepository) -> None:
        self._chat = chat
        self._store = store

    # -- create -------------------------------------------------------------------------

    def turn(self, request: ResponseCreateRequest) -> ResponseTurn:
        """Convert the request, replaying its stored chain (404 for an unknown id)."""
        messages: list[dict[str, Any]] = []
        if request.instructions:
            messages.append({"role": "system", "content": request.instructions})
        system_count = len(messages)
        if request.previous_response_id is not None:
            chain = self._store.chain(request.previous_response_id)
            if chain is None:
                raise ResponseNotFound(request.previous_response_id, "previous_response_id")
            for record in chain:
                add_items(messages, record.input_items, "previous_response_id")
                add_items(messages, record.response.get("output") or [], "previous_response_id")
        items = request_items(request)
        add_items(messages, items, "input")
        if len(messages) == 0:
            raise InvalidRequest("The request has no input.", param="input")
        tools, unserved, tool_index = chat_tools(request)
        chat: dict[str, Any] = {"model": request.model, "messages": messages}
        if tools:
            chat["tools"] = tools
        choice = chat_tool_choice(request, tools)
        if choice is not None:
            chat["tool_choice"] = choice
        if request.parallel_tool_calls is not None and tools:
            chat["parallel_tool_calls"] = request.parallel_tool_calls
        fmt = request.text.format if request.text else None
        if fmt is not None and fmt.type != "text":
            if fmt.type == "json_object":
                chat["response_format"] = {"type": "json_object"}
            else:
                spec = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}
                if fmt.description:
                    spec["description"] = fmt.description
                chat["response_format"] = {"type": "json_schema", "json_schema": spec}
        if request.reasoning is not None and request.reasoning.effort is not None:
            chat["reasoning_effort"] = request.reasoning.effort
        if request.max_output_tokens is not None:
            chat["max_completion_tokens"] = request.max_output_tokens
        for name in ("temperature", "top_p", "user"):
            if getattr(request, name) is not None:
                chat[name] = getattr(request, name)
        if request.logprobs:
            chat["logprobs"] = True
            chat["top_logprobs"] = request.top_logprobs or 0
        # one path for JSON and SSE answers: the chat service's stream, usage last
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
        for tool in unserved:
            log.info(
                "response: tool %d (%s%s) left out of the prompt: pomar serves function and "
                "custom tools (hosted tools run in OpenAI's cloud)",
                tool.index,
                tool.type,
                f" {tool.name}" if tool.name else "",
            )
        return ResponseTurn(request, chat, items, unserved, tool_index, system_count)

    def prepare(self, turn: ResponseTurn, model: LoadedModel) -> PreparedResponse:
        """The chat service's checks on the leased model; errors name the Responses field.

        With `truncation: "auto"`, a conversation over the model's context loses its
        oldest turns (never the instructions, nor the last item) until it fits.
        """
        messages = list(turn.chat["messages"])
        while True:
            try:
                chat = _chat_request({**turn.chat, "messages": messages})
                return PreparedResponse(turn, self._chat.prepare(chat, model))
            except InvalidRequest as exc:
                overflow = exc.code == "context_length_exceeded"
                if overflow and turn.request.truncation == "auto":
                    shorter = _drop_oldest(messages, turn.system_count)
                    if shorter is not None:
                        messages = shorter
                        continue
                raise _renamed(exc, turn) from None

    def stream(self, prepared: PreparedResponse) -> AsyncIterator[BaseModel]:
        """The Responses stream events (`response.created` ... `response.completed`); an
        error while generating is an `error` event, then `response.failed`."""
        return ResponseStream(self._chat, self._store, prepared).events()

    async def complete(self, prepared: PreparedResponse) -> Response:
        """The whole response: the stream's last `response` (the same translation); an
        error while generating is raised (the failed response is stored)."""
        final: Response | None = None
        async for event in ResponseStream(self._chat, self._store, prepared).events(raises=True):
            if isinstance(event, ResponseLifecycleEvent):
                final = event.response
        assert final is not None
        return final

    def error_event(self, turn: ResponseTurn, error: PomarError) -> dict[str, str]:
        """An `error` event for an error the stream itself could not report (shutdown)."""
        event = ErrorEvent(
            sequence_number=turn.events.next(),
            code=error.code or error.error_type,
            message=error.message,
            param=error.param,
        )
        return {"event": event.type, "data": event.model_dump_json()}

    # -- state --------------------------------------------------------------------------

    def retrieve(self, response_id: str) -> Response:
        record = self._store.get(response_id)
        if record is None:
            raise ResponseNotFound(response_id, "response_id")
        return Response.model_validate(record.response)

    def delete(self, response_id: str) -> str:
        if not self._store.delete(response_id):
            raise ResponseNotFound(response_id, "response_id")
        return response_id

    def input_items(self, response_id: str, query: InputItemsQuery) -> InputItemList:
        record = self._store.get(response_id)
        if record is None:
            raise ResponseNotFound(response_id, "response_id")
        items = list(record.input_items)
        if query.order == "desc":
            items.reverse()
        if query.after is not None:
            ids = [item.get("id") for item in items]
            if query.after not in ids:
                raise InvalidRequest(
                    f"No input item with id '{query.after}' in this response.", param="after"
                )
            items = items[ids.index(query.after) + 1 :]
        page = items[: query.limit]
        return InputItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > len(page),
        )


# -- prepare: the chat request, truncation, error fields ------------------------------------


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # the Responses request validated: say what, not where
        first = exc.errors(include_url=False)[0]
        raise InvalidRequest(f"The request could not be served: {first['msg']}") from None


def _drop_oldest(messages: list[dict[str, Any]], keep: int) -> list[dict[str, Any]] | None:
    """The conversation without its oldest turn after the first `keep` (instructions);
    None when only the last message is left. Tool results left without their call go too."""
    if len(messages) - keep <= 1:
        return None
    out = messages[:keep] + messages[keep + 1 :]
    while len(out) - keep > 1 and out[keep]["role"] == "tool":
        del out[keep]
    return out


def _renamed(exc: InvalidRequest, turn: ResponseTurn) -> InvalidRequest:
    """The chat service's 400 naming the Responses request's field instead."""
    param = exc.param
    if param is not None:
        param = _PARAMS.get(param, param)
        if param.startswith("tools["):
            head, _, rest = param[len("tools[") :].partition("]")
            if head.isdigit() and int(head) < len(turn.tool_index):
                rest = rest.replace(".function.parameters", ".parameters")
                rest = rest.replace(".custom.format", ".format")
                param = f"tools[{turn.tool_index[int(head)]}]{rest}"
    renamed = InvalidRequest(exc.message, param=param, code=exc.code)
    renamed.status_code = exc.status_code
    return renamed


_PARAMS = {
    "messages": "input",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
    "response_format.json_schema": "text.format",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
}
