"""The datalab pipeline every fine-tuning job runs before training.

:func:`prepare` streams a JSONL file once (detect → convert → clean → validate → dedupe,
spooling kept records to a temporary file), then balances and splits using only per-record
metadata, and finally copies the spooled records into ``train.jsonl`` / ``valid.jsonl`` and
writes ``report.json`` — each atomically. :func:`check` is the same analysis writing nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO

import numpy as np

from datalab.balance import BalanceSection, balance
from datalab.config import PipelineConfig
from datalab.dedupe import MinHasher, NearDuplicateIndex
from datalab.diversity import DiversityStats
from datalab.estimate import Estimate, ModelShape, estimate_training
from datalab.guidance import SizeGuidance, size_guidance
from datalab.pairs import TrainingMethod, method_blocking, preference_section, resolve_method
from datalab.pii import PiiSection, PiiTally
from datalab.problems import Code, ProblemLog
from datalab.report import CleaningSection, DedupeSection, FormatSection, Report, ValidFileSection
from datalab.scan import Dedupers, FileScan
from datalab.split import SplitSection, leaked_groups, split_groups
from datalab.tokens import (
    TokenCounter,
    TokenizerLike,
    TokenSection,
    model_context,
    recommend_max_length,
)
from datalab.writers import atomic_writer

__all__ = ["PipelineConfig", "Report", "TokenizerLike", "check", "prepare"]

TRAIN_FILE, VALID_FILE, REPORT_FILE = "train.jsonl", "valid.jsonl", "report.json"


def prepare(
    src: Path,
    out_dir: Path,
    config: PipelineConfig | None = None,
    tokenizer: TokenizerLike | None = None,
    *,
    valid_src: Path | None = None,
    model_spec: ModelShape | None = None,
) -> Report:
    """Analyse ``src`` and write ``train.jsonl``, ``valid.jsonl`` and ``report.json``.

    With ``valid_src`` no split is made: that file is cleaned and validated as the
    validation set (records identical to a training record are dropped from it). With a
    ``tokenizer`` the report has token statistics; with a ``model_spec`` the estimate has
    memory figures. Never raises on bad content; raises ``OSError`` if ``src`` is unreadable.
    """
    return _run(
        Path(src), Path(out_dir), config or PipelineConfig(), tokenizer, valid_src, model_spec
    )


def check(
    src: Path,
    config: PipelineConfig | None = None,
    tokenizer: TokenizerLike | None = None,
    *,
    valid_src: Path | None = None,
    model_spec: ModelShape | None = None,
) -> Report:
    """The same analysis as :func:`prepare`, writing nothing."""
    return _run(Path(src), None, config or PipelineConfig(), tokenizer, valid_src, model_spec)


def _dedupers(config: PipelineConfig, other: dict[bytes, int] | None = None) -> Dedupers:
    if not config.near_dedupe:
        return Dedupers(other_exact=other)
    return Dedupers(
        near=NearDuplicateIndex(config.near_dup_threshold, config.minhash_perm, config.seed),
        hasher=MinHasher(config.minhash_perm, config.shingle_words),
        other_exact=other,
    )


def _spool(stack: ExitStack, out_dir: Path | None) -> IO[str] | None:
    if out_dir is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    return stack.enter_context(tempfile.TemporaryFile("w+", encoding="utf-8", dir=out_dir))


AUTO_POOL_BYTES = 16 * 1024 * 1024  # below this, starting worker processes costs more than it saves


def _pool(
    stack: ExitStack, config: PipelineConfig, src: Path, in_process: bool
) -> tuple[Executor | None, int]:
    """A pool of worker processes for the per-record work when it pays off, and its size."""
    if in_process or config.workers == 1:
        return None, 0
    n = config.workers
    if n is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        if (cpus or 1) < 2 or src.stat().st_size < AUTO_POOL_BYTES:
            return None, 0
        n = min(cpus or 1, 4)
    # "spawn", not fork: the caller may be a server with threads and accelerator state,
    # which a forked child must not inherit.
    ctx = multiprocessing.get_context("spawn")
    return stack.enter_context(ProcessPoolExecutor(max_workers=n, mp_context=ctx)), n


def _run(
    src: Path,
    out_dir: Path | None,
    config: PipelineConfig,
    tokenizer: TokenizerLike | None,
    valid_src: Path | None,
    spec: ModelShape | None,
) -> Report:
    t0 = time.perf_counter()
    log = ProblemLog(config.max_problems)
    pii = PiiTally(config.redact_pii)
    counter = TokenCounter(tokenizer) if tokenizer is not None else None
    with ExitStack() as stack:
        # A tokenizer stays in this process (it would have to be pickled to every worker).
        pool, n_workers = _pool(stack, config, src, in_process=counter is not None)
        dd = _dedupers(config)
        diversity = DiversityStats(config.seed)
        spool = _spool(stack, out_dir)
        scan = FileScan(config, log, dd, pii, spool, diversity, counter, pool).run(src)
        vscan = None
        if valid_src is not None:
            vlog = ProblemLog(config.max_problems, file="valid")
            vdd = _dedupers(config, other=dd.exact)
            vspool = _spool(stack, out_dir)
            vscan = FileScan(config, vlog, vdd, pii, vspool, pool=pool).run(Path(valid_src))
        kept = scan.kept
        keep, bal = balance(kept.categories, config.balance_field, config.balance_cap, config.seed)
        idx = [i for i, k in enumerate(keep) if k]
        groups = [kept.groups[i] for i in idx]
        note = None
        if vscan is None:
            is_valid, note = split_groups(
                groups, config.valid_fraction, config.seed, config.min_examples
            )
        else:
            is_valid = [False] * len(idx)
        assign = np.full(len(keep), -1, dtype=np.int8)  # -1 dropped, 0 train, 1 valid
        assign[np.asarray(idx, dtype=np.int64)] = np.asarray(is_valid, dtype=np.int8)
        n_valid_split = len(vscan.kept.lines) if vscan else int(sum(is_valid))
        n_train = len(idx) - (0 if vscan else n_valid_split)
        if out_dir is not None:
            _write_sets(out_dir, scan, vscan, assign)
    tokens = None
    if counter is not None:
        ctx = model_context(tokenizer) or (spec.context_length if spec else None)
        tokens = counter.section(keep, config.max_length, ctx, config.max_length_cap)
    method = resolve_method(config.method, scan.formats)
    pairs = preference_section(kept.groups, counter, keep) if method == "dpo" else None
    split = SplitSection(
        from_file=vscan is not None,
        group_sources=dict(kept.group_sources),
        n_groups=len(set(groups)),
        n_train=n_train,
        n_valid=n_valid_split,
        valid_fraction=config.valid_fraction,
        seed=config.seed,
        leaked_groups=leaked_groups(groups, is_valid),
        note=note,
    )
    estimate = _estimate(config, spec, scan, counter, tokens, assign, n_train, method)
    report = _assemble(config, src, valid_src, scan, vscan, bal, tokens, split, estimate, pii)
    report.method, report.preference = method, pairs
    report.duration_s = round(time.perf_counter() - t0, 3)
    # A pool that broke falls back to this process (see FileScan), which reports 0 here.
    report.workers = n_workers if scan.pool is not None else 0
    if out_dir is not None:
        report.outputs = {
            "train": str(out_dir / TRAIN_FILE),
            "valid": str(out_dir / VALID_FILE),
            "report": str(out_dir / REPORT_FILE),
        }
        with atomic_writer(out_dir / REPORT_FILE) as f:
            f.write(report.model_dump_json(indent=2))
    return report


def _write_sets(out_dir: Path, scan: FileScan, vscan: FileScan | None, assign: np.ndarray) -> None:
    """Pass 2: copy spooled lines to the train and validation files."""
    assert scan.spool is not None
    with atomic_writer(out_dir / TRAIN_FILE) as ft, atomic_writer(out_dir / VALID_FILE) as fv:
        scan.spool.seek(0)
        targets = (ft, fv)
        for a, line in zip(assign.tolist(), scan.spool, strict=True):
            if a >= 0:
                targets[a].write(line)
        if vscan is not None and vscan.spool is not None:
            vscan.spool.seek(0)
            for line in vscan.spool:
                fv.write(line)


def _estimate(
    config: PipelineConfig,
    spec: ModelShape | None,
    scan: FileScan,
    counter: TokenCounter | None,
    tokens: TokenSection | None,
    assign: np.ndarray,
    n_train: int,
    method: TrainingMethod,
) -> Estimate | None:
    if n_train == 0:
        return None
    train = assign == 0
    # A DPO pair trains on two sequences, the prompt with each output (counted: the longer).
    k = 2 if method == "dpo" else 1
    if counter is not None and tokens is not None:
        per_epoch = k * int(np.asarray(counter.counts, dtype=np.int64)[train].sum())
        seq_len = tokens.max_length
    else:
        # No tokenizer: ~4 characters per token, the usual figure for English BPE vocabularies.
        approx = np.asarray(scan.kept.chars, dtype=np.int64)[train] // 4
        per_epoch = k * int(approx.sum())
        p95 = float(np.percentile(approx, 95))
        context = spec.context_length if spec else None
        seq_len = config.max_length or recommend_max_length(p95, context, config.max_length_cap)
    return estimate_training(
        n_train, per_epoch, config.estimate, spec, seq_len, counter is None, sequences_per_example=k
    )


def _blocking(
    config: PipelineConfig, scan: FileScan, vscan: FileScan | None, split: SplitSection
) -> list[str]:
    """Why the file cannot train (empty when it can); logs the whole-file problems."""
    log, blocking = scan.log, []
    # Preference pairs and conversations never train together, whatever allow_mixed_formats.
    mismatch = method_blocking(config.method, scan.formats, scan.first_line, log)
    if vscan is not None:
        method = resolve_method(config.method, scan.formats)
        vmismatch = method_blocking(method, vscan.formats, vscan.first_line, vscan.log)
        blocking += [f"validation file: {vmismatch}"] if vmismatch else []
    if mismatch is not None:
        blocking.insert(0, mismatch)
    elif len(scan.formats) > 1:
        primary = scan.formats.most_common(1)[0][0]
        first = min(v for k, v in scan.first_line.items() if k != primary)
        mix = ", ".join(
            f"{k} {v:,} (first at line {scan.first_line[k]})" for k, v in scan.formats.most_common()
        )
        if config.allow_mixed_formats:
            log.add(
                first, Code.MIXED_FORMATS, f"The file mixes formats: {mix}.", severity="warning"
            )
        else:
            log.add(
                first,
                Code.MIXED_FORMATS,
                f"The file mixes formats: {mix}. Use one format, or allow mixed formats.",
            )
            blocking.append(f"the file mixes formats ({mix})")
    if scan.stats.n_bytes == 0:
        blocking.append("the file is empty")
    if split.n_train < config.min_examples:
        reason = f"fewer than {config.min_examples} valid examples (found {split.n_train})"
        log.add(0, Code.TOO_FEW_EXAMPLES, reason[0].upper() + reason[1:] + ".")
        blocking.append(reason)
    if config.strict and scan.n_invalid:
        blocking.append(f"{scan.n_invalid:,} invalid record(s) and strict mode is on")
    return blocking


def _warnings(
    config: PipelineConfig,
    split: SplitSection,
    tokens: TokenSection | None,
    pii: PiiSection,
    estimate: Estimate | None,
    guidance: SizeGuidance | None,
) -> list[str]:
    out = []
    if guidance is not None and guidance.level == "below_minimum":
        out.append(guidance.message)
    if split.n_train > config.laptop_max_examples:
        out.append(
            f"{split.n_train:,} examples is over ~{config.laptop_max_examples:,}: training on a "
            "laptop will be slow; consider a sample or a stronger machine"
        )
    if tokens is not None and tokens.n_over_max_length:
        out.append(
            f"{tokens.n_over_max_length:,} conversation(s) exceed max_length {tokens.max_length} "
            "tokens and will be truncated"
        )
    if pii.records_with_pii and not pii.redacted:
        found = ", ".join(f"{k} {v}" for k, v in pii.counts.items() if v)
        out.append(f"{pii.records_with_pii:,} record(s) contain personal data ({found})")
    if estimate is not None and estimate.memory is not None and not estimate.memory.fits:
        out.append(estimate.message)
    if split.note:
        out.append(split.note)
    return out


def _assemble(
    config: PipelineConfig,
    src: Path,
    valid_src: Path | None,
    scan: FileScan,
    vscan: FileScan | None,
    bal: BalanceSection,
    tokens: TokenSection | None,
    split: SplitSection,
    estimate: Estimate | None,
    pii: PiiTally,
) -> Report:
    blocking = _blocking(config, scan, vscan, split)
    assert scan.diversity is not None
    diversity = scan.diversity.section(scan.n_exact + scan.n_near, scan.n_valid)
    guidance = None
    if config.goal is not None:
        guidance = size_guidance(split.n_train, config.goal, config.laptop_max_examples)
    pii_section = pii.section()
    warnings = diversity.warnings + _warnings(
        config, split, tokens, pii_section, estimate, guidance
    )
    valid_file = None
    problems = list(scan.log.problems)
    if vscan is not None:
        problems += vscan.log.problems
        valid_file = ValidFileSection(
            n_records=vscan.n_records,
            n_valid=vscan.n_valid,
            n_kept=len(vscan.kept.lines),
            n_overlap_dropped=vscan.n_overlap,
            problem_counts=dict(vscan.log.counts),
        )
        if not vscan.kept.lines:
            warnings.append("the validation file has no usable record")
    # File-level findings are logged last; the report lists everything in file order.
    problems.sort(key=lambda p: (p.file != "train", p.line))
    dd = scan.dd
    has_categories = any(c is not None for c in scan.kept.categories)
    return Report(
        source=str(src),
        valid_source=str(valid_src) if valid_src else None,
        duration_s=0.0,
        can_train=not blocking,
        blocking_reasons=blocking,
        warnings=warnings,
        n_lines=scan.stats.n_lines,
        n_records=scan.n_records,
        n_invalid=scan.n_invalid,
        n_valid=scan.n_valid,
        n_duplicates=scan.n_exact + scan.n_near,
        n_balanced_out=bal.dropped,
        n_kept=len(scan.kept.lines) - bal.dropped,
        n_train=split.n_train,
        n_valid_split=split.n_valid,
        problem_counts=dict(scan.log.counts.most_common()),
        problems=problems,
        problems_truncated=scan.log.truncated or (vscan is not None and vscan.log.truncated),
        formats=FormatSection(
            counts=dict(scan.formats.most_common()),
            first_line=scan.first_line,
            mixed=len(scan.formats) > 1,
            primary=scan.formats.most_common(1)[0][0] if scan.formats else None,
        ),
        cleaning=CleaningSection(records_changed=scan.n_changed, changes=dict(scan.changes)),
        dedupe=DedupeSection(
            exact_enabled=config.dedupe,
            near_enabled=config.near_dedupe,
            n_exact=scan.n_exact,
            n_near=scan.n_near,
            threshold=config.near_dup_threshold,
            num_perm=config.minhash_perm,
            bands=dd.near.bands if dd.near else None,
            rows=dd.near.rows if dd.near else None,
            n_clusters=len(dd.clusters),
            clusters=dd.clusters.top(),
        ),
        balance=bal if (config.balance_cap is not None or has_categories) else None,
        diversity=diversity,
        tokens=tokens,
        pii=pii_section,
        guidance=guidance,
        split=split,
        estimate=estimate,
        valid_file=valid_file,
        config=config,
    )
