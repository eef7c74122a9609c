"""The streaming pass over one JSONL file: per-record work, then dedupe, then keep.

Lines stream from the reader into :func:`datalab.record.process_line` — in this process, or
in chunks on a pool of worker processes for big files (the results come back in file order,
so both ways give identical output). This process keeps what needs every record: the
exact-duplicate index, the near-duplicate index (in batches of ``BATCH_RECORDS``), and small
per-record metadata. Kept records go straight to a spool file, so memory does not grow with
record size.
"""

from __future__ import annotations

from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from datalab.config import PipelineConfig
from datalab.dedupe import ClusterLog, MinHasher, NearDuplicateIndex
from datalab.diversity import DiversityStats, RecordFigures
from datalab.pii import PiiTally
from datalab.preference import PreferencePair
from datalab.problems import Code, ProblemLog
from datalab.reader import Line, ReadStats, iter_lines
from datalab.record import Outcome, Record, is_pair, process_chunk, process_line
from datalab.tokens import TokenCounter

BATCH_RECORDS = 2048
BATCH_BYTES = 1 << 20
CHUNK_LINES = 1000  # lines per task sent to a worker process
CHUNK_BYTES = 1 << 20
MAX_IN_FLIGHT = 4  # chunks queued per worker: bounds memory, keeps workers busy

Chunk = list[Line]
ChunkResult = tuple[list[tuple[Any, ...]], Counter[str]]


@dataclass
class Kept:
    """Metadata of the kept records, in file order (parallel sequences)."""

    lines: array[int] = field(default_factory=lambda: array("I"))
    groups: list[str] = field(default_factory=list)
    group_sources: Counter[str] = field(default_factory=Counter)
    categories: list[str | None] = field(default_factory=list)
    chars: array[int] = field(default_factory=lambda: array("I"))


@dataclass
class Dedupers:
    """The duplicate indexes one file is checked against."""

    exact: dict[bytes, int] = field(default_factory=dict)
    near: NearDuplicateIndex | None = None
    hasher: MinHasher | None = None
    clusters: ClusterLog = field(default_factory=ClusterLog)
    # For the caller's validation file: the training file's exact index, to drop overlaps.
    other_exact: dict[bytes, int] | None = None


def _chunks(lines: Iterable[Line]) -> Iterator[Chunk]:
    chunk: Chunk = []
    size = 0
    for item in lines:
        chunk.append(item)
        size += len(item[1]) if isinstance(item[1], bytes) else 0  # too long: not held
        if len(chunk) >= CHUNK_LINES or size >= CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class FileScan:
    """Pass 1 over one file. Counters are public attributes, read by the pipeline."""

    def __init__(
        self,
        config: PipelineConfig,
        log: ProblemLog,
        dedupers: Dedupers,
        pii: PiiTally,
        spool: IO[str] | None,
        diversity: DiversityStats | None = None,
        tokens: TokenCounter | None = None,
        pool: Executor | None = None,
    ) -> None:
        self.config = config
        self.log = log
        self.dd = dedupers
        self.pii = pii
        self.spool = spool
        self.diversity = diversity
        self.tokens = tokens
        self.pool = pool
        self.stats = ReadStats()
        self.kept = Kept()
        self.formats: Counter[str] = Counter()
        self.first_line: dict[str, int] = {}
        self.changes: Counter[str] = Counter()
        self.n_records = self.n_invalid = self.n_valid = 0
        self.n_changed = self.n_exact = self.n_near = self.n_overlap = 0
        self._pending: list[tuple[Outcome, Record | None]] = []
        self._pending_bytes = 0
        self._count: Callable[[str], int] | None = None
        if tokens is not None and config.max_answer_tokens is not None:
            self._count = tokens.count_text

    def run(self, path: Path) -> FileScan:
        """Stream ``path`` to the end."""
        lines = iter_lines(path, self.log, self.stats, self.config.max_line_bytes)
        for outcome, record in self._outcomes(lines):
            self._take(outcome, record)
        self._flush()
        self.n_records = self.stats.n_lines - self.stats.n_empty
        # Lines that never became a record (bad JSON, bad UTF-8, too long) are invalid too.
        self.n_invalid = self.n_records - self.n_valid
        return self

    def _outcomes(self, lines: Iterator[Line]) -> Iterator[tuple[Outcome, Record | None]]:
        in_flight: deque[tuple[Future[ChunkResult] | None, Chunk]] = deque()
        for chunk in _chunks(lines):
            in_flight.append((self._submit(chunk), chunk))
            if len(in_flight) >= MAX_IN_FLIGHT * 2 or self.pool is None:
                yield from self._collect(*in_flight.popleft())
        while in_flight:
            yield from self._collect(*in_flight.popleft())

    def _submit(self, chunk: Chunk) -> Future[ChunkResult] | None:
        if self.pool is None:
            return None
        try:
            return self.pool.submit(process_chunk, chunk, self.config, self.dd.hasher)
        except Exception:
            # The pool could not start or broke (e.g. spawn cannot re-import a __main__
            # read from stdin): carry on in this process rather than fail the run.
            self.pool = None
            return None

    def _collect(
        self, future: Future[ChunkResult] | None, chunk: Chunk
    ) -> Iterator[tuple[Outcome, Record | None]]:
        if future is None:
            for n, data in chunk:
                yield process_line(n, data, self.config, self.changes, self._count)
            return
        try:
            outcomes, changes = future.result()
        except Exception:
            # A worker that died (killed, out of memory) must not lose lines: redo them here.
            self.pool = None
            outcomes, changes = process_chunk(chunk, self.config, self.dd.hasher)
        self.changes.update(changes)
        make = Outcome._make
        for o in outcomes:
            yield make(o), None

    def _take(self, o: Outcome, record: Record | None) -> None:
        if o.fmt is not None:
            self.formats[o.fmt] += 1
            self.first_line.setdefault(o.fmt, o.line)
        self.n_changed += o.changed
        for line, code, fld, message, severity in o.problems:
            self.log.add(line, code, message, fld, severity)
        if not o.valid:
            return
        self.n_valid += 1
        if not self._new_exact(o.line, o.key):
            return
        self._pending.append((o, record))
        self._pending_bytes += len(o.norm_text)
        if len(self._pending) >= BATCH_RECORDS or self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _new_exact(self, line: int, key: bytes) -> bool:
        other = self.dd.other_exact
        if other is not None and key in other:
            self.n_overlap += 1
            self.log.add(
                line,
                Code.VALID_OVERLAPS_TRAIN,
                f"Line {line} repeats training line {other[key]}; dropped from validation.",
                severity="warning",
            )
            return False
        first = self.dd.exact.setdefault(key, line)
        if self.config.dedupe and first != line:
            self.n_exact += 1
            self.dd.clusters.add(first, line, "exact")
            return False
        return True

    def _flush(self) -> None:
        batch, self._pending, self._pending_bytes = self._pending, [], 0
        if not batch:
            return
        matches: list[int | None] = [None] * len(batch)
        # Preference pairs are only deduplicated exactly (see datalab.pairs).
        near = [i for i, (o, _) in enumerate(batch) if not is_pair(o)]
        if self.dd.near is not None and self.dd.hasher is not None and near:
            items = [batch[i][0] for i in near]
            if all(o.sig for o in items):  # computed by the worker processes
                sigs = np.frombuffer(b"".join([o.sig for o in items]), dtype=np.uint32)
                sigs = sigs.reshape(len(items), -1)
            else:
                sigs = self.dd.hasher.signatures([o.norm_text.encode("utf-8") for o in items])
            found = self.dd.near.add_batch([o.line for o in items], sigs)
            for i, match in zip(near, found, strict=True):
                matches[i] = match
        out: list[str] = []
        for (o, record), match in zip(batch, matches, strict=True):
            if match is not None:
                self.n_near += 1
                self.dd.clusters.add(match, o.line, "near")
            else:
                self._keep(o, record)
                out.append(o.json_line)
        if self.spool is not None:
            # One write per batch: a read/write text file resets its decoder on every write.
            self.spool.write("".join(out))

    def _keep(self, o: Outcome, record: Record | None) -> None:
        if o.pii:
            self.pii.add(o.line, list(o.pii))
        if self.diversity is not None:
            fig = RecordFigures(o.answer_chars, o.prompt_chars, o.first_word)
            self.diversity.add(fig, o.category, o.norm_text)
        if self.tokens is not None and record is not None:
            if isinstance(record, PreferencePair):
                n = self.tokens.add_pair(*record.records())
            else:
                n = self.tokens.add(record)
            limit = self.config.max_length
            if limit is not None and n > limit:
                what = " with its longer output" if isinstance(record, PreferencePair) else ""
                self.log.add(
                    o.line,
                    Code.OVER_MAX_LENGTH,
                    f"Line {o.line} is {n:,} tokens{what}, over max_length {limit:,}; "
                    "training will truncate it.",
                    severity="warning",
                )
        k = self.kept
        k.lines.append(o.line)
        k.groups.append(o.group)
        k.group_sources[o.group_source] += 1
        k.categories.append(o.category)
        k.chars.append(min(o.n_chars, 0xFFFFFFFF))
