"""`pomar models`: list, pull, import, convert, rm, info and export stored models.

Errors a user can act on (`CatalogError`, `ModelLoadError`) print one line to stderr and
exit 1, never a traceback. `list --json` and `info --json` print JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ByteSize, ValidationError

from server.errors import ModelLoadError
from server.models.embedded import EMBEDDED_MODEL_ID, EmbeddedModelMissing, ensure_embedded_model
from server.models.store import CatalogEntry, CatalogError, ModelCatalog
from server.settings import Settings

_STATUS_TIMEOUT = 0.5  # seconds: `list` must not hang when no server runs


def add_parser(sub: Any) -> None:
    """Add the `models` subcommand and its own subcommands to `pomar`'s parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", help="models, files and jobs (POMAR_HOME, default ~/.pomar)")
    p = sub.add_parser(
        "models", help="the model store: list | pull | import | convert | set | rm | info | export"
    )
    cmds = p.add_subparsers(dest="models_command", required=True, metavar="COMMAND")

    c = cmds.add_parser("list", parents=[common], help="stored models (and which are loaded)")
    c.add_argument("--json", action="store_true", help="print JSON")

    c = cmds.add_parser("pull", parents=[common], help="download a Hugging Face hub repo")
    c.add_argument("repo_id", help="hub repo id, say HuggingFaceTB/SmolLM2-135M-Instruct")
    c.add_argument("--id", dest="new_id", help="store it under this id (default: the repo id)")
    c.add_argument(
        "--include",
        action="append",
        metavar="GLOB",
        help="only files matching (repeatable), say '*Q4_K_M.gguf' for one GGUF of many",
    )

    c = cmds.add_parser("import", parents=[common], help="copy a HF or MLX folder or .gguf file")
    c.add_argument("path", type=Path, help="model folder or .gguf file")
    c.add_argument("--id", dest="new_id", help="store it under this id (default: its name)")

    c = cmds.add_parser("convert", parents=[common], help="convert a stored model to MLX or GGUF")
    c.add_argument("model_id")
    c.add_argument("--to", required=True, choices=["mlx", "gguf"])
    _quant_args(c)
    c.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="weights of an unquantized conversion (default: the source's; float32 is "
        "fastest for MLX on a CPU)",
    )

    c = cmds.add_parser(
        "set", parents=[common], help="a model's own settings, over the server's (KEY=VALUE)"
    )
    c.add_argument("model_id")
    c.add_argument(
        "pairs",
        nargs="*",
        metavar="KEY=VALUE",
        help="backend, max_batch_size, prompt_cache_entries, prompt_cache_mb or context; "
        "KEY=default (or KEY=) goes back to the server's setting; none: show them",
    )

    c = cmds.add_parser("rm", parents=[common], help="delete a stored model")
    c.add_argument("model_id")

    c = cmds.add_parser("info", parents=[common], help="architecture, parameters, memory needed")
    c.add_argument("model_id", help="a stored model id (or a model folder / .gguf file)")
    c.add_argument("--budget", help="memory budget, say 16GiB or 12GB (default: RAM - 4 GiB)")
    c.add_argument("--context", type=int, help="tokens for the KV-cache estimate")
    c.add_argument("--json", action="store_true", help="print JSON")

    c = cmds.add_parser("export", parents=[common], help="fuse a fine-tuned model and write it")
    c.add_argument("ft_id", help="fine-tuned model id (ft:...)")
    c.add_argument("--to", required=True, choices=["hf", "mlx", "gguf"])
    _quant_args(c)
    c.add_argument("--out", type=Path, help="write to this folder instead of the store")


def _quant_args(c: argparse.ArgumentParser) -> None:
    from server.engine.gguf.quantize import QUANT_TYPES

    c.add_argument(
        "--q-bits",
        type=int,
        choices=[2, 3, 4, 5, 6, 8],
        help="quantize: MLX to 2-8 bits; GGUF to 8 (Q8_0) or 4 (Q4_0), written without llama.cpp",
    )
    c.add_argument("--group-size", type=int, default=64, help="quantization group (default 64)")
    c.add_argument(
        "--quant",
        metavar="TYPE",
        help="a GGUF type made by llama.cpp's quantizer (--to gguf; any case): "
        + ", ".join(QUANT_TYPES),
    )
    c.add_argument("--id", dest="new_id", help="id of the new model")


def run(args: argparse.Namespace) -> int:
    """Run one `pomar models` command; 0 on success, 1 with one line on stderr if not."""
    try:
        settings = Settings(**({"home": args.home} if getattr(args, "home", None) else {}))
        catalog = ModelCatalog(settings.models_dir)
        named = args.models_command in ("info", "convert", "set")
        if named and args.model_id == EMBEDDED_MODEL_ID:
            ensure_embedded_model(settings.models_dir)  # first use: import it, as the server does
        command = _COMMANDS[args.models_command]
        return command(args, settings, catalog)
    except (CatalogError, ModelLoadError, EmbeddedModelMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ValidationError as exc:
        print(f"error: invalid settings: {exc.errors()[0]['msg']}", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted: nothing was added to the store", file=sys.stderr)
        return 130
    return 1


def human_size(n: int) -> str:
    """Bytes as `264.6 MiB`."""
    return ByteSize(n).human_readable(separator=" ")


def _list(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    entries = catalog.list()
    loaded, note = _loaded_models(settings)
    if args.json:
        rows = [
            {
                **e.model_dump(mode="json"),
                "size_bytes": e.size_bytes,
                "loaded": None if loaded is None else loaded.get(e.id, False),
            }
            for e in entries
        ]
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"models in {catalog.models_dir}", title_justify="left")
    widest = max((len(e.id) for e in entries), default=2)
    table.add_column("id", overflow="fold", min_width=min(widest, 40))  # never elided
    for name in ("source", "format", "precision", "size", "loaded"):
        table.add_column(name, justify="right" if name == "size" else "left")
    for e in entries:
        state = "-" if loaded is None else ("yes" if loaded.get(e.id) else "no")
        table.add_row(e.id, e.source, e.format, e.precision, human_size(e.size_bytes), state)
    console = Console()
    if entries:
        console.print(table)
    else:
        console.print(f"no models in {catalog.models_dir} (pomar models import PATH | pull ID)")
    if note:
        console.print(note, style="dim")
    return 0


def _loaded_models(settings: Settings) -> tuple[dict[str, bool] | None, str | None]:
    """Which ids a running server has loaded (`loaded` on its model cards), or a footnote."""
    import httpx

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    url = f"http://{host}:{settings.port}/v1/models"
    key = settings.api_key.get_secret_value() if settings.api_key else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=_STATUS_TIMEOUT)
    except httpx.HTTPError:
        return None, f"loaded: - (no server at {url})"
    if response.status_code == 401:
        return None, f"loaded: - (the server at {url} wants an API key: set POMAR_API_KEY)"
    try:
        cards = response.json()["data"]
        # a card without the field comes from a server that lists only loaded models
        return {c["id"]: bool(c.get("loaded", True)) for c in cards}, None
    except (ValueError, KeyError, TypeError):
        return None, f"loaded: - (no pomar server at {url})"


def _pull(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.models.importing import pull_model

    entry = pull_model(catalog, args.repo_id, args.new_id, args.include)
    _added("pulled", entry)
    return 0


def _import(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.models.importing import import_model

    entry = import_model(catalog, args.path, args.new_id)
    _added("imported", entry)
    return 0


def _convert(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.engine.gguf.to_hf import Reporter
    from server.models.convert import convert_model

    entry = convert_model(
        catalog,
        args.model_id,
        args.to,
        q_bits=args.q_bits,
        group_size=args.group_size,
        new_id=args.new_id,
        dtype=args.dtype,
        quant=args.quant,
        report=Reporter(True),
    )
    _added("converted", entry)
    return 0


def _export(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.engine.gguf.to_hf import Reporter
    from server.models.export import export_model

    folder = export_model(
        settings.home,
        args.ft_id,
        args.to,
        q_bits=args.q_bits,
        group_size=args.group_size,
        new_id=args.new_id,
        out=args.out,
        quant=args.quant,
        report=Reporter(True),
    )
    print(f"exported {args.ft_id} as {args.to} to {folder}")
    return 0


def _added(verb: str, entry: CatalogEntry) -> None:
    print(
        f"{verb} {entry.id} ({entry.format}, {entry.precision}, "
        f"{human_size(entry.size_bytes)}) into {entry.path}"
    )


def _short(n: int) -> str:
    """A parameter count as users say it: 135.0 M, 7.24 B."""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def _set(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.models.options import parse_assignments, read_options, write_options

    entry = catalog.require(args.model_id)
    options = read_options(entry.path)
    if args.pairs:
        try:
            options = parse_assignments(args.pairs, options)
        except ValueError as exc:
            raise CatalogError(str(exc)) from exc
        write_options(entry.path, options)
    own = options.model_dump(exclude_none=True)
    shown = ", ".join(f"{k}={v}" for k, v in own.items()) or "none (the server's settings)"
    print(f"{entry.id}: {shown}")
    if args.pairs:
        print("used the next time the model loads (a running server: after it is unloaded)")
    return 0


def _rm(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    entry = catalog.require(args.model_id)
    size = entry.size_bytes
    catalog.remove(args.model_id)
    print(f"removed {entry.id} ({entry.format}, {human_size(size)}) from {entry.path}")
    return 0


def _info(args: argparse.Namespace, settings: Settings, catalog: ModelCatalog) -> int:
    from server.models.info import model_info, parse_size
    from server.models.memory import total_memory as total_ram

    budget = parse_size(args.budget) if args.budget else None
    entry = catalog.get(args.model_id)
    target: CatalogEntry | Path = entry if entry is not None else Path(args.model_id)
    if entry is None and not Path(args.model_id).expanduser().exists():
        catalog.require(args.model_id)  # raises the store's "no model" error
    info = model_info(target, budget=budget, context=args.context)
    if args.json:
        print(info.model_dump_json(indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    def opt(value: object) -> str:
        return "unknown" if value is None else str(value)

    facts = Table(show_header=False, title=info.id or str(info.path), title_justify="left")
    facts.add_column(style="bold")
    facts.add_column()
    params = f"{info.parameters:,} ({_short(info.parameters)})" if info.parameters else None
    kv = info.kv_cache_bytes
    why = "--budget" if budget is not None else f"RAM {human_size(total_ram())} - 4 GiB"
    rows = [
        ("path", str(info.path)),
        ("format", f"{info.format} ({opt(info.precision)})"),
        ("architecture", opt(info.architecture)),
        ("parameters", opt(params)),
        ("context length", opt(info.context_length)),
        ("chat template", "yes" if info.chat_template else "no"),
        ("size on disk", human_size(info.size_bytes)),
        ("KV cache", f"{human_size(kv)} at {info.kv_context} tokens (fp16)" if kv else "unknown"),
        ("budget", f"{human_size(info.budget_bytes)} ({why})"),
    ]
    for name, value in rows:
        facts.add_row(name, value)
    memory = Table(title="memory needed", title_justify="left")
    for name in ("precision", "weights", "to run", "verdict"):
        memory.add_column(name, justify="left" if name in ("precision", "verdict") else "right")
    for m in info.memory:
        verdict = "[green]fits[/]" if m.fits else "[red]does not fit[/]"
        memory.add_row(
            m.precision, human_size(m.weights_bytes), human_size(m.runtime_bytes), verdict
        )
    gguf = Table(
        title="as a GGUF (pomar models convert --to gguf --quant TYPE)", title_justify="left"
    )
    for name in ("type", "bits/weight", "weights", "to run", "verdict"):
        gguf.add_column(name, justify="left" if name in ("type", "verdict") else "right")
    for m in info.gguf_memory:
        verdict = "[green]fits[/]" if m.fits else "[red]does not fit[/]"
        bits = f"{m.bits_per_weight:.2f}" if m.bits_per_weight else "-"
        gguf.add_row(
            m.precision, bits, human_size(m.weights_bytes), human_size(m.runtime_bytes), verdict
        )
    console = Console()
    console.print(facts)
    if info.memory:
        console.print(memory)
    if info.gguf_memory:
        console.print(gguf)
    for note in info.notes:
        console.print(f"note: {note}", style="dim")
    return 0


_COMMANDS = {
    "list": _list,
    "pull": _pull,
    "import": _import,
    "convert": _convert,
    "rm": _rm,
    "set": _set,
    "info": _info,
    "export": _export,
}
