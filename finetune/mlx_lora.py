"""MLX backend: mlx-lm's LoRA layers, driven by our own step loop.

Why not ``mlx_lm.tuner.trainer.train``: it reports only every ``steps_per_report`` steps,
prints through its own rich UI, saves weights without ``adapter_config.json``, has no way
to stop except by starving its batch iterator, cannot restore an optimizer's state and
computes no token accuracy. The step itself is the same as mlx-lm's: ``nn.value_and_grad``
over the LoRA parameters, an optimizer update, the whole thing ``mx.compile``-d with the
model, optimizer and random state as implicit inputs and outputs.

mlx is imported only when this module loads.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from finetune.adapters import CONFIG_FILE, MLX_WEIGHTS, mlx_adapter_config, write_json
from finetune.backend import StepOutput
from finetune.config import TrainConfig
from finetune.data import Batch

OPTIMIZER_FILE = "optimizer.safetensors"


def _loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array) -> Any:
    """Mean cross-entropy over the trained tokens, plus their count and greedy hits."""
    logits = model(inputs)
    n_targets = mask.sum()
    losses = nn.losses.cross_entropy(logits, targets) * mask
    loss = losses.astype(mx.float32).sum() / mx.maximum(n_targets, 1)
    correct = ((mx.argmax(logits, axis=-1) == targets) * mask).sum()
    return loss, n_targets, correct


class MLXLoRABackend:
    """A base model loaded with mlx-lm, LoRA layers on its last blocks, Adam."""

    name = "mlx"

    def __init__(self, config: TrainConfig) -> None:
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load_model

        self.config = config
        # the LoRA A matrices are drawn from mlx's global generator
        mx.random.seed(config.seed)
        model, _ = load_model(Path(config.model_path))
        if mx.default_device() == mx.cpu:
            # bf16 matmuls skip BLAS on the CPU path: fp32 is ~20x faster there (docs/platform.md)
            model.set_dtype(mx.float32)
        if config.quantize is not None:
            # QLoRA: a float base is quantized here, before the LoRA layers (an already
            # quantized one is kept as it is; finetune/quantize.py logs which)
            from finetune.quantize import quantize_mlx_model

            quantize_mlx_model(model, config.quantize)
        model.freeze()
        self.num_layers = config.lora.layers_to_adapt(len(model.layers))
        lora = config.lora
        parameters = {
            "rank": lora.rank,
            "scale": lora.scale,
            "dropout": lora.dropout,
            "keys": list(lora.target_modules),
        }
        linear_to_lora_layers(model, self.num_layers, parameters)
        # Materialise the new LoRA arrays on this thread's stream: without it, training on a
        # worker thread fails with "There is no Stream(cpu, 0) in current thread"
        # (docs/platform.md).
        mx.eval(model.parameters())
        _check_targets(model, lora.target_modules, self.num_layers)
        self.model = model
        # Bias-corrected Adam, as torch's: the same learning rate means the same thing on
        # both backends (mlx's default leaves early steps ~3x larger).
        self.optimizer = optim.Adam(learning_rate=config.learning_rate, bias_correction=True)
        self.optimizer.init(model.trainable_parameters())
        self._step: Any = None

    def _compiled_step(self) -> Any:
        # Built on first use, after any checkpoint restore replaced the optimizer state:
        # compile captures the state containers that exist when it is built.
        if self._step is None:
            model, optimizer = self.model, self.optimizer
            loss_and_grad = nn.value_and_grad(model, _loss)
            state = [model.state, optimizer.state, mx.random.state]

            @partial(mx.compile, inputs=state, outputs=state)
            def step(inputs: mx.array, targets: mx.array, mask: mx.array) -> Any:
                (loss, n_targets, correct), grads = loss_and_grad(model, inputs, targets, mask)
                optimizer.update(model, grads)
                return loss, n_targets, correct

            self._step = (step, state)
        return self._step

    def train_step(self, batch: Batch) -> StepOutput:
        """One Adam update on the batch."""
        step, state = self._compiled_step()
        self.model.train()
        ids = mx.array(batch.ids)
        loss, n_targets, correct = step(ids[:, :-1], ids[:, 1:], mx.array(batch.targets_mask))
        mx.eval(state, loss, n_targets, correct)
        return StepOutput(float(loss.item()), int(n_targets.item()), int(correct.item()))

    def eval_step(self, batch: Batch) -> StepOutput:
        """Loss and accuracy with dropout off."""
        self.model.eval()
        ids = mx.array(batch.ids)
        loss, n_targets, correct = _loss(
            self.model, ids[:, :-1], ids[:, 1:], mx.array(batch.targets_mask)
        )
        mx.eval(loss, n_targets, correct)
        self.model.train()
        return StepOutput(float(loss.item()), int(n_targets.item()), int(correct.item()))

    def save_adapter(self, directory: Path) -> None:
        """``adapters.safetensors`` + mlx-lm's ``adapter_config.json``."""
        weights = dict(tree_flatten(self.model.trainable_parameters()))
        mx.save_safetensors(str(Path(directory) / MLX_WEIGHTS), weights)
        config = mlx_adapter_config(self.config.lora, self.num_layers, self.config.model_path)
        write_json(Path(directory) / CONFIG_FILE, config)

    def save_optimizer(self, directory: Path) -> None:
        """Adam's moments and step count."""
        state = dict(tree_flatten(self.optimizer.state))
        mx.save_safetensors(str(Path(directory) / OPTIMIZER_FILE), state)

    def load_checkpoint(self, directory: Path) -> None:
        """Adapter weights (strictly: same LoRA layers) and optimizer state."""
        directory = Path(directory)
        if not (directory / MLX_WEIGHTS).is_file():
            raise ValueError(f"{directory} holds no MLX adapter ({MLX_WEIGHTS})")
        weights = _load_arrays(directory / MLX_WEIGHTS)
        expected = dict(tree_flatten(self.model.trainable_parameters()))
        if set(weights) != set(expected):
            raise ValueError(f"{directory}: adapter weights do not match this run's LoRA layers")
        self.model.load_weights(list(weights.items()), strict=False)
        if (directory / OPTIMIZER_FILE).is_file():
            state = _load_arrays(directory / OPTIMIZER_FILE)
            self.optimizer.state = tree_unflatten(list(state.items()))
            self.optimizer.learning_rate = self.config.learning_rate
        mx.eval(self.model.parameters(), self.optimizer.state)
        self._step = None


def _load_arrays(path: Path) -> dict[str, mx.array]:
    # mx.load's return type covers every format; a .safetensors file is a flat dict
    return cast(dict[str, mx.array], mx.load(str(path)))


def _check_targets(model: nn.Module, targets: tuple[str, ...], num_layers: int) -> None:
    """Refuse a target that matched no linear layer (a typo would otherwise train nothing)."""
    found = {
        name
        for layer in model.layers[-num_layers:]
        for name, module in layer.named_modules()
        if "lora_a" in module
    }
    missing = [target for target in targets if target not in found]
    if missing:
        raise ValueError(f"target_modules not found in the model's blocks: {missing}")
