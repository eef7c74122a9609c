"""``pomar data check|prepare|convert``: the dataset lab from the command line.

Every threshold of :class:`~datalab.config.PipelineConfig` (and of the estimate's
:class:`~datalab.estimate.EstimateConfig`) is a flag, generated from the models so the two
never drift: ``min_answer_chars`` is ``--min-answer-chars``; booleans take ``--x/--no-x``;
``none`` clears an optional limit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console

from datalab.config import PipelineConfig
from datalab.estimate import EstimateConfig, ModelShape, load_model_shape

ResolveModel = Callable[[str], str]
#: bytes a model folder's weights take as the trainer holds them (pomar's own reckoning)
WeightsOf = Callable[[Path], int]
_EXPLICIT = {"goal", "estimate", "lora_targets"}


def _add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], group: str) -> None:
    g = parser.add_argument_group(group)
    for name, info in model.model_fields.items():
        if name in _EXPLICIT:
            continue
        flag = "--" + name.replace("_", "-")
        helptext = f"{info.description or name} (default: {info.default})"
        if info.annotation is bool:
            g.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=helptext)
        else:
            g.add_argument(flag, dest=name, metavar="V", help=helptext)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pomar data", description="Check and prepare datasets.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("check", "analyse a file and print a report; exit 1 if it cannot train"),
        ("prepare", "write train.jsonl, valid.jsonl and report.json"),
    ):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("file", type=Path)
        if name == "prepare":
            c.add_argument("--out", type=Path, required=True, help="output folder")
        c.add_argument("--valid", type=Path, help="your own validation file (no split then)")
        c.add_argument("--model", help="model id, local folder or Hugging Face id (tokens)")
        c.add_argument("--goal", choices=["style", "domain", "knowledge", "behaviour"])
        c.add_argument("--json", action="store_true", help="print the report as JSON")
        _add_model_flags(c, PipelineConfig, "thresholds")
        _add_model_flags(c, EstimateConfig, "estimate")
    v = sub.add_parser(
        "convert", help="convert between chat, Alpaca and text formats, or to preference pairs"
    )
    v.add_argument("file", type=Path)
    v.add_argument("--to", choices=["chat", "alpaca", "text", "preference"], required=True)
    v.add_argument("--template", choices=["chatml", "alpaca"], default="chatml")
    v.add_argument("--out", type=Path, help="output file (default: standard output)")
    return p


def _values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in model.model_fields:
        value = getattr(args, name, None)
        if value is None:
            continue
        out[name] = None if isinstance(value, str) and value.lower() in ("none", "null") else value
    return out


def _config(args: argparse.Namespace) -> PipelineConfig:
    fields = _values(args, PipelineConfig)
    fields["estimate"] = EstimateConfig.model_validate(_values(args, EstimateConfig))
    if args.goal:
        fields["goal"] = args.goal
    return PipelineConfig.model_validate(fields)


def _load_model(
    name: str, resolve_model: ResolveModel | None, weights_of: WeightsOf | None, err: Console
) -> tuple[Any, ModelShape | None]:
    from chatfmt.tokenizer import load_tokenizer

    path = resolve_model(name) if resolve_model is not None else name
    spec = load_model_shape(Path(path)) if Path(path).is_dir() else None
    if spec is not None and weights_of is not None:
        spec = spec.model_copy(update={"weights_bytes": weights_of(Path(path))})
    try:
        return load_tokenizer(path), spec
    except Exception as e:  # offline hub id, broken folder: report without token figures
        err.print(f"[yellow]warning:[/] could not load a tokenizer for {name!r}: {e}")
        return None, spec


def _analyse(
    args: argparse.Namespace, resolve_model: ResolveModel | None, weights_of: WeightsOf | None
) -> int:
    from datalab.pipeline import check, prepare
    from datalab.render import render_report

    out, err = Console(), Console(stderr=True)
    try:
        config = _config(args)
    except ValidationError as e:
        err.print(f"[red]error:[/] invalid option: {e}")
        return 2
    tokenizer, spec = None, None
    if args.model:
        try:
            tokenizer, spec = _load_model(args.model, resolve_model, weights_of, err)
        except Exception as e:  # resolve_model refuses unknown ids
            err.print(f"[red]error:[/] {e}")
            return 2
    for path in (args.file, args.valid):
        if path is not None and not path.is_file():
            err.print(f"[red]error:[/] no such file: {path}")
            return 2
    if args.command == "prepare":
        report = prepare(
            args.file, args.out, config, tokenizer, valid_src=args.valid, model_spec=spec
        )
    else:
        report = check(args.file, config, tokenizer, valid_src=args.valid, model_spec=spec)
    if args.json:
        sys.stdout.write(report.model_dump_json(indent=2) + "\n")
    else:
        render_report(report, out)
    return 0 if report.can_train else 1


def _convert(args: argparse.Namespace) -> int:
    from datalab.convert import convert_file
    from datalab.writers import atomic_writer

    err = Console(stderr=True)
    if not args.file.is_file():
        err.print(f"[red]error:[/] no such file: {args.file}")
        return 2
    if args.out is not None:
        with atomic_writer(args.out) as f:
            result = convert_file(args.file, args.to, f, args.template)
    else:
        try:
            result = convert_file(args.file, args.to, sys.stdout, args.template)
        except BrokenPipeError:  # `... | head`: the reader has all it wanted
            return 0
    for p in result.problems[:20]:
        err.print(f"[yellow]{p.severity}[/] {p.code}: {p.message}", highlight=False)
    errors = sum(v for k, v in result.problem_counts.items() if k not in ("empty_line",))
    err.print(f"converted {result.n_written:,} of {result.n_records:,} records to {args.to}")
    return 0 if result.n_written and not errors else 1


def main(
    argv: list[str],
    resolve_model: ResolveModel | None = None,
    weights_of: WeightsOf | None = None,
) -> int:
    """Run ``pomar data`` with ``argv`` (without the leading ``data``); returns the exit code.

    ``resolve_model`` maps the server's model ids to a local folder; without it ``--model``
    is a local path or a Hugging Face id. ``weights_of`` sizes a model's weights as the
    trainer holds them; without it, or with ``--precision`` given (``int4``: QLoRA's
    quantized base), the estimate takes parameters x precision. Exit
    codes: 0 ok, 1 the file cannot train (or some records could not convert), 2 usage
    error.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors
        return int(e.code or 0) if not isinstance(e.code, str) else 2
    if args.command == "convert":
        return _convert(args)
    return _analyse(args, resolve_model, weights_of)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
