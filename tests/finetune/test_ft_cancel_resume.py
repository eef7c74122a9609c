"""Cancel within one step, keep a checkpoint, resume to the same result as an unbroken run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ft_helpers import Recorder, secret_config, write_secret_data
from safetensors.numpy import load_file

from finetune.state import STATE_FILE, latest_checkpoint
from finetune.trainer import train

WEIGHTS = {"mlx": "adapters.safetensors", "torch": "adapter_model.safetensors"}


@pytest.fixture(scope="module")
def secret_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_secret_data(tmp_path_factory.mktemp("secret-data"))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_cancel_then_resume_matches_an_unbroken_run(
    backend: str, tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    # 12 examples, batch 3, 2 epochs: 8 steps; validation every 4, checkpoints every 5
    settings = {"n_epochs": 2, "batch_size": 3, "steps_per_eval": 4, "steps_per_checkpoint": 5}
    unbroken = train(
        secret_config(tiny_model_path, secret_data, tmp_path / "a", backend, **settings)
    )
    assert unbroken.steps == unbroken.total_steps == 8

    out = tmp_path / "b"
    recorder = Recorder(stop_after=3)
    stopped = train(secret_config(tiny_model_path, secret_data, out, backend, **settings), recorder)
    assert stopped.stopped_early and stopped.steps == 3 and stopped.total_steps == 8
    # polled before each step (the 4th never started), and by the "before" evaluation: once
    # per validation batch (1) and before each greedy answer (3)
    assert recorder.stop_polls == 4 + 4
    checkpoint = out / "checkpoints" / "step-3"
    assert stopped.adapter_path == checkpoint
    assert (checkpoint / STATE_FILE).is_file() and (checkpoint / WEIGHTS[backend]).is_file()
    assert [c.step for c in recorder.checkpoints] == [3]
    assert not (out / "adapter").exists()
    # a crash mid-write leaves a temporary folder: never taken for a checkpoint, swept on resume
    leftover = out / "checkpoints" / ".step-9.tmp-12345"
    leftover.mkdir()
    (leftover / STATE_FILE).write_text("{}")
    assert latest_checkpoint(out) == checkpoint

    resumed_recorder = Recorder()
    resumed = train(
        secret_config(
            tiny_model_path, secret_data, out, backend, resume_from=checkpoint, **settings
        ),
        resumed_recorder,
    )
    assert not resumed.stopped_early
    assert resumed.adapter_path == out / "adapter"
    assert not leftover.exists()
    assert [m.step for m in resumed_recorder.steps] == [4, 5, 6, 7, 8]
    assert [c.step for c in resumed_recorder.checkpoints] == [5]
    assert [e.step for e in resumed_recorder.evals] == [4, 8]
    # the history carries on from the checkpoint, so result files cover the whole run
    assert [row["step"] for row in resumed.history] == list(range(1, 9))
    assert resumed.trained_tokens == unbroken.trained_tokens
    # Same seed, same batches, restored optimizer state: the same numbers as the unbroken run.
    np.testing.assert_allclose(
        [row["train_loss"] for row in resumed.history],
        [row["train_loss"] for row in unbroken.history],
        rtol=1e-4,
    )
    assert resumed.last_valid_loss == pytest.approx(unbroken.last_valid_loss, rel=1e-4)
    a = load_file(str(unbroken.adapter_path / WEIGHTS[backend]))
    b = load_file(str(resumed.adapter_path / WEIGHTS[backend]))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)

    # a checkpoint of another run (different seed) is refused
    with pytest.raises(ValueError, match="different run"):
        train(
            secret_config(
                tiny_model_path,
                secret_data,
                tmp_path / "c",
                backend,
                resume_from=checkpoint,
                **{**settings, "seed": 1},
            )
        )


def test_stop_before_the_first_step_still_leaves_a_checkpoint(
    tiny_model_path: Path, secret_data: tuple[Path, Path], tmp_path: Path
) -> None:
    recorder = Recorder(stop_after=0)
    result = train(secret_config(tiny_model_path, secret_data, tmp_path, "mlx"), recorder)
    assert result.stopped_early and result.steps == 0 and recorder.steps == []
    assert result.adapter_path == tmp_path / "checkpoints" / "step-0"
    assert (result.adapter_path / "adapter_config.json").is_file()
