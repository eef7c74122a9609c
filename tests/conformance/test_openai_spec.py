"""Conformance with OpenAI's published specification, on the operations pomar implements.

schemathesis fuzzes a live server (tiny model, API key set): no 5xx (`not_a_server_error`)
and every documented answer matches OpenAI's schema (`response_schema_conformance`).
"""

from __future__ import annotations

import schemathesis
from conformance_helpers import (
    AUTH,
    CHECKS,
    FUZZ,
    OPENAI_OPERATIONS,
    clamp_generation,
    configure,
    load_openai_spec,
)
from live_server import LiveServer

schema = configure(
    schemathesis.openapi.from_dict(load_openai_spec()).include(operation_id=list(OPENAI_OPERATIONS))
)


@schema.parametrize()
@FUZZ
def test_openai_spec(
    case: schemathesis.Case, conformance_server: LiveServer, served_model: dict[str, str]
) -> None:
    clamp_generation(case, served_model)
    case.call_and_validate(
        base_url=f"{conformance_server.base_url}/v1", headers=AUTH, checks=CHECKS
    )
