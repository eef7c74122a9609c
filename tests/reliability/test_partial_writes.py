"""A trainer killed mid-checkpoint leaves half-swapped folders; they are tidied before a resume."""

from __future__ import annotations

from pathlib import Path

from finetune.folders import clean_partial_writes


def folder(path: Path, marker: str) -> Path:
    path.mkdir(parents=True)
    (path / "state.json").write_text(marker)
    return path


def test_clean_partial_writes(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    folder(ckpts / "step-4", "4")
    folder(ckpts / ".step-8.tmp-123", "half")  # killed while writing step 8
    folder(ckpts / ".step-4.tmp-77", "half")  # killed while rewriting step 4...
    folder(ckpts / ".step-12.old-77", "12")  # ...or between the swap's two renames
    folder(ckpts / ".step-12.tmp-77", "whole?")
    folder(tmp_path / ".adapter.tmp-9", "half")
    (ckpts / "notes.txt").write_text("left alone")

    assert clean_partial_writes(tmp_path) == 4
    assert sorted(p.name for p in ckpts.iterdir()) == ["notes.txt", "step-12", "step-4"]
    assert (ckpts / "step-12" / "state.json").read_text() == "12"  # the complete one is back
    assert (ckpts / "step-4" / "state.json").read_text() == "4"
    assert not (tmp_path / ".adapter.tmp-9").exists()
    assert clean_partial_writes(tmp_path / "missing") == 0
