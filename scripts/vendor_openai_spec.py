#!/usr/bin/env python3
"""Trim OpenAI's published OpenAPI document to the operations pomar implements.

The conformance suite (tests/conformance) fuzzes pomar against OpenAI's own schemas. The
full document is 3.4 MB and lives outside the repository (`../shared/openai-openapi/`), so
CI could not count on it: this keeps those operations and every component they reference,
with OpenAI's MIT licence beside it.

    .venv/bin/python scripts/vendor_openai_spec.py ../shared/openai-openapi/openapi.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "tests" / "conformance" / "openai-openapi.json"


def refs(node: Any) -> set[str]:
    """Every `#/components/...` reference under `node`."""
    found: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/"):
                found.add(ref)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def trim(spec: dict[str, Any], operations: set[str]) -> dict[str, Any]:
    """The document with only `operations` and the components they reach."""
    paths: dict[str, Any] = {}
    for path, item in spec["paths"].items():
        kept = {
            method: op
            for method, op in item.items()
            if isinstance(op, dict) and op.get("operationId") in operations
        }
        if kept:
            shared = {k: v for k, v in item.items() if k not in ("get", "post", "delete", "put")}
            paths[path] = {**shared, **kept}
    components: dict[str, dict[str, Any]] = {}
    todo = refs(paths)
    done: set[str] = set()
    while todo:
        ref = todo.pop()
        done.add(ref)
        _, _, kind, name = ref.split("/", 3)
        value = spec["components"][kind][name]
        components.setdefault(kind, {})[name] = value
        todo |= refs(value) - done
    out = {k: v for k, v in spec.items() if k not in ("paths", "components", "tags", "x-oaiMeta")}
    out["paths"] = paths
    out["components"] = {
        **{k: v for k, v in spec["components"].items() if k == "securitySchemes"},
        **components,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="OpenAI's openapi.json")
    args = parser.parse_args()
    from server.app import create_app
    from server.openapi import api_operation_ids
    from server.settings import Settings

    # the OpenAI operations pomar serves: its documented /v1 routes
    operations = api_operation_ids(create_app(Settings()).routes)

    spec = json.loads(args.source.read_text())
    trimmed = trim(spec, set(operations))
    missing = set(operations) - {
        op["operationId"]
        for item in trimmed["paths"].values()
        for op in item.values()
        if isinstance(op, dict) and "operationId" in op
    }
    if missing:
        raise SystemExit(f"not in the source document: {sorted(missing)}")
    OUT.write_text(json.dumps(trimmed, indent=1, sort_keys=False) + "\n")
    licence = args.source.parent / "LICENSE"
    if licence.is_file():
        (OUT.parent / "openai-openapi.LICENSE").write_text(licence.read_text())
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes, {len(trimmed['paths'])} paths)")


if __name__ == "__main__":
    main()
