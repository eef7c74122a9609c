"""Adapter folders: mlx-lm's format, PEFT's format, and conversion between them.

* mlx-lm: ``adapters.safetensors`` with ``<module>.lora_a`` (in, r) and ``<module>.lora_b``
  (r, out), and an ``adapter_config.json`` with ``fine_tune_type``, ``num_layers`` (the last N
  blocks) and ``lora_parameters {rank, scale, dropout, keys}`` — what ``mlx_lm.load(...,
  adapter_path=)`` reads.
* PEFT: ``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A.weight``
  (r, in) and ``lora_B.weight`` (out, r), and PEFT's own ``adapter_config.json`` with ``r``
  and ``lora_alpha`` — what ``PeftModel.from_pretrained`` reads.

Both compute ``W x + s · B A x``; converting is a key rename, a transpose and
``lora_alpha = scale · r`` (``lora_alpha / sqrt(r)`` under rsLoRA). Module paths are taken
to be the same in both engines, which holds for the Llama family (Llama, Mistral, Qwen,
SmolLM) whose mlx-lm port keeps Hugging Face's names. Neither engine is imported here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np

from finetune.config import LoRAConfig

MLX_WEIGHTS = "adapters.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
_LAYER_KEY = re.compile(r"^(?P<stack>.+\.layers)\.(?P<index>\d+)\.(?P<module>.+)$")

AdapterFormat = Literal["mlx", "peft"]


def detect_adapter_format(path: Path) -> AdapterFormat:
    """Which engine wrote the adapter folder ``path``."""
    path = Path(path)
    if (path / MLX_WEIGHTS).is_file():
        return "mlx"
    if (path / PEFT_WEIGHTS).is_file():
        return "peft"
    raise ValueError(f"{path} holds neither {MLX_WEIGHTS} nor {PEFT_WEIGHTS}")


def mlx_adapter_config(lora: LoRAConfig, num_layers: int, base_model: Path) -> dict[str, Any]:
    """The ``adapter_config.json`` mlx-lm reads (plus ``lora_alpha`` and the base, for us)."""
    return {
        "fine_tune_type": "lora",
        "model": str(base_model),
        "num_layers": num_layers,
        "lora_parameters": {
            "rank": lora.rank,
            "scale": lora.scale,
            "dropout": lora.dropout,
            "keys": list(lora.target_modules),
        },
        "lora_alpha": lora.alpha,
        "max_seq_length": lora.max_length,
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write JSON with a trailing newline (callers write inside a temporary folder)."""
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a JSON object")
    return data


def _load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    tensors: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a Mapping
                tensors[key] = handle.get_tensor(key)
    except TypeError:
        # numpy has no bfloat16: go through torch when the adapter was saved in it
        from safetensors.torch import load_file

        tensors = {k: v.float().numpy() for k, v in load_file(str(path)).items()}
    return tensors


def _save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    contiguous = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(contiguous, str(path), metadata={"format": "pt"})


def _num_hidden_layers(base_model: Path | None) -> int | None:
    if base_model is None or not (Path(base_model) / "config.json").is_file():
        return None
    config = _read_json(Path(base_model) / "config.json")
    value = config.get("num_hidden_layers") or config.get("text_config", {}).get(
        "num_hidden_layers"
    )
    return int(value) if value else None


def convert_mlx_to_peft(src: Path, dst: Path, base_model_path: Path) -> Path:
    """Write a PEFT adapter folder ``dst`` equivalent to the mlx-lm adapter ``src``."""
    src, dst = Path(src), Path(dst)
    config = _read_json(src / CONFIG_FILE)
    if config.get("fine_tune_type", "lora") != "lora":
        raise ValueError(f"{src}: only LoRA adapters convert (not {config['fine_tune_type']})")
    params = config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    weights: dict[str, np.ndarray] = {}
    modules: set[str] = set()
    for key, value in _load_tensors(src / MLX_WEIGHTS).items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b"):
            raise ValueError(f"{src}: {key} is not a LoRA weight")
        peft_leaf = "lora_A.weight" if leaf == "lora_a" else "lora_B.weight"
        weights[f"{PEFT_PREFIX}{module}.{peft_leaf}"] = value.T
        match = _LAYER_KEY.match(module)
        modules.add(match["module"] if match else module.rpartition(".")[2])
    n_layers = _num_hidden_layers(base_model_path)
    num_layers = int(config.get("num_layers", -1))
    layers = None
    if n_layers is not None and 0 < num_layers < n_layers:
        layers = list(range(n_layers - num_layers, n_layers))
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_path),
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": sorted(params.get("keys") or modules),
        "layers_to_transform": layers,
        "layers_pattern": "layers" if layers else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    dst.mkdir(parents=True, exist_ok=True)
    _save_tensors(weights, dst / PEFT_WEIGHTS)
    write_json(dst / CONFIG_FILE, peft_config)
    return dst


def convert_peft_to_mlx(src: Path, dst: Path, base_model_path: Path | None = None) -> Path:
    """Write an mlx-lm adapter folder ``dst`` equivalent to the PEFT adapter ``src``.

    ``base_model_path`` (default: the adapter's ``base_model_name_or_path`` when that is a
    local folder) gives the block count, so ``num_layers`` covers the lowest adapted block.
    """
    src, dst = Path(src), Path(dst)
    config = _read_json(src / CONFIG_FILE)
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{src}: only LoRA adapters convert (not {config['peft_type']})")
    if config.get("fan_in_fan_out"):
        raise ValueError(f"{src}: fan_in_fan_out adapters are not supported")
    rank, alpha = int(config["r"]), float(config["lora_alpha"])
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    weights: dict[str, np.ndarray] = {}
    modules: set[str] = set()
    indices: set[int] = set()
    for key, value in _load_tensors(src / PEFT_WEIGHTS).items():
        if not key.startswith(PEFT_PREFIX) or not key.endswith(
            (".lora_A.weight", ".lora_B.weight")
        ):
            raise ValueError(f"{src}: {key} is not a LoRA weight mlx-lm can load")
        module, _, rest = key.removeprefix(PEFT_PREFIX).rpartition(".lora_")
        match = _LAYER_KEY.match(module)
        if match is None:
            raise ValueError(f"{src}: {module} is outside the transformer blocks")
        modules.add(match["module"])
        indices.add(int(match["index"]))
        leaf = "lora_a" if rest.startswith("A") else "lora_b"
        weights[f"{module}.{leaf}"] = value.T
    if not weights:
        raise ValueError(f"{src}: no LoRA weights")
    base = base_model_path or Path(str(config.get("base_model_name_or_path") or ""))
    n_layers = _num_hidden_layers(base) or max(indices) + 1
    # mlx-lm adapts the last `num_layers` blocks; blocks without weights keep lora_b = 0.
    mlx_config = {
        "fine_tune_type": "lora",
        "model": str(base),
        "num_layers": n_layers - min(indices),
        "lora_parameters": {
            "rank": rank,
            "scale": scale,
            "dropout": float(config.get("lora_dropout", 0.0)),
            "keys": sorted(modules),
        },
        "lora_alpha": alpha,
    }
    dst.mkdir(parents=True, exist_ok=True)
    _save_tensors(weights, dst / MLX_WEIGHTS)
    write_json(dst / CONFIG_FILE, mlx_config)
    return dst


def adapter_lora(path: Path, base_model: Path | None = None) -> LoRAConfig:
    """The LoRA shape of an adapter folder (either format), as a :class:`LoRAConfig`.

    A run that starts from this adapter's weights must have exactly this shape; the
    ``max_length`` is the default (it is the run's, not the adapter's).
    """
    path = Path(path)
    config = _read_json(path / CONFIG_FILE)
    if detect_adapter_format(path) == "mlx":
        params = config["lora_parameters"]
        rank = int(params["rank"])
        alpha = float(config.get("lora_alpha") or float(params["scale"]) * rank)
        layers = int(config.get("num_layers", -1))
        n_layers = _num_hidden_layers(base_model)
        num_layers = None if layers < 0 or (n_layers is not None and layers >= n_layers) else layers
        return LoRAConfig(
            rank=rank,
            alpha=alpha,
            dropout=float(params.get("dropout", 0.0)),
            num_layers=num_layers,
            target_modules=tuple(params["keys"]),
        )
    transform = config.get("layers_to_transform")
    n_layers = _num_hidden_layers(base_model or Path(str(config.get("base_model_name_or_path"))))
    num_layers = None
    if transform and n_layers is not None:
        num_layers = n_layers - min(int(i) for i in transform)
    targets = config.get("target_modules") or []
    return LoRAConfig(
        rank=int(config["r"]),
        alpha=float(config["lora_alpha"]),
        dropout=float(config.get("lora_dropout", 0.0)),
        num_layers=num_layers,
        target_modules=tuple(sorted(targets) if isinstance(targets, list) else [targets]),
    )
