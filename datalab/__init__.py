"""datalab: the dataset lab — detect, clean, validate, dedupe, balance, analyse, split.

A pure library (no server, no engine). The entry points are
:func:`datalab.pipeline.prepare` / :func:`datalab.pipeline.check`, the upload-time
:func:`datalab.formats.check_jsonl_objects`, and :func:`datalab.cli.main` for
``pomar data ...``. Importing this package is cheap: numpy and datasketch load with the
pipeline, transformers only when a tokenizer is loaded.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PipelineConfig", "Problem", "Report", "check", "check_jsonl_objects", "prepare"]

_LAZY = {
    "PipelineConfig": "datalab.config",
    "Problem": "datalab.problems",
    "Report": "datalab.report",
    "check": "datalab.pipeline",
    "prepare": "datalab.pipeline",
    "check_jsonl_objects": "datalab.formats",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import datalab.formats` (the Files API's upload check) stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'datalab' has no attribute {name!r}")
