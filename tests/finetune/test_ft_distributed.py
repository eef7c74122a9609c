"""Data-parallel training over 2 loopback ranks (issue 23): the same run as one rank, within
the tolerance docs/distributed.md states, on MLX (mlx.launch, ring) and torch (torchrun,
gloo); a rank killed mid-run ends the run as a crash, promptly; what travels to the ranks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from ft_helpers import Recorder, secret_config, write_secret_data
from live_server import process_running
from safetensors.numpy import load_file

from finetune.adapters import MLX_WEIGHTS, PEFT_WEIGHTS
from finetune.callbacks import StepMetrics
from server.jobs.launch import Host, HostsError, parse_hosts, take_ranks
from server.jobs.rankfiles import pack, unpack
from server.jobs.trainproc import TrainerCrashed, train_in_child

LOOPBACK_2 = [Host("127.0.0.1", 2)]
WEIGHT_TOLERANCE = 1e-4  # absolute, on LoRA weights of magnitude ~0.2 (measured: 3e-6)
LOSS_TOLERANCE = 1e-4  # relative, per step (measured: equal to 5 decimals)


def _config(model: Path, root: Path, out: str, backend: str, **extra: object) -> object:
    data = write_secret_data(root / "data")
    values: dict[str, object] = {
        "batch_size": 4,
        "n_epochs": 2,
        "steps_per_eval": 3,
        "steps_per_checkpoint": 3,
    }
    values.update(extra)
    return secret_config(model, data, root / out, backend, **values)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_two_ranks_train_the_one_rank_run(
    backend: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    runs = {}
    for ranks in (1, 2):
        recorder = Recorder()
        config = _config(tiny_model_path, tmp_path, f"out{ranks}", backend)
        result = train_in_child(config, recorder, None, LOOPBACK_2 if ranks == 2 else None)  # type: ignore[arg-type]
        assert not result.stopped_early and result.steps == 6
        runs[ranks] = (recorder, result)
    (one, one_result), (two, two_result) = runs[1], runs[2]
    # every step of both runs reported, the loss going down the same way
    assert [s.step for s in two.steps] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(
        [s.train_loss for s in two.steps], [s.train_loss for s in one.steps], rtol=LOSS_TOLERANCE
    )
    assert two.steps[-1].train_loss < two.steps[0].train_loss - 2
    np.testing.assert_allclose(
        [e.valid_loss for e in two.evals], [e.valid_loss for e in one.evals], rtol=LOSS_TOLERANCE
    )
    assert [c.step for c in two.checkpoints] == [3, 6]
    assert two_result.trained_tokens == one_result.trained_tokens
    # the adapters rank 0 wrote hold the same weights
    name = MLX_WEIGHTS if backend == "mlx" else PEFT_WEIGHTS
    a = load_file(str(one_result.adapter_path / name))
    b = load_file(str(two_result.adapter_path / name))
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=WEIGHT_TOLERANCE, err_msg=key)


def _descendants(launcher: int) -> dict[int, list[str]]:
    """Every process under the launcher (torchrun starts its ranks in sessions of their
    own, so the tree, not the session, says which), with its environment."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int(
                (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
            )
        except (OSError, ValueError, IndexError):
            continue
    found: dict[int, list[str]] = {}
    frontier = [launcher]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    found[pid] = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                except OSError:
                    continue
                frontier.append(pid)
    return found


def _rank_pids(launcher: int, rank: int) -> list[int]:
    """The training processes of rank `rank` (mlx.launch sets MLX_RANK, torchrun RANK)."""
    marks = {f"MLX_RANK={rank}", f"RANK={rank}"}
    return [pid for pid, env in _descendants(launcher).items() if marks & set(env)]


class KillRankOne(Recorder):
    """Kills rank 1 (SIGKILL) when step 2 is reported."""

    def __init__(self) -> None:
        super().__init__()
        self.launcher = 0
        self.killed: list[int] = []
        self.group: set[int] = set()

    def on_step(self, metrics: StepMetrics) -> None:
        super().on_step(metrics)
        if metrics.step == 2 and not self.killed:
            self.group = set(_descendants(self.launcher))
            self.killed = _rank_pids(self.launcher, 1)
            for pid in self.killed:
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_a_rank_killed_mid_run_ends_it_as_a_crash(
    backend: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    recorder = KillRankOne()

    def started(pid: int) -> None:
        recorder.launcher = pid

    config = _config(tiny_model_path, tmp_path, "out", backend, n_epochs=30)
    tic = time.monotonic()
    with pytest.raises(TrainerCrashed):
        train_in_child(config, recorder, started, LOOPBACK_2)  # type: ignore[arg-type]
    assert len(recorder.killed) == 1, "rank 1 was not found to kill"
    assert len(recorder.steps) < 90  # it did not run on
    assert time.monotonic() - tic < 120
    # nothing of the group is left behind (a zombie is gone once init reaps it)
    time.sleep(1)
    assert len(recorder.group) >= 2
    assert [pid for pid in recorder.group if process_running(pid)] == []
    # the checkpoint written before the kill is complete: a resume starts from it
    checkpoints = sorted((tmp_path / "out" / "checkpoints").glob("step-*"))
    assert all((c / "trainer_state.json").is_file() for c in checkpoints)


def test_what_rank_zero_sends_the_others(tmp_path: Path, tiny_model_path: Path) -> None:
    parent = tmp_path / "parent"
    (parent / "sub").mkdir(parents=True)
    (parent / "adapter_config.json").write_text("{}")
    (parent / "sub" / "w.bin").write_bytes(b"\x00\x01")
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    state = {"fingerprint": {"init_adapter": str(parent)}, "step": 3}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    config = _config(
        tiny_model_path, tmp_path, "out", "mlx", init_adapter=parent, resume_from=checkpoint
    )
    scratch = tmp_path / "rank1"
    copy = unpack(pack(config), scratch)  # type: ignore[arg-type]
    assert copy.model_path == config.model_path  # type: ignore[attr-defined]
    assert copy.out_dir == scratch / "out"
    assert copy.train_file.read_bytes() == config.train_file.read_bytes()  # type: ignore[attr-defined]
    assert copy.valid_file is not None
    assert (copy.init_adapter / "sub" / "w.bin").read_bytes() == b"\x00\x01"  # type: ignore[operator]
    moved = json.loads((copy.resume_from / "trainer_state.json").read_text())  # type: ignore[operator]
    assert moved["fingerprint"]["init_adapter"] == str(copy.init_adapter)


def test_train_hosts_are_read_and_checked(tmp_path: Path) -> None:
    assert parse_hosts(None) == []
    hosts = parse_hosts("127.0.0.1:2, mac2:3,mac3")
    assert [(h.name, h.slots) for h in hosts] == [("127.0.0.1", 2), ("mac2", 3), ("mac3", 1)]
    assert [(h.name, h.slots) for h in take_ranks(hosts, 4)] == [("127.0.0.1", 2), ("mac2", 2)]
    with pytest.raises(HostsError, match="between 1 and 6"):
        take_ranks(hosts, 7)
    with pytest.raises(HostsError, match="must be this machine"):
        parse_hosts("mac2:2,127.0.0.1")
    with pytest.raises(HostsError, match="host:slots"):
        parse_hosts("127.0.0.1:two")
    hostfile = tmp_path / "hosts.json"
    entries = [{"ssh": "localhost", "ips": ["127.0.0.1"]}] * 2 + [
        {"ssh": "mac2", "ips": ["10.0.0.2"]}
    ]
    hostfile.write_text(json.dumps({"backend": "ring", "hosts": entries}))
    parsed = parse_hosts(str(hostfile))
    assert [(h.name, h.slots, h.ip) for h in parsed] == [
        ("localhost", 2, "127.0.0.1"),
        ("mac2", 1, "10.0.0.2"),
    ]


@pytest.mark.parametrize("backend", ["mlx", "torch"])
def test_dpo_on_two_ranks_is_the_one_rank_run(
    backend: str, tiny_model_path: Path, tmp_path: Path
) -> None:
    from ft_helpers import write_jsonl
    from test_ft_dpo import dpo_config, pair
    from tiny_model import QUESTIONS

    files = (
        write_jsonl(tmp_path / "train.jsonl", [pair(q) for q in QUESTIONS[:9]]),
        write_jsonl(tmp_path / "valid.jsonl", [pair(q) for q in QUESTIONS[9:]]),
    )
    runs = {}
    for ranks in (1, 2):
        recorder = Recorder()
        # 3 pairs a step: one rank takes 2, the other 1
        config = dpo_config(tiny_model_path, files, tmp_path / f"out{ranks}", backend, batch_size=3)
        train_in_child(config, recorder, None, LOOPBACK_2 if ranks == 2 else None)
        runs[ranks] = recorder.steps
    one, two = runs[1], runs[2]
    assert len(two) == len(one) == 6
    for key in ("train_loss", "train_mean_token_accuracy"):
        np.testing.assert_allclose(
            [getattr(s, key) for s in two], [getattr(s, key) for s in one], rtol=LOSS_TOLERANCE
        )
    for key in ("train_reward_margin", "train_preference_accuracy"):
        np.testing.assert_allclose(
            [s.extras[key] for s in two], [s.extras[key] for s in one], rtol=1e-3, atol=1e-5
        )
