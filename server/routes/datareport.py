"""`GET /v1/files/{file_id}/report`: datalab's report of an uploaded file (a pomar endpoint)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from datalab.report import Report
from server.protocol.datareport import FileReportQuery
from server.routes.common import json_response
from server.routes.spec import api_route


async def file_report(request: Request) -> Response:
    query = FileReportQuery.model_validate(dict(request.query_params))
    service = request.app.state.services.data_reports
    # off the event loop: datalab reads the whole file and tokenizes every record
    report = await asyncio.to_thread(service.report, request.path_params["file_id"], query)
    return json_response(report)


routes = [
    api_route(
        "/v1/files/{file_id}/report", file_report, "GET",
        operation_id="retrieveFileReport", summary="A dataset report of a file",
        tag="Files", query=FileReportQuery, response=Report,
        path_params={"file_id": "A file id (`file-...`)."},
        description="A pomar endpoint (not in OpenAI's API): what `pomar data check` says "
        "of the file, and what a fine-tuning job's validation will find (`can_train`, "
        "`blocking_reasons`, problems by code with line numbers, duplicate clusters, PII by "
        "line, token lengths with the recommended max_length, the time and memory "
        "estimate); nothing is written. The web console's Data page shows it.",
    ),
]  # fmt: skip
