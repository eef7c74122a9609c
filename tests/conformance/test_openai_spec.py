"""Conformance with OpenAI's published specification, on the operations pomar implements.

schemathesis fuzzes a live server (tiny model, API key set): no 5xx (`not_a_server_error`)
and every documented answer matches OpenAI's schema (`response_schema_conformance`). Once
per seed of `conformance_helpers.SEEDS`: each seed draws other cases, and some violations
only show under some seeds (`scripts/fuzz` draws a fresh one, for long runs).
"""

from __future__ import annotations

from collections.abc import Callable

import schemathesis
from conformance_helpers import (
    AUTH,
    CHECKS,
    FUZZ,
    OPENAI_OPERATIONS,
    SEEDS,
    clamp_generation,
    configure,
    load_openai_spec,
)
from live_server import LiveServer


def _fuzz(seed: int) -> Callable[..., None]:
    schema = configure(
        schemathesis.openapi.from_dict(load_openai_spec()).include(
            operation_id=list(OPENAI_OPERATIONS)
        ),
        seed,
    )

    @schema.parametrize()
    @FUZZ
    def test(
        case: schemathesis.Case, conformance_server: LiveServer, served_model: dict[str, str]
    ) -> None:
        clamp_generation(case, served_model)
        case.call_and_validate(
            base_url=f"{conformance_server.base_url}/v1", headers=AUTH, checks=CHECKS
        )

    return test  # type: ignore[no-any-return]


for _seed in SEEDS:
    globals()[f"test_openai_spec_seed_{_seed}"] = _fuzz(_seed)
