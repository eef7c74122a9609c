"""The `pomar` command: serve, data, tune, models, bench, doctor."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from server.settings import Settings

log = logging.getLogger("pomar")


def _serve_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="start the OpenAI-compatible server")
    p.add_argument("--host", help="interface to bind (POMAR_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (POMAR_PORT, default 8000)")
    p.add_argument(
        "--model", help="embedded id, local HF folder, .gguf file or hub repo id (POMAR_MODEL)"
    )
    p.add_argument(
        "--backend",
        choices=["auto", "mlx", "torch", "gguf"],
        help="engine: gguf is llama.cpp on a GGUF file (POMAR_BACKEND, default auto)",
    )
    p.add_argument("--home", help="models, files and jobs (POMAR_HOME, default ~/.pomar)")
    p.add_argument("--api-key", help="require this Bearer key on /v1 (POMAR_API_KEY)")
    p.add_argument("--log-level", help="debug, info, warning... (POMAR_LOG_LEVEL)")
    p.add_argument(
        "--embedding-model",
        help="/v1/embeddings model: all-minilm-l6-v2 (default), a local sentence-transformers "
        "folder, or none (POMAR_EMBEDDING_MODEL)",
    )
    p.add_argument(
        "--max-batch-size",
        type=int,
        help="requests decoded together on the MLX engine (POMAR_MAX_BATCH_SIZE, default 8)",
    )
    p.add_argument(
        "--prompt-cache-entries",
        type=int,
        help="KV caches kept for prompt-prefix reuse, 0 for none (POMAR_PROMPT_CACHE_ENTRIES)",
    )
    p.add_argument(
        "--prompt-cache-mb",
        type=int,
        help="memory bound of the prompt cache in MiB (POMAR_PROMPT_CACHE_MB, default 128)",
    )
    p.add_argument(
        "--cors-origins",
        help="browser origins allowed to call the API, comma-separated, * for any "
        "(POMAR_CORS_ORIGINS; default none: CORS off)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        help="largest JSON request body (POMAR_MAX_BODY_BYTES, default 8 MiB)",
    )
    p.add_argument(
        "--max-messages",
        type=int,
        help="most messages in one chat request (POMAR_MAX_MESSAGES, default 2048)",
    )
    p.add_argument(
        "--max-memory",
        help="memory budget for loaded models, e.g. 8GB (POMAR_MAX_MEMORY, default RAM - 4 GiB)",
    )
    p.add_argument(
        "--keep-alive",
        help="unload a model idle this long: seconds or 30s/5m/1h, -1 never "
        "(POMAR_KEEP_ALIVE, default 5m; the start model stays)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="pomar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    from server import tune

    tune.add_parser(sub)
    from server import bench

    bench.add_parser(sub)
    from server.catalog import cli as models_cli

    models_cli.add_parser(sub)
    from server import doctor

    doctor.add_parser(sub)
    data = sub.add_parser("data", help="dataset lab: check | prepare | convert", add_help=False)
    data.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Environment variables first, then the flags that were given on top."""
    names = (
        "host",
        "port",
        "model",
        "backend",
        "home",
        "api_key",
        "log_level",
        "embedding_model",
        "max_batch_size",
        "prompt_cache_entries",
        "prompt_cache_mb",
        "max_memory",
        "keep_alive",
        "cors_origins",
        "max_body_bytes",
        "max_messages",
    )
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    return Settings(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `pomar` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:
        from datalab.cli import main as data_main

        return data_main(argv[1:], resolve_model=_resolve_model_for_data)
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(settings_from_args(args), argv)
    if args.command == "tune":
        from server import tune

        requested = args.backend or Settings().backend
        if requested in ("auto", "mlx", "gguf"):
            _reexec_with_openblas(argv)
        if requested in ("auto", "gguf"):
            # the GGUF engine serves but does not train: tune with its training backend
            from server.engine.registry import choose_backend, training_backend

            args.backend = training_backend(choose_backend(requested)[0])
        return tune.run(args)
    if args.command == "models":
        from server.catalog import cli as models_cli

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
    from server.engine.registry import resolve_model_path, settle_backend

    path = resolve_model_path(settings.model, settings.models_dir)
    settle_backend(settings.backend, path, settings.home)


def _reexec_with_openblas(argv: list[str]) -> None:
    """On Linux, restart once with OpenBLAS preloaded so MLX gets a fast BLAS."""
    from server.engine.openblas import preload_environment

    env = preload_environment(os.environ)
    if env is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "server", *argv], env)


def _resolve_model_for_data(model: str) -> str:
    """Let `pomar data --model` take the server's model ids (the embedded one included)."""
    from server.engine.registry import resolve_model_path

    return str(resolve_model_path(model, Settings().models_dir))
