"""A readable rendering of a :class:`~datalab.report.Report` with rich tables."""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from datalab.report import Report

MAX_PROBLEM_ROWS = 12
MAX_LINE_ROWS = 20


def _table(title: str, *columns: str) -> Table:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i else "left")
    return t


def _overview(r: Report) -> Table:
    t = _table("Overview", "", "records")
    rows = [
        ("lines read", r.n_lines),
        ("records (non-empty lines)", r.n_records),
        ("valid", r.n_valid),
        ("invalid (dropped)", r.n_invalid),
        ("exact duplicates (dropped)", r.dedupe.n_exact),
        (f"near duplicates ≥ {r.dedupe.threshold} (dropped)", r.dedupe.n_near),
        ("over the category cap (dropped)", r.n_balanced_out),
        ("train", r.n_train),
        ("validation", r.n_valid_split),
    ]
    for name, n in rows:
        t.add_row(name, f"{n:,}")
    return t


def _problems(r: Report) -> Table:
    t = _table("Problems", "code", "count", "severity", "first lines", "example")
    t.columns[4].justify = "left"
    for code, n in list(r.problem_counts.items())[:MAX_PROBLEM_ROWS]:
        found = [p for p in r.problems if p.code == code and p.file == "train"]
        lines = ", ".join(str(p.line) for p in found[:5])
        severity = found[0].severity if found else ""
        t.add_row(code, f"{n:,}", severity, lines, found[0].message if found else "")
    return t


def _by_line(r: Report) -> Table:
    t = _table("Problems by line", "line", "code", "message")
    t.columns[0].justify = "right"
    t.columns[2].justify = "left"
    for p in r.problems[:MAX_LINE_ROWS]:
        where = str(p.line) if p.file == "train" else f"valid {p.line}"
        t.add_row(where, p.code, p.message)
    return t


def _pairs(r: Report) -> Table:
    pr = r.preference
    assert pr is not None
    t = _table("Preference pairs (DPO)", "", "")
    t.add_row("pairs / distinct prompts", f"{pr.n_pairs:,} / {pr.n_prompts:,}")
    t.add_row("most pairs for one prompt", f"{pr.max_pairs_per_prompt:,}")
    if pr.tokens is not None:
        k = pr.tokens
        for name, st in (
            ("prompt", k.prompt),
            ("preferred output", k.preferred),
            ("non-preferred output", k.non_preferred),
            ("prompt + longer output", k.longest),
        ):
            t.add_row(
                f"{name} tokens min / median / p95 / max",
                f"{st.min} / {st.median:.0f} / {st.p95:.0f} / {st.max:,}",
            )
        t.add_row("tokens per pair in a step (2 x longer)", f"{k.step_tokens_mean:,.0f} mean")
    return t


def _diversity(r: Report) -> Table:
    d = r.diversity
    t = _table("Diversity", "", "")
    t.add_row(
        "answers short / medium / long", " / ".join(f"{v:,}" for v in d.length_buckets.values())
    )
    if d.answer_chars:
        a = d.answer_chars
        t.add_row("answer chars median / p95 / max", f"{a.median:.0f} / {a.p95:.0f} / {a.max:,}")
    if d.top_first_words:
        words = ", ".join(f"{w!r} {s:.0%}" for w, s in list(d.top_first_words.items())[:3])
        t.add_row("most common opening words", words)
    t.add_row("distinct words / type-token ratio", f"{d.distinct_words:,} / {d.type_token_ratio}")
    if d.categories:
        cats = ", ".join(f"{k} {v:,}" for k, v in list(d.categories.items())[:6])
        t.add_row("categories", cats)
    t.add_row("duplicates ratio", f"{d.duplicates_ratio:.1%}")
    return t


def _extras(r: Report) -> Table:
    t = _table("Tokens, personal data, size, estimate", "", "")
    if r.tokens:
        k = r.tokens
        t.add_row(
            "tokens min / median / mean / p95 / max",
            f"{k.min} / {k.median:.0f} / {k.mean:.0f} / {k.p95:.0f} / {k.max:,}",
        )
        t.add_row("recommended max_length", str(k.recommended_max_length))
        t.add_row(f"over max_length {k.max_length}", f"{k.n_over_max_length:,}")
    found = ", ".join(f"{k} {v}" for k, v in r.pii.counts.items() if v) or "none"
    t.add_row("personal data" + (" (redacted)" if r.pii.redacted else ""), found)
    if r.guidance:
        t.add_row(f"size for a {r.guidance.goal} goal", r.guidance.message)
    if r.estimate:
        t.add_row("estimate", r.estimate.message)
    if r.balance and r.balance.cap:
        t.add_row(f"balance by {r.balance.field} (cap {r.balance.cap})", f"-{r.balance.dropped:,}")
    t.add_row("split", f"{r.split.n_groups:,} groups; leaked groups: {r.split.leaked_groups}")
    return t


def render_report(report: Report, console: Console) -> None:
    """Print the report as a verdict panel and a few tables."""
    if report.can_train:
        verdict = "[bold green]Ready to train[/]"
    else:
        verdict = "[bold red]Cannot train[/]\n" + "\n".join(
            f"• {reason}" for reason in report.blocking_reasons
        )
    console.print(Panel(verdict, title=report.source, expand=False))
    fmts = ", ".join(f"{k} {v:,}" for k, v in report.formats.counts.items()) or "none"
    kind = "preference pairs (DPO)" if report.method == "dpo" else "supervised"
    console.print(f"Format: {fmts}; method: {kind}", highlight=False)
    console.print(_overview(report))
    if report.problem_counts:
        console.print(_problems(report))
        if report.problems:
            console.print(_by_line(report))
    if report.preference is not None:
        console.print(_pairs(report))
    if report.dedupe.clusters:
        c = _table("Largest duplicate clusters", "kept line", "size", "kind", "duplicate lines")
        for cl in report.dedupe.clusters[:5]:
            lines = ", ".join(map(str, cl.duplicate_lines[:8]))
            c.add_row(str(cl.kept_line), str(cl.size), cl.kind, lines)
        console.print(c)
    console.print(_diversity(report))
    console.print(_extras(report))
    for w in report.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(report.summary(), style="dim")
