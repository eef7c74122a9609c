"""`/v1/fine_tuning/jobs` routes."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from server.protocol.fine_tuning import (
    CheckpointList,
    CheckpointPageQuery,
    EventList,
    FineTuningJob,
    JobCreateRequest,
    JobList,
    JobPageQuery,
)
from server.routes.common import json_body, json_response
from server.routes.spec import api_route
from server.services.fine_tuning import FineTuningService

_JOB_ID = {"job_id": "A fine-tuning job id (`ftjob-...`)."}


def _service(request: Request) -> FineTuningService:
    return request.app.state.services.fine_tuning


def _page(request: Request, query: type[JobPageQuery] = JobPageQuery) -> tuple[str | None, int]:
    page = query.model_validate(dict(request.query_params))
    return page.after or None, page.limit


async def create_job(request: Request) -> Response:
    job_request = JobCreateRequest.model_validate(await json_body(request))
    # off the event loop: checking a GGUF base's architecture reads its header and imports
    # transformers' GGUF mapping (about a second the first time)
    return json_response(await asyncio.to_thread(_service(request).create, job_request))


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
    api_route(
        "/v1/fine_tuning/jobs", create_job, "POST",
        operation_id="createFineTuningJob", summary="Create a fine-tuning job",
        tag="Fine-tuning", request=JobCreateRequest, response=FineTuningJob,
        description="A LoRA fine-tune run on this machine. Only the `supervised` method; "
        "hyperparameters take pomar's LoRA extensions (lora_rank, lora_alpha, lora_layers, "
        "max_length); `integrations` are refused (pomar runs offline).",
    ),
    api_route(
        "/v1/fine_tuning/jobs", list_jobs, "GET",
        operation_id="listPaginatedFineTuningJobs", summary="List jobs", tag="Fine-tuning",
        query=JobPageQuery, response=JobList,
    ),
    api_route(
        "/v1/fine_tuning/jobs/{job_id}", get_job, "GET",
        operation_id="retrieveFineTuningJob", summary="Retrieve a job", tag="Fine-tuning",
        response=FineTuningJob, path_params=_JOB_ID,
    ),
    api_route(
        "/v1/fine_tuning/jobs/{job_id}/cancel", cancel_job, "POST",
        operation_id="cancelFineTuningJob", summary="Cancel a job", tag="Fine-tuning",
        response=FineTuningJob, path_params=_JOB_ID,
    ),
    api_route(
        "/v1/fine_tuning/jobs/{job_id}/events", list_events, "GET",
        operation_id="listFineTuningEvents", summary="A job's events", tag="Fine-tuning",
        query=JobPageQuery, response=EventList, path_params=_JOB_ID,
    ),
    api_route(
        "/v1/fine_tuning/jobs/{job_id}/checkpoints", list_checkpoints, "GET",
        operation_id="listFineTuningJobCheckpoints", summary="A job's checkpoints",
        tag="Fine-tuning", query=CheckpointPageQuery, response=CheckpointList,
        path_params=_JOB_ID,
    ),
]  # fmt: skip
