"""datalab is a pure library: no server, no engine, and heavy imports only on demand."""

from __future__ import annotations

import subprocess
import sys


def test_datalab_imports_nothing_it_must_not() -> None:
    code = (
        "import sys, datalab, datalab.pipeline, datalab.cli, datalab.formats, datalab.render\n"
        "bad = {'server', 'starlette', 'uvicorn', 'finetune', 'transformers', 'torch', 'mlx'}\n"
        "print(sorted(bad & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_upload_check_does_not_load_numpy_or_datasketch() -> None:
    code = (
        "import sys, datalab.formats\n"
        "print(sorted({'numpy', 'datasketch', 'scipy'} & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
