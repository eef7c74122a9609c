"""llama.cpp's own quantizer (`llama_model_quantize`): the K-quants and every legacy type.

pomar's GGUF writer (`server.engine.gguf.from_hf`) writes f32, f16, q8_0 and q4_0 itself;
the K-quants (Q4_K_M and friends) are mixes — llama.cpp keeps some tensors (attention V,
half the FFN down projections, the output) at more bits — that only llama.cpp's quantizer
makes. It reads an f16 (or f32, bf16) GGUF and writes the quantized one, as the
``llama-quantize`` tool does.

K-quant blocks hold 256 values, so a tensor whose rows (its first dimension) are not a
multiple of 256 cannot take a K type: llama.cpp then falls back per tensor (in this
version Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0: legacy types in blocks
of 32) and logs each one, which `QuantResult` sums up. Small
models hit this (SmolLM2-135M's hidden size is 576 = 2.25 × 256): the file is still valid
and served, only larger than the type's name suggests.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: llama.cpp's types, with bits per weight: legacy types from their block layout
#: (Q4_0: 32 weights in 18 bytes = 4.5); K-quant mixes as llama.cpp's quantize README
#: measures them on Llama 2 7B (a mix keeps some tensors at more bits, so it has no
#: exact figure: it varies a little with the model's shape).
QUANT_BITS: dict[str, float] = {
    "Q2_K": 3.35,
    "Q3_K_S": 3.50,
    "Q3_K_M": 3.91,
    "Q3_K_L": 4.27,
    "Q4_0": 4.5,
    "Q4_1": 5.0,
    "Q4_K_S": 4.58,
    "Q4_K_M": 4.84,
    "Q5_0": 5.5,
    "Q5_1": 6.0,
    "Q5_K_S": 5.52,
    "Q5_K_M": 5.68,
    "Q6_K": 6.56,
    "Q8_0": 8.5,
}
QUANT_TYPES = tuple(QUANT_BITS)
#: what llama.cpp quantizes from (requantizing a quantized file loses quality: refused)
SOURCE_TYPES = frozenset({"F32", "F16", "BF16"})

_FALLBACKS = re.compile(r"(\d+) of (\d+) tensor\(s\) required fallback quantization")
_BPW = re.compile(r"quant size\s*=\s*([\d.]+) MiB \(([\d.]+) BPW\)")


@dataclass(frozen=True)
class QuantResult:
    """What llama.cpp reported of one quantization."""

    quant: str
    #: tensors whose rows did not fit the type's blocks, quantized to another type
    fallbacks: int
    #: tensors llama.cpp quantized (norms and other 1-D tensors stay f32, not counted)
    tensors: int
    #: the types the fallbacks got (``Q5_0``, ``Q8_0``...), as llama.cpp chose them
    fallback_types: tuple[str, ...]
    #: bits per weight of the file written, as llama.cpp measured it (None if unreported)
    bits_per_weight: float | None


def quant_type(name: str) -> str:
    """The llama.cpp type `name` stands for (any case: ``q4_k_m`` is ``Q4_K_M``).

    Raises:
        ValueError: not a type this quantizer offers (the message lists them).
    """
    canonical = name.strip().upper()
    if canonical not in QUANT_BITS:
        raise ValueError(
            f"unknown GGUF quantization '{name}': choose one of {', '.join(QUANT_TYPES)}"
        )
    return canonical


def quantize_gguf(src: Path, dst: Path, quant: str, threads: int = 0) -> QuantResult:
    """Quantize the f16/f32/bf16 GGUF `src` to `dst` as `quant`, with llama.cpp.

    Args:
        src: the GGUF to read (unquantized).
        dst: the GGUF to write.
        quant: a name from `QUANT_TYPES` (any case).
        threads: quantization threads; 0 is llama.cpp's default (every core).

    Raises:
        ValueError: an unknown type, or llama.cpp refused (its last log lines say why).
        ImportError: llama-cpp-python is not installed.
    """
    import llama_cpp

    canonical = quant_type(quant)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{canonical}")
    params.nthread = threads
    with _collected_log() as lines:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    text = "".join(lines)
    if status != 0:
        last = [line for line in text.splitlines() if line.strip()][-3:]
        raise ValueError(
            f"llama.cpp could not quantize to {canonical} (status {status}): " + " | ".join(last)
        )
    fallbacks = _FALLBACKS.search(text)
    bpw = _BPW.search(text)
    return QuantResult(
        quant=canonical,
        fallbacks=int(fallbacks.group(1)) if fallbacks else 0,
        tensors=len(re.findall(r"converting to", text)),
        fallback_types=tuple(
            sorted({t.upper() for t in re.findall(r"falling back to\s+(\w+)", text)})
        ),
        bits_per_weight=float(bpw.group(2)) if bpw else None,
    )


@contextlib.contextmanager
def _collected_log() -> Iterator[list[str]]:
    """llama.cpp's log, into a list while quantizing (it prints a line per tensor
    otherwise), then handed back to llama-cpp-python's own handler."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))  # `collect` lives until we reset it
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        # llama-cpp-python's handler prints whatever its logger lets through: errors only
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
