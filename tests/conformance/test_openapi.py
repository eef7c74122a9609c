"""Conformance with pomar's own OpenAPI document (`GET /openapi.json`).

A real server (tiny model, API key set) is fuzzed on every operation pomar implements. The
checks: no 5xx (`not_a_server_error`) and every documented answer matches its schema
(`response_schema_conformance`).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from conformance_helpers import AUTH, CHECKS, FUZZ, SEEDS, clamp_generation, configure
from live_server import LiveServer
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from server.app import create_app
from server.openapi import build_openapi
from server.routes.spec import ApiRoute, api_route
from server.settings import Settings

#: the app's route table: the document is built from it, as `GET /openapi.json` builds it
ROUTES = create_app(Settings(api_key="x")).routes
# one seed here: the seeds' sweep runs against OpenAI's document (test_openai_spec.py),
# which covers the same operations; this one adds pomar's own routes and extensions
schema = configure(schemathesis.openapi.from_dict(build_openapi(ROUTES)), SEEDS[0])


@schema.parametrize()
@FUZZ
def test_pomar_spec(
    case: schemathesis.Case, conformance_server: LiveServer, served_model: dict[str, str]
) -> None:
    clamp_generation(case, served_model)
    case.call_and_validate(base_url=conformance_server.base_url, headers=AUTH, checks=CHECKS)


def test_served_document(conformance_server: LiveServer) -> None:
    """`/openapi.json` answers without the key, and is the document fuzzed above."""
    response = httpx.get(f"{conformance_server.base_url}/openapi.json")
    assert response.status_code == 200
    assert response.json() == build_openapi(ROUTES)


def test_document_is_valid_openapi() -> None:
    """The document loads as OpenAPI 3.1 and validates against its meta-schema."""
    document = build_openapi(ROUTES)
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in document["paths"].values())
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["x-pomar-extensions"]
    loaded = document["components"]["schemas"]["ModelCard"]["properties"]["loaded"]
    assert loaded is not None


def served(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    """(method, path) of every route, HEAD aside, path parameters without their convertor."""
    out = set()
    for route in routes:
        assert isinstance(route, Route), f"unexpected route type {route!r}"
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method.lower(), route.path_format))
    return out


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    """(method, path) of every operation in `document`."""
    return {(method, path) for path, item in document["paths"].items() for method in item}


def test_document_lists_every_route() -> None:
    """Every route the app serves is documented, /health and /openapi.json included, and
    every documented operation is a real route."""
    assert served(ROUTES) == documented(build_openapi(ROUTES))
    assert ("get", "/health") in served(ROUTES)
    assert ("get", "/openapi.json") in served(ROUTES)


def test_every_route_carries_its_operation() -> None:
    """Each route is declared with `api_route`, its documentation beside it."""
    plain = [route for route in ROUTES if not isinstance(route, ApiRoute)]
    assert plain == []
    ids = [route.operation.operation_id for route in ROUTES if isinstance(route, ApiRoute)]
    assert len(ids) == len(set(ids)), "operation ids must be unique"


def test_public_operations_are_the_ones_outside_v1() -> None:
    """`security: []` (no key) exactly where the API-key middleware lets requests through:
    outside /v1, `/metrics` aside."""
    for path, item in build_openapi(ROUTES)["paths"].items():
        for operation in item.values():
            keyed = path.startswith("/v1") or path == "/metrics"
            assert ("security" in operation) == (not keyed), path


async def _endpoint(_request: Request) -> Response:
    return Response()


def test_a_route_without_its_operation_is_caught() -> None:
    """A plain `Route` is left out of the document, so the check above fails on it."""
    routes = [*ROUTES, Route("/v1/undocumented", _endpoint, methods=["GET"])]
    assert served(routes) - documented(build_openapi(routes)) == {("get", "/v1/undocumented")}


def test_path_params_must_match_the_path() -> None:
    """A path parameter left undocumented (or documented but absent) fails at declaration."""
    with pytest.raises(ValueError, match="job_id"):
        api_route("/v1/x/{job_id}", _endpoint, "GET", operation_id="x", summary="x", tag="x")
    with pytest.raises(ValueError, match="file_id"):
        api_route(
            "/v1/x", _endpoint, "GET", operation_id="x", summary="x", tag="x",
            path_params={"file_id": "A file id."},
        )  # fmt: skip
