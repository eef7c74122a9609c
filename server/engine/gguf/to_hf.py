"""Convert a GGUF checkpoint into a Hugging Face folder that mlx_lm and transformers load.

transformers (+ gguf) de-quantizes the weights offline (`from_pretrained(dir,
gguf_file=...)`), for every architecture in its GGUF mapping
(`transformers.integrations.ggml.GGUF_CONFIG_MAPPING`; `transformers_architecture` says
whether a GGUF's is one). Two uses:

* `convert`: the embedded model, fixed up to be served by MLX and torch too: a top-level
  ``rope_theta`` (mlx_lm ignores transformers 5's ``rope_parameters``), ``<|im_end|>`` as
  eos, the chat template inline in tokenizer_config.json, sampling defaults;
* `convert_for_training`: any imported GGUF, as the folder a LoRA trainer reads (the
  model is still served from its GGUF): the tokenizer and chat template as the GGUF has
  them, and the same ``rope_theta`` fix for mlx_lm.

Both check that every tensor written is dense bf16.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
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
    logging handler writing to the same terminal does not print each of them twice; with
    it off they are logged at INFO. `notify`, when given, also receives every message (a
    fine-tuning job turns them into job events).
    """

    def __init__(self, enabled: bool, notify: Callable[[str], None] | None = None) -> None:
        self._console: Any = None
        self._notify = notify
        if enabled:
            from rich.console import Console

            self._console = Console(stderr=True)

    def info(self, message: str) -> None:
        if self._console is None:
            logger.info(message)
        else:
            logger.debug(message)
            self._console.print(message, markup=False, highlight=False, soft_wrap=True)
        if self._notify is not None:
            self._notify(message)

    @contextlib.contextmanager
    def step(self, what: str, done: str) -> Iterator[None]:
        """Run one step under a spinner; report ``done`` with its duration afterwards."""
        logger.log(logging.DEBUG if self._console else logging.INFO, "%s ...", what)
        if self._notify is not None:
            self._notify(f"{what} ...")
        started = time.perf_counter()
        if self._console is None:
            yield
        else:
            with self._console.status(f"{what} ..."):
                yield
        elapsed = time.perf_counter() - started
        logger.log(logging.DEBUG if self._console else logging.INFO, "%s (%.1f s)", done, elapsed)
        if self._console is not None:
            self._console.print(
                f"  ✓ {done} ({elapsed:.1f} s)", markup=False, highlight=False, soft_wrap=True
            )
        if self._notify is not None:
            self._notify(f"{done[:1].upper()}{done[1:]} ({elapsed:.1f} s).")


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


#: GGUF architecture names transformers spells otherwise (as its `load_gguf_checkpoint`)
_ARCH_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
}
#: entries of transformers' GGUF mapping that are no architecture, or no causal LM
_NOT_CAUSAL_LM = frozenset({"general", "tokenizer", "t5", "umt5", "t5encoder"})


def transformers_architecture(arch: str) -> str | None:
    """transformers' name for the GGUF architecture `arch` if its GGUF loader reads it.

    A cheap check (no torch is imported): the GGUF mapping transformers de-quantizes with,
    less the encoder-decoder models a causal-LM trainer cannot use.
    """
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    name = _ARCH_ALIASES.get(arch, arch)
    if name in _NOT_CAUSAL_LM or name not in GGUF_CONFIG_MAPPING:
        return None
    return name


def _load_dense(gguf: Path, report: Reporter) -> tuple[Any, Any]:
    """The GGUF's tokenizer and its model, de-quantized to dense bf16 weights (offline)."""
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
    return tokenizer, model


def convert(gguf: Path, out: Path, report: Reporter) -> None:
    """Load the GGUF with transformers (offline) and save it as bf16 safetensors + tokenizer."""
    tokenizer, model = _load_dense(gguf, report)
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

    with _quiet_transformers_progress(), report.step("Writing safetensors and tokenizer", "saved"):
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        _finish_config(out / "config.json", eos_id)
        _finish_tokenizer_config(out / "tokenizer_config.json", tokenizer, model.config)
        _check_dense(out / "model.safetensors", "model.embed_tokens.weight")


def convert_for_training(gguf: Path, out: Path, report: Reporter) -> None:
    """Write any GGUF transformers reads as a Hugging Face folder a LoRA trainer loads.

    The tokenizer, its eos and its chat template stay as the GGUF has them (the GGUF
    engine, which serves the model, reads the same ones), so a model is trained on the
    tokens it is served with.

    Raises:
        ValueError, OSError, RuntimeError, ...: whatever transformers raises for a GGUF it
        cannot read or de-quantize (callers report it without the paths).
    """
    tokenizer, model = _load_dense(gguf, report)
    with _quiet_transformers_progress(), report.step("Writing safetensors and tokenizer", "saved"):
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        _finish_config(out / "config.json", None)
        _clean_tokenizer_config(out / "tokenizer_config.json", tokenizer)
        for shard in sorted(out.glob("*.safetensors")):
            _check_dense(shard, None)


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


def _finish_config(path: Path, eos_id: int | None) -> None:
    """Top-level ``rope_theta`` for mlx_lm (which ignores ``rope_parameters``); no quantizer.

    With `eos_id` (the embedded model) the rope base is required and the eos is set; without
    it (any architecture, some without rope) both are left as transformers wrote them.
    """
    config = json.loads(path.read_text(encoding="utf-8"))
    config.pop("quantization_config", None)
    rope = config.get("rope_parameters")
    if "rope_theta" not in config and isinstance(rope, dict) and "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if eos_id is not None:
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


def _clean_tokenizer_config(path: Path, tokenizer: Any) -> None:
    """Drop how transformers loaded the tokenizer; inline the chat template if there is one."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in _TOKENIZER_CONFIG_NOISE:
        data.pop(key, None)
    if tokenizer.chat_template:  # transformers 5 writes chat_template.jinja; older readers
        data["chat_template"] = tokenizer.chat_template
    write_json_atomic(path, data)


def _check_dense(path: Path, required: str | None) -> None:
    """Fail loudly if the checkpoint holds anything but bf16 tensors (e.g. packed blocks)."""
    with path.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    dtypes = {info["dtype"] for name, info in header.items() if name != "__metadata__"}
    if dtypes != {"BF16"}:
        raise RuntimeError(f"the weights written hold {sorted(dtypes)} tensors, not only BF16")
    if required is not None and required not in header:
        raise RuntimeError(f"{path} has no {required}")
