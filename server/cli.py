"""The `pomar` command: serve, data, tune, models, bench, doctor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from server.settings import Settings

log = logging.getLogger("pomar")


def _serve_parser(sub: Any) -> None:
    """`pomar serve`: one flag per `Settings` field, generated (README's table lists them)."""
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    for name, field in Settings.model_fields.items():
        choices = get_args(field.annotation) if get_origin(field.annotation) is Literal else None
        default = field.get_default(call_default_factory=True)
        shown = "none" if default in (None, []) else default
        p.add_argument(
            setting_flag(name),
            dest=name,
            choices=choices,
            metavar=None if choices else name.upper(),
            help=f"{field.description} ({setting_env(name)}, default {shown})",
        )


def setting_flag(name: str) -> str:
    """The `pomar serve` flag of a `Settings` field: `max_memory` -> `--max-memory`."""
    return "--" + name.replace("_", "-")


def setting_env(name: str) -> str:
    """The environment variable of a `Settings` field: `max_memory` -> `POMAR_MAX_MEMORY`."""
    return f"POMAR_{name.upper()}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="pomar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from server import tune

    tune.add_parser(sub)
    from server import bench

    bench.add_parser(sub)
    from server.models import cli as models_cli

    models_cli.add_parser(sub)
    from server import doctor

    doctor.add_parser(sub)
    data = sub.add_parser("data", help="dataset lab: check | prepare | convert", add_help=False)
    data.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment variables first, then the flags that were given on top."""
    given = {n: getattr(args, n, None) for n in Settings.model_fields}
    return Settings(**{n: v for n, v in given.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pomar` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:
        from datalab.cli import main as data_main

        return data_main(
            argv[1:], resolve_model=_resolve_model_for_data, weights_of=_training_weights
        )
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from pydantic import ValidationError

        try:
            settings = settings_from_args(args)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            name = str(first["loc"][0]) if first["loc"] else "settings"
            print(
                f"pomar: {setting_flag(name)} / {setting_env(name)}: {first['msg']}",
                file=sys.stderr,
            )
            return 2
        return serve(settings, argv)
    if args.command == "tune":
        from server import tune

        requested = args.backend or Settings().backend
        if requested in ("auto", "mlx", "gguf"):
            _reexec_with_openblas(argv)
        if requested in ("auto", "gguf"):
            # the GGUF engine serves but does not train: tune with its training backend
            from server.models.loading import choose_backend, training_backend

            args.backend = training_backend(choose_backend(requested)[0])
        return tune.run(args)
    if args.command == "models":
        from server.models import cli as models_cli

        return models_cli.run(args)
    if args.command == "doctor":
        from server import doctor

        _reexec_with_openblas(argv)  # report (and self-check) MLX as `pomar serve` runs it
        return doctor.run(args)
    if args.command == "bench":
        from server import bench

        return bench.run(args)
    return 2


def serve(settings: Settings, argv: list[str]) -> int:
    """Run the server in the foreground until interrupted."""
    # gguf too: fine-tuning jobs on a gguf-served base train with MLX in this process
    if settings.backend in ("auto", "mlx", "gguf"):
        _reexec_with_openblas(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.api_key is None and settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "listening on %s without an API key: anyone who can reach it can use it", settings.host
        )
    if settings.hosts:
        from server.serve_hosts import serve_across_hosts

        return serve_across_hosts(settings, argv)
    from server.errors import ModelLoadError

    try:
        _check_start_engine(settings)
    except ModelLoadError as exc:
        # a model or an engine that cannot serve here: one line, no traceback
        print(f"pomar: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    from server.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    return 0


def _check_start_engine(settings: Settings) -> None:
    """Resolve the start model and self-check its engine before the server starts.

    The server's start-up does the same (from the cache this fills); doing it first lets a
    failure end the command with one line instead of a failed start-up's traceback.
    """
    from server.models.loading import resolve_model_path, settle_backend
    from server.models.options import read_options

    path = resolve_model_path(settings.model, settings.models_dir)
    settle_backend(read_options(path).backend or settings.backend, path, settings.home)


def _reexec_with_openblas(argv: list[str]) -> None:
    """On Linux, restart once with OpenBLAS preloaded so MLX gets a fast BLAS."""
    from server.engine.mlx.openblas import preload_environment

    env = preload_environment(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "server", *argv], env)


def _training_weights(path: Path) -> int:
    """A base's weights as its trainer holds them: the serving estimate's rule
    (server/models/memory.py), for the trainer `pomar tune` and jobs would use."""
    from server.models.loading import backend_for, training_backend
    from server.models.memory import held_weights

    return held_weights(path, training_backend(backend_for("auto", path)))


def _resolve_model_for_data(model: str) -> str:
    """Let `pomar data --model` take the server's model ids (the embedded one included)."""
    from server.models.loading import resolve_model_path

    return str(resolve_model_path(model, Settings().models_dir))
