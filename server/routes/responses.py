"""`/v1/responses`: OpenAI's Responses API (create, retrieve, delete, input items).

The same chat service as `/v1/chat/completions` serves it (`server.services.responses`).
A stream names each event by its type (`event: response.output_text.delta`), numbers
them (`sequence_number`) and ends with `response.completed` (or `.incomplete`,
`.failed`), without `[DONE]`.
"""

from __future__ import annotations

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from server.protocol.responses import DeletedResponse, InputItemList, InputItemsQuery, StreamEvent
from server.protocol.responses import Response as ResponseObject
from server.protocol.responses_request import ResponseCreateRequest
from server.routes.common import event_stream, json_body, json_response, unless_disconnected
from server.routes.spec import api_route
from server.services.generation import begin


async def create_response(request: Request) -> Response:
    body = ResponseCreateRequest.model_validate(await json_body(request))
    services = request.app.state.services
    service = services.responses
    turn = service.turn(body)  # a 404 for an unknown previous_response_id, before any lease
    generation = await begin(services.registry, turn, service)
    try:
        if body.stream:
            return event_stream(
                generation.stream(), _event, lambda error: service.error_event(turn, error)
            )
        return json_response(await unless_disconnected(request, generation.complete()))
    finally:
        generation.release_unless_streaming()


def _event(event: BaseModel) -> dict[str, str]:
    """An SSE event named by its type, as OpenAI sends them."""
    name = event.model_dump(include={"type"})["type"]
    return {"event": str(name), "data": event.model_dump_json()}


async def get_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    return json_response(request.app.state.services.responses.retrieve(response_id))


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    request.app.state.services.responses.delete(response_id)
    return json_response(DeletedResponse(id=response_id))


async def list_input_items(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    query = InputItemsQuery.model_validate(dict(request.query_params))
    return json_response(request.app.state.services.responses.input_items(response_id, query))


_ABOUT = (
    "OpenAI's Responses API (Codex CLI, the openai-agents SDK) over the same conversation "
    "service as chat completions: `input` as a string or items (messages, `function_call`, "
    "`function_call_output`, `custom_tool_call`, `custom_tool_call_output`, `reasoning`), "
    "`instructions`, `function` and `custom` tools (a custom tool's Lark or regex grammar "
    "is enforced while decoding), `tool_choice`, `text.format` (json_object, json_schema), "
    "`reasoning.effort`, `include: [message.output_text.logprobs]`, `store` (default "
    "true), `previous_response_id`, `truncation`. Hosted tools only OpenAI's cloud runs "
    "(web_search, file_search, code_interpreter, image_generation, computer_use, mcp, "
    "local_shell, namespaces) are left out of the prompt and listed in the response's "
    "`pomar_unserved_tools`; a tool_choice naming one is a 400. `background: true`, "
    "`conversation`, `prompt` and image or file inputs are refused by name. A stream's "
    "events are named by their type, numbered, and end without `[DONE]`."
)

_ID = {"response_id": "The id of a stored response (`resp_...`)."}


routes = [
    api_route(
        "/v1/responses", create_response, "POST",
        operation_id="createResponse", summary="Create a model response", tag="Responses",
        request=ResponseCreateRequest, response=ResponseObject, stream=StreamEvent,
        named_events=True, description=_ABOUT,
    ),
    api_route(
        "/v1/responses/{response_id}", get_response, "GET",
        operation_id="getResponse", summary="Retrieve a stored response", tag="Responses",
        response=ResponseObject, path_params=_ID,
    ),
    api_route(
        "/v1/responses/{response_id}", delete_response, "DELETE",
        operation_id="deleteResponse", summary="Delete a stored response", tag="Responses",
        response=DeletedResponse, path_params=_ID,
    ),
    api_route(
        "/v1/responses/{response_id}/input_items", list_input_items, "GET",
        operation_id="listInputItems", summary="List a response's input items",
        tag="Responses", query=InputItemsQuery, response=InputItemList, path_params=_ID,
    ),
]  # fmt: skip
