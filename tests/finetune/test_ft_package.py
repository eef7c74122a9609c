"""The rich progress callback and import hygiene (result files are tested on a real run)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import finetune
from finetune.callbacks import CallbackList, EvalMetrics, StepMetrics, TrainingCallback
from finetune.progress import RichProgress


def test_rich_progress_reports_and_stops() -> None:
    from rich.console import Console

    output = io.StringIO()
    with RichProgress(console=Console(file=output, force_terminal=False, width=120)) as progress:
        callback = CallbackList(TrainingCallback(), progress)
        callback.on_step(StepMetrics(1, 4, 2.5, 0.1, 1e-3, 100.0, 50, 0.5))
        callback.on_eval(EvalMetrics(1, 2.25, 0.2))
        callback.on_step(StepMetrics(2, 4, 2.0, 0.2, 1e-3, 120.0, 100, 1.0))
        assert not callback.should_stop()
        progress.stop()
        assert callback.should_stop()
    assert "valid 2.250" in output.getvalue() and "2/4" in output.getvalue()


def test_import_finetune_loads_no_engine_and_no_server() -> None:
    code = (
        "import sys, finetune, finetune.callbacks, finetune.config;"
        "heavy = {'mlx', 'torch', 'transformers', 'peft', 'numpy', 'matplotlib', 'server',"
        " 'starlette', 'uvicorn', 'datalab'};"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    package = Path(finetune.__file__).parent
    source = "\n".join(p.read_text() for p in package.glob("*.py"))
    for name in ("server", "starlette", "uvicorn", "datalab"):
        assert f"import {name}" not in source and f"from {name}" not in source
