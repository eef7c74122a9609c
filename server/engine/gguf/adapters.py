"""LoRA adapters on a GGUF base: converted once, loaded on the model, switched per step.

llama.cpp applies adapters to a whole context, so a batch step decodes the sequences of
one adapter; the batcher switches before each step (`apply`), which costs nothing when
the adapter is already the active one.
"""

from __future__ import annotations

import ctypes
import logging
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class GGUFAdapters:
    """The adapters converted to GGUF LoRA files and loaded on one base model."""

    def __init__(self, llama: Any, base_folder: Path, name: str, max_loaded: int = 8) -> None:
        """`llama` is the base's llama_cpp.Llama; `base_folder` its HF folder or GGUF's;
        `name` its GGUF file's name (for the log)."""
        self._llama = llama
        self._base_folder = base_folder
        self._name = name
        self._loaded: OrderedDict[str, Any] = OrderedDict()
        self._active = ""
        self._max = max_loaded

    def load(self, adapter_dir: Path | None) -> str:
        """Convert and load `adapter_dir` if needed; its key ("" for the bare base)."""
        if adapter_dir is None:
            return ""
        key = str(Path(adapter_dir).resolve())
        self._handle(key)
        return key

    def apply(self, key: str) -> None:
        """Make the adapter `key` ("" = none) the context's active one."""
        if key == self._active:
            return
        self._set(key)
        self._active = key

    def reapply(self) -> None:
        """Set the active adapter again on a new context (it starts without)."""
        if self._active:
            self._set(self._active)

    def _set(self, key: str) -> None:
        import llama_cpp

        ctx = self._llama.ctx
        if not key:
            llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
            return
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self._handle(key))
        scales = (ctypes.c_float * 1)(1.0)
        if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales):
            raise RuntimeError(f"llama.cpp could not apply the adapter {key}")

    def _handle(self, key: str) -> Any:
        import llama_cpp

        from server.engine.gguf.lora import lora_to_gguf

        if key in self._loaded:
            self._loaded.move_to_end(key)
            return self._loaded[key]
        llama = self._llama
        # llama.cpp copies the tensors at load: the converted file is only needed until then
        with tempfile.TemporaryDirectory(prefix="pomar-gguf-lora-") as tmp:
            out = lora_to_gguf(
                Path(key), Path(tmp) / "adapter.gguf", llama.metadata, self._base_folder
            )
            handle = llama_cpp.llama_adapter_lora_init(llama.model, str(out).encode())
        if not handle:
            raise RuntimeError(f"llama.cpp could not load the converted adapter of {key}")
        log.info("adapter %s converted to GGUF and loaded on %s", key, self._name)
        self._loaded[key] = handle
        stale = [k for k in self._loaded if k not in (key, self._active)]  # oldest first
        while len(self._loaded) > self._max and stale:
            llama_cpp.llama_adapter_lora_free(self._loaded.pop(stale.pop(0)))
        return handle
