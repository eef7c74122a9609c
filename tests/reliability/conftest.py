"""Reliability tests reuse the fine-tuning tests' training data (tests/server/finetune_data.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "server"))
