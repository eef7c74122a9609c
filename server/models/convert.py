"""Convert a stored model to MLX (optionally quantized) or GGUF: `pomar models convert`.

The source is a Hugging Face folder in the store (the embedded model is imported first), or
an unquantized MLX one; a GGUF or an already quantized model does not convert again.

* ``mlx``: `mlx_lm.convert`, quantized with ``q_bits``/``group_size`` when asked. The
  unquantized weights keep the source's dtype unless ``dtype`` names another: converting is
  then lossless, and MLX computes in whatever dtype it is given (on a Mac bf16/fp16 halve
  the memory of fp32; on the CPU path fp32 is the fastest, so ask for it there).
* ``gguf``: `server.engine.gguf.from_hf` writes ``f16`` (default), ``f32`` (``dtype
  float32``), ``q8_0`` (``q_bits 8``) or ``q4_0`` (``q_bits 4``) itself, without llama.cpp.
  ``quant`` names any of llama.cpp's types (``Q4_K_M``, ``Q5_K_M``, ``Q6_K``, ``Q8_0``...,
  `server.engine.gguf.quantize.QUANT_TYPES`): an f16 GGUF is written first, in the new
  model's folder, and llama.cpp's own quantizer (`llama_model_quantize`) turns it into the
  type asked for; the f16 file is then removed. A stored GGUF in F32, F16 or BF16 is
  quantized as it is. The folder keeps the source's config, tokenizer, chat template and
  generation defaults beside the .gguf (no safetensors), so the GGUF engine takes the exact
  Hugging Face tokenizer and template.

The new model is built with `ModelCatalog.add`, so a failed conversion leaves nothing.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

from server.engine.gguf.quantize import QUANT_TYPES, SOURCE_TYPES, quant_type
from server.engine.gguf.to_hf import Reporter
from server.modelfiles import find_gguf, read_json_object
from server.models.info import read_safetensors_header
from server.models.store import (
    MANIFEST,
    CatalogEntry,
    CatalogError,
    ModelCatalog,
    validate_id,
)

TARGETS = ("mlx", "gguf")
#: the bit widths of MLX's affine quantization, and its group sizes
MLX_BITS = (2, 3, 4, 5, 6, 8)
MLX_GROUP_SIZES = (32, 64, 128)
#: GGUF quantization by bit width (blocks of 32 weights, so no group size)
GGUF_QUANT = {8: "q8_0", 4: "q4_0"}
GGUF_FLOAT = {"float32": "f32", "float16": "f16"}
DTYPES = ("float32", "float16", "bfloat16")
#: safetensors dtype -> mlx dtype name and the precision label the catalog shows
_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
_LABELS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
#: files that are weights (never copied beside a converted model's own)
_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".npz")


def convert_model(
    catalog: ModelCatalog,
    model_id: str,
    to: str,
    *,
    q_bits: int | None = None,
    group_size: int = 64,
    new_id: str | None = None,
    dtype: str | None = None,
    quant: str | None = None,
    report: Reporter | None = None,
) -> CatalogEntry:
    """Convert the stored model `model_id` to `to` (``mlx`` or ``gguf``) as a new model.

    Args:
        catalog: the store to read the source from and add the result to.
        model_id: a Hugging Face (or unquantized MLX) model in the store, or the embedded
            id; with `quant`, also a GGUF in F32, F16 or BF16.
        to: ``mlx`` or ``gguf``.
        q_bits: quantize: 2, 3, 4, 5, 6 or 8 bits for MLX; 8 (Q8_0) or 4 (Q4_0) for GGUF,
            written by pomar's own GGUF writer.
        group_size: MLX quantization group size (32, 64 or 128); GGUF has fixed blocks.
        new_id: the new model's id; default ``<id>-mlx[-q<bits>|-<dtype>]`` or
            ``<id>-gguf-<type>``.
        dtype: the unquantized weights' dtype (``float32``, ``float16``, ``bfloat16``);
            default: the source's (GGUF: f16).
        quant: a llama.cpp type for ``gguf`` (``Q4_K_M``, ...; any case), made by
            llama.cpp's quantizer.
        report: where the steps and llama.cpp's fallbacks are told (default: the log).

    Raises:
        CatalogError: bad options, an unknown or unconvertible source, an id taken, or a
            conversion that fails (the message says why).
    """
    quant = check_options(to, q_bits, group_size, dtype, quant)
    source = source_entry(catalog, model_id, quant)
    target_id = validate_id(new_id or default_id(model_id, to, q_bits, dtype, quant))
    precision = target_precision(source.path, to, q_bits, dtype, quant)

    def build(folder: Path) -> None:
        build_converted(
            source.path,
            folder,
            to,
            q_bits=q_bits,
            group_size=group_size,
            dtype=dtype,
            name=target_id,
            quant=quant,
            report=report,
        )

    try:
        return catalog.add(
            target_id,
            build,
            format="mlx" if to == "mlx" else "gguf",
            source="converted",
            origin=model_id,
            precision=precision,
        )
    except (ValueError, OSError) as exc:  # mlx-lm's and the GGUF writer's refusals
        raise CatalogError(f"cannot convert '{model_id}' to {to}: {exc}") from exc


def check_options(
    to: str,
    q_bits: int | None,
    group_size: int,
    dtype: str | None,
    quant: str | None = None,
) -> str | None:
    """Refuse a target, bit width, group size, dtype or quantization the converters do not
    offer; return `quant` as llama.cpp spells it (``q4_k_m`` -> ``Q4_K_M``)."""
    if to not in TARGETS:
        raise CatalogError(f"cannot convert to '{to}': choose one of {', '.join(TARGETS)}")
    if dtype is not None and dtype not in DTYPES:
        raise CatalogError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    if quant is not None:
        if to != "gguf":
            raise CatalogError(
                "--quant names a GGUF (llama.cpp) type: use --to gguf, or --q-bits for MLX"
            )
        if q_bits is not None or dtype is not None:
            raise CatalogError(
                "--quant is the whole GGUF type: give it alone, without --q-bits or --dtype"
            )
        try:
            quant = quant_type(quant)
        except ValueError as exc:
            raise CatalogError(str(exc)) from exc
    if to == "mlx":
        if q_bits is not None and q_bits not in MLX_BITS:
            raise CatalogError(f"MLX quantizes to {MLX_BITS} bits, not {q_bits}")
        if group_size not in MLX_GROUP_SIZES:
            raise CatalogError(f"MLX quantizes in groups of {MLX_GROUP_SIZES}, not {group_size}")
        return None
    if q_bits is not None and q_bits not in GGUF_QUANT:
        raise CatalogError(
            f"GGUF --q-bits is 8 (Q8_0) or 4 (Q4_0), not {q_bits}; --quant takes every "
            f"llama.cpp type ({', '.join(QUANT_TYPES)})"
        )
    if group_size != 64:
        raise CatalogError("GGUF quantizes in fixed blocks (32 or 256): --group-size is for MLX")
    if dtype is not None and (q_bits is not None or dtype not in GGUF_FLOAT):
        raise CatalogError("a GGUF is written as float32 or float16, or quantized (no dtype)")
    return quant


def source_entry(catalog: ModelCatalog, model_id: str, quant: str | None = None) -> CatalogEntry:
    """The stored model to convert: Hugging Face or unquantized MLX (embedded: imported);
    for a llama.cpp `quant`, also an unquantized (F32, F16, BF16) GGUF."""
    from server.models.embedded import EMBEDDED_MODEL_ID

    if model_id == EMBEDDED_MODEL_ID and catalog.get(model_id) is None:
        from server.errors import ModelLoadError
        from server.models.embedded import EmbeddedModelMissing
        from server.models.loading import resolve_model_path

        try:
            resolve_model_path(model_id, catalog.models_dir)  # imports it into the store
        except (ModelLoadError, EmbeddedModelMissing) as exc:
            raise CatalogError(str(exc)) from exc
    entry = catalog.require(model_id)
    if entry.format == "gguf":
        if quant is not None and entry.precision in SOURCE_TYPES:
            return entry
        hint = (
            f"llama.cpp quantizes an F32, F16 or BF16 GGUF, not a {entry.precision} one"
            if quant is not None
            else "a GGUF converts only to another GGUF type, with --quant"
        )
        raise CatalogError(
            f"'{model_id}' is a GGUF model: {hint}; convert the Hugging Face model it came "
            "from instead"
        )
    if is_quantized(entry.path):
        raise CatalogError(
            f"'{model_id}' is already quantized ({entry.precision}): convert its unquantized "
            "original instead"
        )
    if not any(entry.path.glob("*.safetensors")):
        raise CatalogError(f"'{model_id}' has no safetensors weights in {entry.path}")
    return entry


def default_id(
    model_id: str, to: str, q_bits: int | None, dtype: str | None, quant: str | None = None
) -> str:
    """``<id>-mlx``, ``<id>-mlx-q4``, ``<id>-mlx-fp16`` (a dtype asked for), ``<id>-gguf-f16``,
    ``<id>-gguf-q4_k_m``…"""
    if to == "mlx":
        if q_bits is not None:
            return f"{model_id}-mlx-q{q_bits}"
        return f"{model_id}-mlx" + (f"-{_LABELS[dtype]}" if dtype else "")
    return f"{model_id}-gguf-{quant.lower() if quant else gguf_type(q_bits, dtype)}"


def gguf_type(q_bits: int | None, dtype: str | None) -> str:
    """The `convert_hf_to_gguf` output type for the options (f16 unless told otherwise)."""
    if q_bits is not None:
        return GGUF_QUANT[q_bits]
    return GGUF_FLOAT[dtype or "float16"]


def target_precision(
    src: Path, to: str, q_bits: int | None, dtype: str | None, quant: str | None = None
) -> str:
    """The catalog's precision label of the result: ``q8``, ``bf16``, ``Q8_0``, ``F16``,
    ``Q4_K_M``…"""
    if to == "gguf":
        return quant or gguf_type(q_bits, dtype).upper()
    if to == "mlx" and q_bits is not None:
        return f"q{q_bits}"
    return _LABELS[dtype] if dtype else dense_precision(src)


def dense_precision(folder: Path) -> str:
    """The precision label of a folder's unquantized weights: ``fp32``, ``bf16`` or ``fp16``."""
    return _LABELS[weights_dtype(folder)]


def build_converted(
    src: Path,
    dst: Path,
    to: str,
    *,
    q_bits: int | None,
    group_size: int,
    dtype: str | None,
    name: str,
    quant: str | None = None,
    report: Reporter | None = None,
) -> None:
    """Write the model folder `src` into the existing empty folder `dst` as `to`.

    `name` (a model id) names the GGUF file. Options are checked by `check_options`.
    """
    if to == "mlx":
        _build_mlx(src, dst, q_bits=q_bits, group_size=group_size, dtype=dtype)
        return
    from server.engine.gguf.from_hf import convert_hf_to_gguf

    copy_side_files(src, dst)
    out = dst / (name.rsplit("/", 1)[-1].replace(":", "_") + ".gguf")
    if quant is None:
        convert_hf_to_gguf(src, out, gguf_type(q_bits, dtype))
        return
    report = report or Reporter(False)
    gguf = None if any(src.glob("*.safetensors")) else find_gguf(src)
    if gguf is None:
        # llama.cpp quantizes from a GGUF: the f16 one is a step, removed once read
        gguf = dst / ".f16-for-quantizing.gguf"
        with report.step("Writing an f16 GGUF for llama.cpp's quantizer", "f16 GGUF written"):
            convert_hf_to_gguf(src, gguf, "f16")
    try:
        _quantize(gguf, out, quant, report)
    finally:
        if gguf.parent == dst:
            gguf.unlink(missing_ok=True)


def _quantize(src: Path, out: Path, quant: str, report: Reporter) -> None:
    """llama.cpp's quantizer, its fallbacks told; no llama-cpp-python is a clear error."""
    from server.engine.gguf.quantize import quantize_gguf

    with report.step(f"Quantizing to {quant} with llama.cpp", f"quantized to {quant}"):
        try:
            result = quantize_gguf(src, out, quant)
        except ImportError as exc:
            raise CatalogError(
                "--quant needs llama.cpp: install pomar with its gguf extra "
                "(pip install -e '.[gguf]'; ./scripts/serve does), or use --q-bits 8|4"
            ) from exc
    if result.fallbacks:
        bits = f", {result.bits_per_weight:.2f} bits per weight" if result.bits_per_weight else ""
        report.info(
            f"note: {result.fallbacks} of {result.tensors} tensors have rows that are not a "
            "multiple of their type's block (256 values for the K types): llama.cpp gave "
            f"them {', '.join(result.fallback_types) or 'other types'} instead, so the file "
            f"is larger than {quant} would be ({human_bytes(out.stat().st_size)}{bits})"
        )


def human_bytes(n: int) -> str:
    """Bytes as `100.6 MiB`."""
    return f"{n / 2**20:.1f} MiB"


def _build_mlx(
    src: Path, dst: Path, *, q_bits: int | None, group_size: int, dtype: str | None
) -> None:
    from mlx_lm import convert

    # mlx-lm refuses an existing destination: convert into a fresh subfolder, then move up
    work = dst / ".mlx-convert"
    convert(
        hf_path=str(src),
        mlx_path=str(work),
        quantize=q_bits is not None,
        q_bits=q_bits,
        q_group_size=group_size,
        # always explicit: mlx-lm would otherwise cast to a config's stale torch_dtype
        dtype=dtype or weights_dtype(src),
    )
    for item in work.iterdir():
        item.rename(dst / item.name)
    work.rmdir()
    copy_side_files(src, dst, overwrite=False)  # a chat_template.jinja mlx-lm left behind


def copy_side_files(src: Path, dst: Path, *, overwrite: bool = True) -> None:
    """Copy every file of `src` but its weights, README and the store's own markers.

    That is the config, tokenizer files, chat template and generation defaults, whatever
    the tokenizer's file names are.
    """
    for path in sorted(Path(src).iterdir()):
        if (
            not path.is_file()
            or path.name.startswith(".")
            or path.name in (MANIFEST, "README.md")
            or path.name.endswith((*_WEIGHT_SUFFIXES, ".index.json"))
        ):
            continue
        if overwrite or not (dst / path.name).exists():
            shutil.copy2(path, dst / path.name)


def is_quantized(folder: Path) -> bool:
    """Whether the folder's config.json declares (MLX or HF) quantized weights."""
    config = read_json_object(Path(folder) / "config.json")
    return bool(config.get("quantization") or config.get("quantization_config"))


def weights_dtype(folder: Path) -> str:
    """The dtype (``float32``, ``bfloat16``…) of most floating tensors in the safetensors.

    Read from the files' headers (nothing is loaded); ``float32`` where none is found.
    """
    counts: Counter[str] = Counter()
    for path in sorted(Path(folder).glob("*.safetensors")):
        for key, info in read_safetensors_header(path).items():
            if key != "__metadata__" and info.get("dtype") in _DTYPE_NAMES:
                counts[_DTYPE_NAMES[info["dtype"]]] += 1
    return counts.most_common(1)[0][0] if counts else "float32"
