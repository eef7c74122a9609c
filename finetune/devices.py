"""The torch device pomar computes on, for training and serving alike: CUDA, MPS, then CPU.

No machine has both CUDA and Apple's MPS, so the order only says what is tried first.
torch is imported when the function runs, not with this module.
"""

from __future__ import annotations


def pick_device() -> str:
    """ "cuda" where torch sees a CUDA device, else "mps" on Apple Silicon, else "cpu"."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
