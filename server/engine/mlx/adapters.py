"""LoRA adapters applied per request on an already-loaded MLX base model.

mlx-lm's `load_adapters` rewrites the model for one adapter for good. Here each
adapted linear layer is wrapped once in a `SwitchableLoRA` that keeps every
loaded adapter's (lora_a, lora_b, scale) beside the shared base weights, and a
shared slot says which one (or none) the current request uses. The worker thread
runs one request at a time, so switching the slot between requests is safe.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast


@dataclass
class _Slot:
    """Which adapter is active; shared by every wrapped layer of one model."""

    active: str | None = None


@dataclass
class _Bank:
    """A wrapped layer's adapters by key (a plain object: not an mlx parameter tree)."""

    slot: _Slot
    adapters: dict[str, tuple[Any, Any, float]] = field(default_factory=dict)


def _switchable_class() -> type:
    import mlx.nn as nn

    class SwitchableLoRA(nn.Module):
        """`base(x)` plus the active adapter's `scale * (x @ a) @ b`, if any."""

        def __init__(self, base: Any, bank: _Bank) -> None:
            super().__init__()
            self.base = base
            self.bank = bank

        def __call__(self, x: Any) -> Any:
            y = self.base(x)
            adapter = self.bank.adapters.get(self.bank.slot.active or "")
            if adapter is None:
                return y
            a, b, scale = adapter
            return y + (scale * ((x @ a) @ b)).astype(y.dtype)

    return SwitchableLoRA


class MLXAdapterSet:
    """Loads, caches (LRU) and activates adapters on one MLX model."""

    def __init__(self, model: Any, max_loaded: int = 4) -> None:
        self._model = model
        self._slot = _Slot()
        self._banks: dict[str, _Bank] = {}
        self._loaded: OrderedDict[str, None] = OrderedDict()
        self._max = max_loaded
        self._cls = _switchable_class()

    def activate(self, adapter_dir: Path | None) -> None:
        """Use this adapter (None: the bare base model) for the next forward passes."""
        if adapter_dir is None:
            self._slot.active = None
            return
        key = str(adapter_dir)
        if key in self._loaded:
            self._loaded.move_to_end(key)
        else:
            self._load(key, adapter_dir)
        self._slot.active = key

    def _load(self, key: str, adapter_dir: Path) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        scale = float(config.get("lora_parameters", {}).get("scale", 20.0))
        weights = cast(dict[str, Any], mx.load(str(adapter_dir / "adapters.safetensors")))
        pairs: dict[str, dict[str, Any]] = {}
        for name, array in weights.items():
            path, _, leaf = name.rpartition(".")
            if leaf not in ("lora_a", "lora_b"):
                raise ValueError(f"{adapter_dir}: unexpected adapter tensor {name}")
            pairs.setdefault(path, {})[leaf] = array
        modules = dict(self._model.named_modules())
        new_wrappers = []
        for path, ab in pairs.items():
            if path not in self._banks:
                base = modules.get(path)
                if base is None:
                    raise ValueError(f"{adapter_dir}: the base model has no layer {path}")
                bank = _Bank(self._slot)
                new_wrappers.append((path, self._cls(base, bank)))
                self._banks[path] = bank
            dtype = mx.float32
            a, b = ab["lora_a"].astype(dtype), ab["lora_b"].astype(dtype)
            mx.eval(a, b)
            self._banks[path].adapters[key] = (a, b, scale)
        if new_wrappers:
            self._model.update_modules(tree_unflatten(new_wrappers))
        self._loaded[key] = None
        while len(self._loaded) > self._max:
            self._evict(next(iter(self._loaded)))

    def _evict(self, key: str) -> None:
        for bank in self._banks.values():
            bank.adapters.pop(key, None)
        self._loaded.pop(key, None)
        if self._slot.active == key:
            self._slot.active = None

    def forget(self, adapter_dir: Path) -> None:
        """Drop a cached adapter (e.g. its model was deleted)."""
        self._evict(str(adapter_dir))
