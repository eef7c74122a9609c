#!/usr/bin/env python3
"""Prompt-lookup speculative decoding (GGUF, MLX or torch engine) against plain decoding.

Two workloads, one stream at a time, greedy, in one process on the same model:
  * edit: "rewrite this 60-line file with one change" (the answer repeats the prompt);
  * chat: a question whose answer repeats nothing in particular.
For each: decode tok/s without and with drafts (`--draft-tokens`), the ratio, how many
drafted tokens the model confirmed, and whether the greedy tokens are the same. Each
figure is the median of `--runs` runs, plain and drafting alternating; the prompt's cache
is cleared before each run (MLX: the engines keep no prompt cache) so both time the
same work. `--backend mlx` or `torch` loads the Hugging Face folder (`--model`, default
the embedded model's) with that engine instead of its GGUF file.

    .venv/bin/python scripts/bench_speculative.py [--backend gguf|mlx|torch]
        [--gguf PATH] [--model FOLDER] [--tokens 256] [--runs 3]
    .venv/bin/python scripts/bench_speculative.py --gguf BIG.gguf --draft-gguf SMALL.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib import LoadAverage, embedded_model

EDIT_SOURCE = "\n".join(
    [
        "import json",
        "from pathlib import Path",
        "",
        "",
        "def load_orders(path):",
        '    """Read the orders file, one JSON object per line."""',
        "    orders = []",
        "    with open(path) as handle:",
        "        for line in handle:",
        "            line = line.strip()",
        "            if not line:",
        "                continue",
        "            orders.append(json.loads(line))",
        "    return orders",
        "",
        "",
        "def total_by_customer(orders):",
        "    totals = {}",
        "    for order in orders:",
        "        customer = order['customer']",
        "        totals[customer] = totals.get(customer, 0) + order['amount']",
        "    return totals",
        "",
        "",
        "def largest_orders(orders, count=5):",
        "    ranked = sorted(orders, key=lambda o: o['amount'], reverse=True)",
        "    return ranked[:count]",
        "",
        "",
        "def average_amount(orders):",
        "    if not orders:",
        "        return 0.0",
        "    return sum(o['amount'] for o in orders) / len(orders)",
        "",
        "",
        "def write_report(orders, out_path):",
        "    totals = total_by_customer(orders)",
        "    lines = []",
        "    for customer, total in sorted(totals.items()):",
        "        lines.append(f'{customer}: {total:.2f}')",
        "    lines.append('')",
        "    lines.append(f'average: {average_amount(orders):.2f}')",
        "    for order in largest_orders(orders):",
        "        lines.append(f\"largest: {order['customer']} {order['amount']:.2f}\")",
        "    Path(out_path).write_text('\\n'.join(lines))",
        "",
        "",
        "def main():",
        "    import sys",
        "",
        "    orders = load_orders(sys.argv[1])",
        "    write_report(orders, sys.argv[2])",
        "    print(f'{len(orders)} orders read')",
        "",
        "",
        "if __name__ == '__main__':",
        "    main()",
        "",
    ]
)
WORKLOADS = {
    "edit": "Rewrite this Python file with one change: rename the function `average_amount` "
    "to `mean_amount` everywhere. Answer with the whole file only.\n\n```python\n"
    + EDIT_SOURCE
    + "```",
    "chat": "Explain in a few paragraphs why the sky is blue, for a curious ten-year-old.",
}


def run(engine: Any, ids: list[int], tokens: int) -> tuple[list[int], float]:
    """Greedy tokens of one completion and its decode tok/s (after the first token)."""
    from server.engine.base import PAUSE, GenerationParams

    clear = getattr(engine, "clear_cache", None)
    if clear is not None:
        clear()
    params = GenerationParams(max_tokens=tokens, temperature=0.0)
    out: list[int] = []
    first = 0.0
    for sampled in engine.token_stream(ids, params, lambda: False):
        if sampled is PAUSE:
            continue
        if sampled.token in engine.eos_token_ids:
            break
        out.append(sampled.token)
        if len(out) == 1:
            first = time.perf_counter()
    rest = time.perf_counter() - first
    return out, (len(out) - 1) / rest if len(out) > 1 and rest > 0 else 0.0


def load(args: argparse.Namespace, draft_tokens: int) -> tuple[Any, str]:
    """The engine the arguments name, decoding one stream; its model's name."""
    if args.backend == "mlx":
        from server.engine.mlx.backend import MLXEngine

        folder = args.model or embedded_model()
        engine = MLXEngine(
            folder, max_batch_size=1, prompt_cache_entries=0, draft_tokens=draft_tokens
        )
        return engine, folder.name
    if args.backend == "torch":
        from server.engine.torch.backend import TorchEngine

        folder = args.model or embedded_model()
        return TorchEngine(folder, draft_tokens=draft_tokens), folder.name
    from server.engine.gguf.backend import GGUFEngine
    from server.modelfiles import find_gguf

    folder = embedded_model() if args.gguf is None else args.gguf.parent
    gguf = args.gguf or find_gguf(folder)
    assert gguf is not None, f"no GGUF file in {folder}"
    hf = folder if (folder / "config.json").is_file() else None
    draft = args.draft_gguf if draft_tokens else None
    gguf_engine = GGUFEngine(
        gguf, hf, max_batch_size=1, draft_tokens=draft_tokens, draft_model=draft
    )
    return gguf_engine, gguf.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("gguf", "mlx", "torch"), default="gguf")
    parser.add_argument("--gguf", type=Path, help="a GGUF file (default: the embedded model)")
    parser.add_argument(
        "--model", type=Path, help="mlx, torch: a model folder (default: the embedded model)"
    )
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--draft-tokens", type=int, default=8)
    parser.add_argument(
        "--draft-gguf", type=Path, help="gguf: a draft model drafts instead of prompt lookup"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from server.engine.templates import ChatTemplate

    plain, name = load(args, 0)
    drafting, _ = load(args, args.draft_tokens)
    template = ChatTemplate(plain.tokenizer)
    average = LoadAverage()
    results: dict[str, Any] = {
        "backend": args.backend,
        "model": name,
        "draft_tokens": args.draft_tokens,
        # "ngram_tok_s" below is the drafting engine's figure, whoever drafts
        "drafter": f"draft model {args.draft_gguf.name}" if args.draft_gguf else "prompt lookup",
    }
    for name, text in WORKLOADS.items():
        ids = template.encode([{"role": "user", "content": text}])
        run(plain, ids, 8)  # warm up both
        run(drafting, ids, 8)
        speeds: dict[str, list[float]] = {"plain": [], "ngram": []}
        same = True
        before = drafting.stats()
        for _ in range(args.runs):
            want, speed = run(plain, ids, args.tokens)
            speeds["plain"].append(speed)
            got, speed = run(drafting, ids, args.tokens)
            speeds["ngram"].append(speed)
            same = same and got == want
        after = drafting.stats()
        drafted = after["drafted_tokens"] - before["drafted_tokens"]
        accepted = after["accepted_tokens"] - before["accepted_tokens"]
        plain_s, ngram_s = (statistics.median(v) for v in speeds.values())
        results[name] = {
            "prompt_tokens": len(ids),
            "completion_tokens": len(want),
            "plain_tok_s": round(plain_s, 1),
            "ngram_tok_s": round(ngram_s, 1),
            "ratio": round(ngram_s / plain_s, 2) if plain_s else None,
            "drafted": drafted,
            "accepted": accepted,
            "acceptance": round(accepted / drafted, 3) if drafted else None,
            "same_greedy_tokens": same,
        }
    average.done()
    results["load_average"] = average.caption()
    kind = "draft" if args.draft_gguf else "ngram"
    head = ("workload", "plain tok/s", f"{kind} tok/s", "ratio", "accepted")
    print(f"{head[0]:<8} {head[1]:>12} {head[2]:>12} {head[3]:>6} {head[4]:>14} same")
    for name in WORKLOADS:
        row = results[name]
        confirmed = f"{row['accepted']}/{row['drafted']}"
        print(
            f"{name:<8} {row['plain_tok_s']:>12} {row['ngram_tok_s']:>12} {row['ratio']:>6} "
            f"{confirmed:>14} {row['same_greedy_tokens']}"
        )
    print(results["load_average"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
