"""Conformance with pomar's own OpenAPI document (`GET /openapi.json`).

A real server (tiny model, API key set) is fuzzed on every operation pomar implements. The
checks: no 5xx (`not_a_server_error`) and every documented answer matches its schema
(`response_schema_conformance`).
"""

from __future__ import annotations

import re

import httpx
import schemathesis
from conformance_helpers import AUTH, CHECKS, FUZZ, clamp_generation, configure
from live_server import LiveServer

from server.openapi import build_openapi

schema = configure(schemathesis.openapi.from_dict(build_openapi()))


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
    assert response.json() == build_openapi()


def test_document_is_valid_openapi() -> None:
    """The document loads as OpenAPI 3.1 and validates against its meta-schema."""
    document = build_openapi()
    assert document["openapi"].startswith("3.1")
    schema = schemathesis.openapi.from_dict(document)
    schema.validate()  # against the OpenAPI 3.1 meta-schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == sum(len(item) for item in document["paths"].values())
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert document["x-pomar-extensions"]
    loaded = document["components"]["schemas"]["ModelCard"]["properties"]["loaded"]
    assert loaded is not None


def test_document_lists_every_route() -> None:
    """Every route the app serves is documented, and nothing else."""
    from server.app import create_app
    from server.settings import Settings

    app = create_app(Settings(api_key="x"))
    served = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        for method in route.methods or ():  # type: ignore[attr-defined]
            if method != "HEAD":
                served.add((method.lower(), path))
    documented = {
        (method, path) for path, item in build_openapi()["paths"].items() for method in item
    }
    assert served == documented
