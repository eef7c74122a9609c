"""`/v1/fine_tuning/jobs` routes."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.protocol.fine_tuning import CheckpointPageQuery, JobCreateRequest, JobPageQuery
from server.routes.common import json_body, json_response
from server.services.fine_tuning import FineTuningService


def _service(request: Request) -> FineTuningService:
    return request.app.state.services.fine_tuning


def _page(request: Request, query: type[JobPageQuery] = JobPageQuery) -> tuple[str | None, int]:
    page = query.model_validate(dict(request.query_params))
    return page.after or None, page.limit


async def create_job(request: Request) -> Response:
    job_request = JobCreateRequest.model_validate(await json_body(request))
    return json_response(_service(request).create(job_request))


async def list_jobs(request: Request) -> Response:
    return json_response(_service(request).list(*_page(request)))


async def get_job(request: Request) -> Response:
    return json_response(_service(request).get(request.path_params["job_id"]))


async def cancel_job(request: Request) -> Response:
    return json_response(_service(request).cancel(request.path_params["job_id"]))


async def list_events(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    return json_response(_service(request).events(job_id, *_page(request)))


async def list_checkpoints(request: Request) -> Response:
    job_id = request.path_params["job_id"]
    return json_response(
        _service(request).checkpoints(job_id, *_page(request, CheckpointPageQuery))
    )


routes = [
    Route("/v1/fine_tuning/jobs", create_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs", list_jobs, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/fine_tuning/jobs/{job_id}/events", list_events, methods=["GET"]),
    Route("/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints, methods=["GET"]),
]
