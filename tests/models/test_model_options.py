"""Per-model settings: `pomar models set ID key=value`, used whenever that model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatfmt.tokenizer import load_tokenizer
from server.models.options import ModelOptions, parse_assignments, read_options
from tests.live_server import LiveServer, client_for, run_pomar


def test_assignments_set_and_unset() -> None:
    options = parse_assignments(
        ["backend=torch", "context=128", "max-batch-size=2"], ModelOptions()
    )
    assert (options.backend, options.context, options.max_batch_size) == ("torch", 128, 2)
    again = parse_assignments(["context=default", "backend="], options)
    assert (again.backend, again.context, again.max_batch_size) == (None, None, 2)


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("colour=blue", "unknown setting 'colour'"),
        ("backend=cuda", "backend: Input should be 'auto', 'mlx', 'torch' or 'gguf'"),
        ("context=8", "context: Input should be greater than or equal to 64"),
        ("context", "'context' is not key=value"),
    ],
)
def test_bad_assignments_say_why(pair: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_assignments([pair], ModelOptions())


def test_models_set_keeps_them_beside_the_model(tmp_path: Path, tiny_model_path: Path) -> None:
    home = tmp_path / "home"
    assert (
        run_pomar(["models", "import", str(tiny_model_path), "--id", "tiny"], home).returncode == 0
    )
    done = run_pomar(["models", "set", "tiny", "backend=torch", "context=96"], home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "tiny: backend=torch, context=96"
    assert read_options(home / "models" / "tiny") == ModelOptions(backend="torch", context=96)
    shown = run_pomar(["models", "set", "tiny"], home)
    assert shown.stdout.strip() == "tiny: backend=torch, context=96"
    bad = run_pomar(["models", "set", "tiny", "context=1"], home)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: context: Input should be greater than or equal to 64"


def test_a_model_loads_with_its_own_settings(tmp_path: Path, tiny_model_path: Path) -> None:
    home = tmp_path / "home"
    for model_id in ("tiny", "tiny-short"):
        run_pomar(["models", "import", str(tiny_model_path), "--id", model_id], home)
    run_pomar(["models", "set", "tiny", "context=100"], home)
    run_pomar(["models", "set", "tiny-short", "backend=torch", "context=64"], home)
    tokenizer = load_tokenizer(tiny_model_path)
    # never end a turn, so only the context can stop the completion
    enders = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|im_start|>")}
    enders.add(tokenizer.eos_token_id)
    ban = {str(t): -100 for t in enders if t is not None}
    server = LiveServer(model="tiny", backend="auto", home=home).start()
    try:
        client = client_for(server)
        for model_id, context in (("tiny", 100), ("tiny-short", 64)):
            out = client.chat.completions.create(
                model=model_id,
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=500,
                temperature=0,
                logit_bias=ban,
            )
            assert out.usage is not None
            # the context the model was given caps prompt + completion
            assert out.choices[0].finish_reason == "length"
            assert out.usage.total_tokens == context, (model_id, out.usage)
        log = server.log()
        loaded = {
            ln.split(" loaded from")[0].split()[-1]: ln
            for ln in log.splitlines()
            if " loaded from " in ln
        }
        assert " on mlx" in loaded["tiny"]  # auto, as the server says
        assert " on torch" in loaded["tiny-short"]  # its own backend
    finally:
        server.stop()
