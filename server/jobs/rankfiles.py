"""What rank 0 sends the other ranks of a data-parallel job: the config and its files.

The other ranks may run on machines that have the base model (at the same path) but not
the job's folder, so the training and validation data, a parent adapter and the checkpoint
a run resumes from travel with the config, once, through the group's broadcast
(finetune/distributed.py). A rank writes them under its own scratch folder and trains
there; its outputs are thrown away (rank 0 writes the job's).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from finetune.config import TrainConfig

_FIELDS = ("train_file", "valid_file", "init_adapter", "resume_from")


def pack(config: TrainConfig) -> bytes:
    """The config and the content of every file or folder it names (but the model)."""
    files: dict[str, dict[str, str]] = {}
    for name in _FIELDS:
        path = getattr(config, name)
        if path is None:
            continue
        path = Path(path)
        members = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
        files[name] = {
            ("" if member == path else member.relative_to(path).as_posix()): base64.b64encode(
                member.read_bytes()
            ).decode("ascii")
            for member in members
        }
    return json.dumps({"config": config.model_dump(mode="json"), "files": files}).encode()


def unpack(data: bytes, scratch: Path) -> TrainConfig:
    """Write the files of :func:`pack` under `scratch`; the config with its paths there."""
    payload: dict[str, Any] = json.loads(data)
    values = dict(payload["config"])
    original = {name: values.get(name) for name in _FIELDS}
    for name, members in payload["files"].items():
        target = scratch / name
        for relative, content in members.items():
            destination = target / relative if relative else target
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(base64.b64decode(content))
        values[name] = str(target)
    values["out_dir"] = str(scratch / "out")
    if payload["files"].get("resume_from") and original["init_adapter"]:
        _keep_fingerprint(scratch / "resume_from", original["init_adapter"], values)
    return TrainConfig.model_validate(values)


def _keep_fingerprint(checkpoint: Path, original: str, values: dict[str, Any]) -> None:
    """A checkpoint's fingerprint names the parent adapter by rank 0's path; point it at
    this rank's copy, so the resume check compares the same run (finetune/trainer.py)."""
    state_file = checkpoint / "trainer_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    if state.get("fingerprint", {}).get("init_adapter") == original:
        state["fingerprint"]["init_adapter"] = values["init_adapter"]
        state_file.write_text(json.dumps(state), encoding="utf-8")
