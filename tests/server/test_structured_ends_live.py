"""Structured output on the embedded model ends by itself (JSON values are capped).

Without the caps of `server.engine.json_bounds`, SmolLM2-135M at temperature 0 writes
`"population": 1111…` for these prompts until `max_tokens`, and the SDK's `parse` raises
`LengthFinishReasonError`.
"""

from __future__ import annotations

import pytest
from live_server import LiveServer, client_for
from pydantic import BaseModel

pytestmark = pytest.mark.slow


class City(BaseModel):
    name: str
    country: str
    population: int


@pytest.mark.parametrize("prompt", ["Tell me about Paris as JSON.", "Describe a big city."])
def test_parse_with_an_integer_field_finishes(embedded_server: LiveServer, prompt: str) -> None:
    completion = client_for(embedded_server).chat.completions.parse(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": prompt}],
        response_format=City,
        temperature=0,
        max_tokens=200,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    city = choice.message.parsed
    assert isinstance(city, City)
    assert -(2**63) <= city.population < 2**63
    # the text is the object and nothing else
    assert City.model_validate_json(choice.message.content or "") == city
