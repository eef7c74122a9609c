"""OpenAI's automatic fine-tuning hyperparameters, for the trainer and the estimate alike."""

from __future__ import annotations

import math

DEFAULT_EPOCHS = 3
MAX_EPOCHS = 25
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000


def auto_epochs(n_examples: int) -> int:
    """OpenAI's ``n_epochs: "auto"``: 3, stretched or shrunk so that examples × epochs
    stays within [100, 25 000] where an integer number of epochs in [1, 25] allows it.

    >>> [auto_epochs(n) for n in (1, 10, 50, 5000, 20000)]
    [25, 10, 3, 3, 1]
    """
    if n_examples < 1:
        raise ValueError("n_examples must be positive")
    if n_examples * DEFAULT_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / n_examples))
    if n_examples * DEFAULT_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // n_examples)
    return DEFAULT_EPOCHS
