"""LoRA adapters applied per request on an already-loaded transformers model, via PEFT.

PEFT injects LoRA layers into the base model's modules in place and keeps several
named adapters side by side; `set_adapter` picks one and disabling the adapter
layers gives the bare base back, so the base weights are loaded once.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any


class TorchAdapterSet:
    """Loads, caches (LRU) and activates PEFT adapters on one transformers model."""

    def __init__(self, model: Any, max_loaded: int = 4) -> None:
        self._model = model
        self._peft: Any = None
        self._names: OrderedDict[str, str] = OrderedDict()  # adapter dir -> adapter name
        self._max = max_loaded
        self._counter = 0

    def activate(self, adapter_dir: Path | None) -> None:
        """Use this adapter (None: the bare base model) for the next forward passes."""
        if adapter_dir is None:
            if self._peft is not None:
                self._peft.base_model.disable_adapter_layers()
            return
        key = str(adapter_dir)
        if key in self._names:
            self._names.move_to_end(key)
        else:
            self._load(key, adapter_dir)
        self._peft.base_model.enable_adapter_layers()
        self._peft.set_adapter(self._names[key])

    def _load(self, key: str, adapter_dir: Path) -> None:
        from peft import PeftModel

        self._counter += 1
        name = f"a{self._counter}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._model, str(adapter_dir), adapter_name=name)
            self._peft.eval()
        else:
            self._peft.load_adapter(str(adapter_dir), adapter_name=name)
        self._names[key] = name
        while len(self._names) > self._max:
            self.forget(Path(next(iter(self._names))))

    def forget(self, adapter_dir: Path) -> None:
        """Drop a cached adapter (e.g. its model was deleted)."""
        name = self._names.pop(str(adapter_dir), None)
        if name is not None and self._peft is not None:
            if name in self._peft.active_adapters:
                self._peft.base_model.disable_adapter_layers()
            self._peft.delete_adapter(name)
