"""A real Gemma 3 GGUF without a chat template is served in Gemma's turns, not ChatML.

The file is Gemma 3 270M (base) Q4_K_M, `general.architecture` gemma3, no
`tokenizer.chat_template`. It is `$POMAR_GEMMA_GGUF`, else the real-model cache
(`$POMAR_TEST_MODELS`, else `$XDG_CACHE_HOME/pomar/test-models`, else
`~/.cache/pomar/test-models`) under `gemma-3-270m-q4_k_m.gguf`, where the real-model
suite's fetcher puts it. It is imported with `pomar models import`, as a user would.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live_server import LiveServer, client_for, run_pomar

from chatfmt.families import GEMMA
from server.engine.templates import ChatTemplate, end_of_turn_ids

pytestmark = pytest.mark.slow

MODEL_ID = "gemma-3-270m"
FILENAME = "gemma-3-270m-q4_k_m.gguf"
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "What is the capital of France?"},
]
GEMMA_PROMPT = (
    "<bos><start_of_turn>user\nAnswer briefly.\n\nHi!<end_of_turn>\n"
    "<start_of_turn>model\nHello.<end_of_turn>\n"
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n"
    "<start_of_turn>model\n"
)


def gemma_gguf() -> Path:
    """The Gemma 3 270M GGUF, or a failed test saying where to put it."""
    if os.environ.get("POMAR_GEMMA_GGUF"):
        path = Path(os.environ["POMAR_GEMMA_GGUF"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = os.environ.get("POMAR_TEST_MODELS") or str(Path(base) / "pomar" / "test-models")
        path = Path(cache).expanduser() / FILENAME
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: set POMAR_GEMMA_GGUF to Gemma 3 270M's Q4_K_M GGUF, or fetch "
            "it into the real-model cache",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("gemma-home")
    result = run_pomar(["models", "import", str(gemma_gguf()), "--id", MODEL_ID], home)
    assert result.returncode == 0, result.stderr
    return home


@pytest.fixture(scope="module")
def gemma_tokenizer(gemma_home: Path) -> Any:
    """The tokenizer the GGUF engine reads from the imported file."""
    from server.engine.gguf.tokenizer import gguf_tokenizer

    folder = gemma_home / "models" / MODEL_ID
    (gguf,) = folder.glob("*.gguf")
    tokenizer = gguf_tokenizer(gguf, None, {})
    assert tokenizer.chat_template is None  # the file has none
    return tokenizer


@pytest.fixture(scope="module")
def gemma_server(gemma_home: Path) -> Iterator[LiveServer]:
    server = LiveServer(model=MODEL_ID, backend="gguf", home=gemma_home).start()
    try:
        yield server
    finally:
        server.stop()


def test_prompt_is_gemma_turns(gemma_tokenizer: Any, gemma_home: Path) -> None:
    template = ChatTemplate(gemma_tokenizer)
    assert template.is_fallback and template.family is GEMMA
    assert template.render(MESSAGES) == GEMMA_PROMPT
    ids = template.encode(MESSAGES)
    assert gemma_tokenizer.convert_ids_to_tokens(ids[:4]) == [
        "<bos>",
        "<start_of_turn>",
        "user",
        "\n",
    ]
    end = gemma_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert ids.count(end) == 3
    assert end in end_of_turn_ids(gemma_tokenizer, gemma_home / "models" / MODEL_ID)


def test_served_model_reads_gemma_turns(gemma_server: LiveServer, gemma_tokenizer: Any) -> None:
    out = client_for(gemma_server).chat.completions.create(
        model=MODEL_ID,
        messages=MESSAGES,
        max_tokens=1,
        temperature=0,
    )
    assert out.usage is not None
    gemma = gemma_tokenizer.encode(GEMMA_PROMPT, add_special_tokens=False)
    assert out.usage.prompt_tokens == len(gemma)
    assert (
        "chat template: gemma (none in the model; architecture gemma3, "
        "vocabulary has <start_of_turn> <end_of_turn>)"
    ) in gemma_server.log()
