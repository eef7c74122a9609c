"""A lean reader of a GGUF file's metadata and tensor shapes.

`gguf.GGUFReader` builds a numpy view per element of every array, which takes ~13 s on
the embedded 135M model's 49k-token vocabulary alone (longer on larger vocabularies).
`pomar models info` and `import` need a few scalars and the tensor shapes, so this walks
the header once with `struct`, skipping arrays (strings by their lengths, numbers by their
size), in milliseconds. Little-endian GGUF v2/v3 only, as llama.cpp writes them.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from server.models.store import CatalogError

# GGUF value types -> struct format of the scalar (8 string, 9 array)
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_STRING, _ARRAY = 8, 9
_MAX_ARRAY_KEPT = 4096  # per-layer numbers are kept; vocabularies are skipped


class GGUFMeta(BaseModel):
    """Metadata scalars (and short numeric arrays) and tensor element counts of a GGUF."""

    metadata: dict[str, Any]
    tensors: dict[str, int]


def read_gguf_meta(path: Path) -> GGUFMeta:
    """Read a GGUF file's header without loading its tensors.

    Raises:
        CatalogError: the file is not a GGUF file this reader understands.
    """
    try:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf)
    except (OSError, ValueError, struct.error, IndexError, UnicodeDecodeError) as exc:
        raise CatalogError(f"{path} is not a readable GGUF file ({exc})") from exc


def _parse(buf: mmap.mmap) -> GGUFMeta:
    if buf[:4] != b"GGUF":
        raise ValueError("no GGUF magic")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} (only 2 and 3 are read)")
    pos = 24
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (kind,) = struct.unpack_from("<I", buf, pos)
        value, pos = _value(buf, pos + 4, kind)
        if value is not None:
            metadata[key] = value
    tensors: dict[str, int] = {}
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        pos += 4 + 8 * n_dims + 4 + 8  # dims, then the tensor type and data offset
        tensors[name] = math.prod(dims)
    return GGUFMeta(metadata=metadata, tensors=tensors)


def _string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (length,) = struct.unpack_from("<Q", buf, pos)
    start = pos + 8
    return bytes(buf[start : start + length]).decode("utf-8"), start + length


def _value(buf: mmap.mmap, pos: int, kind: int) -> tuple[Any, int]:
    """A value and the position after it; arrays too long to matter come back as None."""
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack_from(fmt, buf, pos)[0], pos + struct.calcsize(fmt)
    if kind == _STRING:
        return _string(buf, pos)
    if kind != _ARRAY:
        raise ValueError(f"unknown GGUF value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos += 12
    if item in _SCALARS:
        size = struct.calcsize("<" + _SCALARS[item])
        if count > _MAX_ARRAY_KEPT:
            return None, pos + size * count
        values = struct.unpack_from(f"<{count}{_SCALARS[item]}", buf, pos)
        return list(values), pos + size * count
    if item == _STRING:
        for _ in range(count):
            (length,) = struct.unpack_from("<Q", buf, pos)
            pos += 8 + length
        return None, pos
    for _ in range(count):  # arrays of arrays: walk them, keep nothing
        _, pos = _value(buf, pos, item)
    return None, pos
