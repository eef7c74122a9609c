"""One model served across hosts: `pomar serve --hosts 127.0.0.1:2` (docs/distributed.md).

Two ranks over loopback (MLX's ring backend, started by mlx.launch), rank 0 serving HTTP:
the tiny model sharded tensor parallel gives the same greedy text, streamed or not, as
the one-host MLX server; a pipeline-parallel model too (the tiny model as qwen2, which
mlx-lm can split either way); stopping the server ends every rank; an architecture that
cannot be sharded stops `pomar serve` at once with one line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from live_server import LiveServer, client_for, run_pomar

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or shutil.which("bash") is None, reason="mlx.launch needs bash"
)

QUICK = ["--embedding-model", "none"]
PROMPTS = [
    "Tell me about the cat and the dog.",
    "Why is the server slow today?",
]


@pytest.fixture(scope="module")
def qwen2_model(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model as qwen2 (q/k/v biases added), which mlx-lm can pipeline."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    dest = tmp_path_factory.mktemp("tiny-qwen2") / "tiny-qwen2"
    shutil.copytree(tiny_model_path, dest)
    config = json.loads((dest / "config.json").read_text())
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    (dest / "config.json").write_text(json.dumps(config))
    weights = load_file(str(dest / "model.safetensors"))
    rng = np.random.default_rng(1)
    for name in list(weights):
        if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            bias = rng.normal(0, 0.1, (weights[name].shape[0],)).astype(np.float32)
            weights[name.replace(".weight", ".bias")] = bias
    save_file(weights, str(dest / "model.safetensors"))
    return dest


@pytest.fixture(scope="module")
def servers(
    tiny_model_path: Path, qwen2_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, LiveServer]]:
    """One-host MLX servers and 2-rank servers of the same models, started together."""
    home = tmp_path_factory.mktemp("sharded-home")
    hosts = ["--hosts", "127.0.0.1:2"]
    pipeline: dict[str, str | None] = {"POMAR_SHARDING": "pipeline"}
    plans: dict[str, tuple[Path, list[str], dict[str, str | None]]] = {
        "one": (tiny_model_path, [], {}),
        "tensor": (tiny_model_path, hosts, {}),
        "qwen2-one": (qwen2_model, [], {}),
        "pipeline": (qwen2_model, hosts, pipeline),
        "to-stop": (tiny_model_path, hosts, {}),  # test_stopping_rank_0_ends_every_rank's
    }
    started = {
        name: LiveServer(str(model), "mlx", home / name, extra_args=[*QUICK, *extra], env=env)
        for name, (model, extra, env) in plans.items()
    }
    with ThreadPoolExecutor(len(started)) as pool:  # their starts overlap their waits
        try:
            for done in [pool.submit(s.start, 180) for s in started.values()]:
                done.result()
            yield started
        finally:
            list(pool.map(LiveServer.stop, started.values()))


def _chat(server: LiveServer, prompt: str, *, stream: bool, max_tokens: int = 40) -> str:
    client = client_for(server)
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        reply = client.chat.completions.create(
            model=server.model, messages=messages, temperature=0, max_tokens=max_tokens
        )
        return reply.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model=server.model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize(("sharded", "single"), [("tensor", "one"), ("pipeline", "qwen2-one")])
def test_two_ranks_give_the_greedy_text_of_one(
    servers: dict[str, LiveServer], sharded: str, single: str
) -> None:
    engines = httpx.get(f"{servers[sharded].base_url}/health").json()["engines"]
    assert engines[0]["ranks"] == 2
    for prompt in PROMPTS:
        expected = _chat(servers[single], prompt, stream=False)
        assert expected
        assert _chat(servers[sharded], prompt, stream=False) == expected
        assert _chat(servers[sharded], prompt, stream=True) == expected


def test_a_prompt_longer_than_one_pass_and_logprobs(servers: dict[str, LiveServer]) -> None:
    """A prompt read in several lockstep passes (512 ids each); the logprobs match too."""
    long = " ".join(["The cat sat on the mat and looked at the old man."] * 90)
    reply = {}
    for name in ("one", "tensor"):
        reply[name] = client_for(servers[name]).chat.completions.create(
            model=servers[name].model,
            messages=[{"role": "user", "content": long}],
            temperature=0,
            max_tokens=12,
            logprobs=True,
            top_logprobs=2,
        )
    one, two = reply["one"], reply["tensor"]
    assert one.usage is not None and one.usage.prompt_tokens > 600
    assert two.choices[0].message.content == one.choices[0].message.content
    assert one.choices[0].logprobs is not None and two.choices[0].logprobs is not None
    ones, twos = one.choices[0].logprobs.content or [], two.choices[0].logprobs.content or []
    assert len(ones) == len(twos) == 12
    for a, b in zip(ones, twos, strict=True):
        assert a.token == b.token
        assert abs(a.logprob - b.logprob) < 1e-3


def test_stopping_rank_0_ends_every_rank(servers: dict[str, LiveServer]) -> None:
    server = servers["to-stop"]
    marker = f"--port {server.port}"
    ranks = _processes(marker)
    assert len(ranks) >= 3  # this command and its two ranks (mlx.launch's own line too)
    assert _chat(server, PROMPTS[0], stream=False, max_tokens=4)
    server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log()
    deadline = time.monotonic() + 10
    while _processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes(marker) == []
    assert "rank 1: rank 0 stopped after" in server.log()


def _processes(marker: str) -> list[int]:
    """Live processes whose command line holds `marker` (this test's server and ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in line and "--hosts" in line and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def gpt2_model(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gpt2 folder (mlx-lm shards gpt2 neither way); no weights are needed to say so."""
    import numpy as np
    from safetensors.numpy import save_file

    dest = tmp_path_factory.mktemp("tiny-gpt2") / "tiny-gpt2"
    dest.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_path / name, dest / name)
    config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_ctx": 64}
    config.update(n_embd=64, n_head=4, n_layer=2, n_positions=64, layer_norm_epsilon=1e-5)
    (dest / "config.json").write_text(json.dumps({**config, "vocab_size": 768}))
    save_file({"wte.weight": np.zeros((768, 64), np.float32)}, str(dest / "model.safetensors"))
    return dest


@pytest.mark.parametrize(
    ("model", "hosts", "says"),
    [
        (
            "gpt2_model",
            "127.0.0.1:2",
            "pomar: the gpt2 architecture cannot be sharded over 2 ranks (tensor parallel: "
            "mlx-lm has no tensor parallel version of it; pipeline parallel: mlx-lm has no "
            "pipeline version of it): serve it on one machine (without --hosts)",
        ),
        (
            "tiny_model_path",
            "127.0.0.1:3",
            "pomar: the llama architecture cannot be sharded over 3 ranks (tensor parallel: "
            "its 4 attention heads and 2 key/value heads do not split evenly over 3 ranks; "
            "pipeline parallel: mlx-lm has no pipeline version of it): serve it on one "
            "machine (without --hosts), or over a number of ranks that fits",
        ),
    ],
)
def test_a_model_that_cannot_be_sharded_stops_serve_with_one_line(
    request: pytest.FixtureRequest, tmp_path: Path, model: str, hosts: str, says: str
) -> None:
    path: Path = request.getfixturevalue(model)
    args = ["serve", "--model", str(path), "--hosts", hosts, *QUICK]
    done = run_pomar(args, tmp_path, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == says


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("10.255.255.1:1,127.0.0.1:1", "the first host must be this machine"),
        ("127.0.0.1:0", "is not host or host:slots"),
        ("127.0.0.1:two", "is not host or host:slots"),
        ("/nowhere/hosts.json", "cannot read the hostfile"),
    ],
)
def test_bad_hosts_are_refused(spec: str, message: str) -> None:
    from server.serve_hosts import HostsError, parse_hosts

    with pytest.raises(HostsError, match=message):
        parse_hosts(spec)


def test_hosts_and_hostfiles_become_ranks(tmp_path: Path) -> None:
    from server.serve_hosts import Rank, parse_hosts

    assert parse_hosts("127.0.0.1:2") == ([Rank("127.0.0.1", "127.0.0.1")] * 2, [])
    assert parse_hosts("localhost") == ([Rank("127.0.0.1", "127.0.0.1")], [])
    hostfile = tmp_path / "hosts.json"
    hosts = [{"ssh": "localhost", "ips": ["127.0.0.1"]}, {"ssh": "127.0.0.1"}]
    hostfile.write_text(json.dumps({"envs": ["A=1"], "hosts": hosts}))
    assert parse_hosts(str(hostfile)) == ([Rank("127.0.0.1", "127.0.0.1")] * 2, ["A=1"])


def test_openai_errors_are_not_swallowed(servers: dict[str, LiveServer]) -> None:
    """A bad request to rank 0 is the usual 4xx, and the ranks serve on after it."""
    client = client_for(servers["tensor"])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=servers["tensor"].model,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=-1,
        )
    assert _chat(servers["tensor"], PROMPTS[1], stream=False) == _chat(
        servers["one"], PROMPTS[1], stream=False
    )
