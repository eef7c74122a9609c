"""Convert a GGUF checkpoint into a Hugging Face folder that mlx_lm and transformers load.

transformers (+ gguf) de-quantizes the weights offline; the folder is then fixed up for
both engines: a top-level ``rope_theta`` (mlx_lm ignores transformers 5's
``rope_parameters``), ``<|im_end|>`` as eos, the chat template inline in
tokenizer_config.json, sampling defaults, and a check that every tensor is dense bf16.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SAMPLING_DEFAULTS = {"temperature": 0.2, "top_p": 0.9}

IM_END = "<|im_end|>"

# SmolLM2-Instruct's own template; used only if a GGUF comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_TOKENIZER_CONFIG_NOISE = ("is_local", "local_files_only", "gguf_file", "name_or_path")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class Reporter:
    """Step-by-step progress: a rich spinner and ✓ lines on stderr, or else log records.

    With progress on, the messages go to the console only (logged at DEBUG), so that a
    logging handler writing to the same terminal does not print each of them twice.
    """

    def __init__(self, enabled: bool) -> None:
        self._console: Any = None
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def info(self, message: str) -> None:
        if self._console is None:
            logger.info(message)
        else:
            logger.debug(message)
            self._console.print(message, markup=False, highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def step(self, what: str, done: str) -> Iterator[None]:
        """Run one step under a spinner; report ``done`` with its duration afterwards."""
        logger.debug("%s ...", what)
        started = time.perf_counter()
        if self._console is None:
            yield
        else:
            with self._console.status(f"{what} ..."):
                yield
        elapsed = time.perf_counter() - started
        logger.debug("%s (%.1f s)", done, elapsed)
        if self._console is not None:
            self._console.print(
                f"  ✓ {done} ({elapsed:.1f} s)", markup=False, highlight=False, soft_wrap=True
            )


@contextlib.contextmanager
def _quiet_transformers_progress() -> Iterator[None]:
    """Silence transformers' own tqdm bars while our spinner runs; restore them after.

    The legacy GGUF loader uses ``tqdm.auto`` directly, which ignores transformers'
    switch, so its module-level ``tqdm`` is pointed at transformers' switchable one.
    """
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_module: Any = None
    original: Any = None
    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_module

        original = getattr(gguf_module, "tqdm", None)
        if original is not None:
            gguf_module.tqdm = hf_logging.tqdm
    except ImportError:  # pragma: no cover - layout of other transformers versions
        gguf_module = None
    try:
        yield
    finally:
        if gguf_module is not None and original is not None:
            gguf_module.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for dense weights where transformers could otherwise keep GGUF blocks packed."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always de-quantize
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:  # pragma: no cover - a GgufConfig without that option
        return {}


def convert(gguf: Path, out: Path, report: Reporter) -> None:
    """Load the GGUF with transformers (offline) and save it as bf16 safetensors + tokenizer."""
    with report.step("Loading torch and transformers", "libraries loaded"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

    source: dict[str, Any] = {"gguf_file": gguf.name, "local_files_only": True}
    with _quiet_transformers_progress():
        with report.step("Reading the tokenizer from the GGUF", "tokenizer read"):
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **source)
        with report.step("De-quantizing the weights to bfloat16", "weights de-quantized"):
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), dtype=torch.bfloat16, **source, **_dequantize_kwargs()
            )
        # The weights are dense now: drop the GGUF quantizer so save_pretrained writes a
        # plain checkpoint (it refuses to serialise a GGUF-quantized model).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config

        eos_id = _fix_tokenizer(tokenizer)
        for config in (model.config, model.generation_config):
            config.eos_token_id = eos_id
            if getattr(config, "pad_token_id", None) is None:
                config.pad_token_id = eos_id
        # The GGUF carries no sampling defaults; these are SmolLM2-Instruct's model card's.
        # pomar uses them when a request names no temperature / top_p (as vLLM does).
        model.generation_config.do_sample = True
        model.generation_config.temperature = SAMPLING_DEFAULTS["temperature"]
        model.generation_config.top_p = SAMPLING_DEFAULTS["top_p"]

        with report.step("Writing safetensors and tokenizer", "saved"):
            model.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
            _finish_config(out / "config.json", eos_id)
            _finish_tokenizer_config(out / "tokenizer_config.json", tokenizer, model.config)
            _check_dense(out / "model.safetensors")


def _fix_tokenizer(tokenizer: Any) -> int:
    """Make ``<|im_end|>`` the eos and make sure a ChatML template is there; return eos id."""
    im_end_id = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end_id is None or im_end_id == tokenizer.unk_token_id:
        raise RuntimeError(f"The embedded GGUF's tokenizer has no {IM_END} token")
    if tokenizer.eos_token != IM_END:
        tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return int(im_end_id)


def _finish_config(path: Path, eos_id: int) -> None:
    """Top-level ``rope_theta`` for mlx_lm (which ignores ``rope_parameters``); no quantizer."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    rope = config.get("rope_parameters")
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if "rope_theta" not in config:
        raise RuntimeError(f"No rope_theta found for {path}")
    config["eos_token_id"] = eos_id
    write_json_atomic(path, config)


def _finish_tokenizer_config(path: Path, tokenizer: Any, model_config: Any) -> None:
    """A tokenizer_config.json that transformers 4 and 5 (and so mlx_lm) both read."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _TOKENIZER_CONFIG_NOISE:
        data.pop(key, None)
    # The generic tokenizer.json-backed class; transformers 5 aliases it to TokenizersBackend.
    data["tokenizer_class"] = "PreTrainedTokenizerFast"
    data["eos_token"] = IM_END
    # Also inline (transformers 5 writes chat_template.jinja; older readers want it here).
    data["chat_template"] = tokenizer.chat_template
    data["model_max_length"] = int(getattr(model_config, "max_position_embeddings", 8192))
    data.setdefault("clean_up_tokenization_spaces", False)
    write_json_atomic(path, data)


def _check_dense(path: Path) -> None:
    """Fail loudly if the checkpoint holds anything but bf16 tensors (e.g. packed blocks)."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    dtypes = {info["dtype"] for name, info in header.items() if name != "__metadata__"}
    if dtypes != {"BF16"}:
        raise RuntimeError(f"{path} holds {sorted(dtypes)} tensors, expected only BF16")
    if "model.embed_tokens.weight" not in header:
        raise RuntimeError(f"{path} has no model.embed_tokens.weight")
