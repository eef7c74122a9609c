"""Requests that name no temperature / top_p take the model's own generation_config."""

from __future__ import annotations

import json
from pathlib import Path

from server.engine.base import GenerationParams
from server.engine.templates import end_of_turn_ids, sampling_defaults
from server.protocol.chat import ChatCompletionRequest
from server.services.sampling import generation_params

MSG = [{"role": "user", "content": "hi"}]


def params_of(request: ChatCompletionRequest, defaults: dict[str, float]) -> GenerationParams:
    return generation_params(request, *request.limits(16), defaults)


def test_model_defaults_fill_only_what_the_request_omits(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.2, "top_p": 0.9})
    )
    defaults = sampling_defaults(tmp_path)
    assert defaults == {"temperature": 0.2, "top_p": 0.9}
    omitted = params_of(ChatCompletionRequest(model="m", messages=MSG), defaults)
    assert (omitted.temperature, omitted.top_p) == (0.2, 0.9)
    given = ChatCompletionRequest(model="m", messages=MSG, temperature=0.0, top_p=1.0)
    params = params_of(given, defaults)
    assert (params.temperature, params.top_p) == (0.0, 1.0)


def test_openai_defaults_without_model_defaults(tmp_path: Path) -> None:
    assert sampling_defaults(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "temperature": 0.3})
    )
    assert sampling_defaults(tmp_path) == {}  # greedy models declare do_sample false
    params = params_of(ChatCompletionRequest(model="m", messages=MSG), {})
    assert (params.temperature, params.top_p) == (1.0, 1.0)


def test_embedded_import_carries_the_model_cards_defaults(embedded_model_path: Path) -> None:
    assert sampling_defaults(embedded_model_path) == {"temperature": 0.2, "top_p": 0.9}


def test_a_new_chatml_turn_ends_the_completion(tiny_model_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_path))
    ids = end_of_turn_ids(tok, tiny_model_path)
    assert tok.convert_tokens_to_ids("<|im_end|>") in ids
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids
