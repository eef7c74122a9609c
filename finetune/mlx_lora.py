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
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from finetune.adapters import CONFIG_FILE, MLX_WEIGHTS, mlx_adapter_config, write_json
from finetune.backend import PairOutput, StepOutput
from finetune.config import TrainConfig
from finetune.data import Batch
from finetune.distributed import Group, Solo, gathered_pairs, rank_pairs, rank_rows

OPTIMIZER_FILE = "optimizer.safetensors"


def _loss(model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array) -> Any:
    """Mean cross-entropy over the trained tokens, plus their count and greedy hits."""
    logits = model(inputs)
    n_targets = mask.sum()
    losses = nn.losses.cross_entropy(logits, targets) * mask
    loss = losses.astype(mx.float32).sum() / mx.maximum(n_targets, 1)
    correct = ((mx.argmax(logits, axis=-1) == targets) * mask).sum()
    return loss, n_targets, correct


def _scaled_loss(
    model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array, scale: mx.array
) -> Any:
    """The summed cross-entropy of the trained tokens times ``scale`` (1 / the batch's
    trained tokens, times the group size on several ranks), and the greedy hits."""
    logits = model(inputs)
    losses = nn.losses.cross_entropy(logits, targets) * mask
    loss = losses.astype(mx.float32).sum() * scale
    correct = ((mx.argmax(logits, axis=-1) == targets) * mask).sum()
    return loss, correct


class MLXLoRABackend:
    """A base model loaded with mlx-lm, LoRA layers on its last blocks, Adam."""

    name = "mlx"

    def __init__(self, config: TrainConfig, group: Group | None = None) -> None:
        from mlx_lm.tuner.utils import linear_to_lora_layers
        from mlx_lm.utils import load_model

        self.config = config
        self.group: Group = group or Solo()
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
        self._pair_step: Any = None

    def _compiled_step(self) -> Any:
        # Built on first use, after any checkpoint restore replaced the optimizer state:
        # compile captures the state containers that exist when it is built.
        if self._step is None:
            model, optimizer = self.model, self.optimizer
            loss_and_grad = nn.value_and_grad(model, _scaled_loss)
            state = [model.state, optimizer.state, mx.random.state]
            shared = self.group.size > 1

            @partial(mx.compile, inputs=state, outputs=state)
            def step(inputs: mx.array, targets: mx.array, mask: mx.array, scale: mx.array) -> Any:
                (loss, correct), grads = loss_and_grad(model, inputs, targets, mask, scale)
                if shared:
                    # each rank's loss is its share of the global mean times the group
                    # size, so the average of the gradients is the global batch's gradient
                    grads = nn.average_gradients(grads)
                optimizer.update(model, grads)
                return loss, correct

            self._step = (step, state)
        return self._step

    def train_step(self, batch: Batch) -> StepOutput:
        """One Adam update on the batch (on several ranks: on this rank's rows, the
        gradients summed over the group; the figures returned are the whole batch's)."""
        step, state = self._compiled_step()
        self.model.train()
        group = self.group
        n_targets = int(batch.targets_mask.sum())
        local = rank_rows(batch, group)
        ids = mx.array(local.ids)
        scale = mx.array(group.size / max(n_targets, 1), dtype=mx.float32)
        loss, correct = step(ids[:, :-1], ids[:, 1:], mx.array(local.targets_mask), scale)
        mx.eval(state, loss, correct)
        if group.size == 1:
            return StepOutput(float(loss.item()), n_targets, int(correct.item()))
        total = group.all_sum(np.array([loss.item() / group.size, correct.item()]))
        return StepOutput(float(total[0]), n_targets, round(float(total[1])))

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
        self._step = self._pair_step = None

    def load_adapter_weights(self, directory: Path) -> None:
        """Start from a parent fine-tune: its adapter's weights, strictly the same layers."""
        directory = Path(directory)
        weights = _load_arrays(directory / MLX_WEIGHTS)
        expected = dict(tree_flatten(self.model.trainable_parameters()))
        if set(weights) != set(expected):
            raise ValueError(f"{directory.name}: adapter weights do not match this run's layers")
        self.model.load_weights(list(weights.items()), strict=False)
        mx.eval(self.model.parameters())
        self._step = self._pair_step = None

    # ----------------------------------------------------------------- DPO

    def sequence_logprobs(self, batch: Batch) -> np.ndarray:
        """Summed log-probability of each row's trained tokens, dropout off."""
        self.model.eval()
        ids = mx.array(batch.ids)
        logps, _ = _sequence_logps(
            self.model, ids[:, :-1], ids[:, 1:], mx.array(batch.targets_mask)
        )
        mx.eval(logps)
        self.model.train()
        return np.array(logps, dtype=np.float64)

    def _compiled_pair_step(self, beta: float) -> Any:
        if self._pair_step is None or self._pair_step[2] != beta:
            model, optimizer = self.model, self.optimizer
            loss_and_grad = nn.value_and_grad(model, partial(_dpo_loss, beta=beta))
            state = [model.state, optimizer.state, mx.random.state]
            shared = self.group.size > 1

            @partial(mx.compile, inputs=state, outputs=state)
            def step(
                inputs: mx.array, targets: mx.array, mask: mx.array, ref: mx.array, scale: mx.array
            ) -> Any:
                outputs, grads = loss_and_grad(model, inputs, targets, mask, ref, scale)
                if shared:  # as in the supervised step
                    grads = nn.average_gradients(grads)
                optimizer.update(model, grads)
                return outputs

            self._pair_step = (step, state, beta)
        return self._pair_step

    def pair_step(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """One Adam update on DPO's loss over a batch of pairs (on several ranks: this
        rank's pairs, the gradients summed over the group; figures for the whole batch)."""
        step, state, _ = self._compiled_pair_step(beta)
        self.model.train()
        group = self.group
        n = batch.ids.shape[0] // 2
        local, local_ref, pairs = rank_pairs(batch, reference, group)
        ids = mx.array(local.ids)
        scale = mx.array(group.size / n, dtype=mx.float32)
        out = step(ids[:, :-1], ids[:, 1:], mx.array(local.targets_mask), _f32(local_ref), scale)
        mx.eval(state, out)
        result = _pair_output(out)
        if group.size == 1:
            return result
        share = result.loss / group.size  # the step's loss is scaled by the group size
        n_targets = int(batch.targets_mask[:n].sum())
        return gathered_pairs(result, share, pairs, n, group, n_targets)

    def pair_eval(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """DPO's loss and log-ratios with dropout off."""
        self.model.eval()
        ids = mx.array(batch.ids)
        mask = mx.array(batch.targets_mask)
        n = batch.ids.shape[0] // 2
        scale = mx.array(1 / n, dtype=mx.float32)
        out = _dpo_loss(self.model, ids[:, :-1], ids[:, 1:], mask, _f32(reference), scale, beta)
        mx.eval(out)
        self.model.train()
        return _pair_output(out)

    # ----------------------------------------------------------------- evaluation

    def greedy(self, prompt_ids: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
        """The argmax continuation of ``prompt_ids`` (dropout off, a KV cache), without the
        stop token that ended it; at most ``max_tokens`` tokens."""
        from mlx_lm.models.cache import make_prompt_cache

        self.model.eval()
        try:
            cache = make_prompt_cache(self.model)
            logits = self.model(mx.array([prompt_ids]), cache=cache)
            out: list[int] = []
            while len(out) < max_tokens:
                token = cast(int, mx.argmax(logits[0, -1]).item())
                if token in stop_ids:
                    break
                out.append(token)
                logits = self.model(mx.array([[token]]), cache=cache)
            return out
        finally:
            self.model.train()


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


def _sequence_logps(
    model: nn.Module, inputs: mx.array, targets: mx.array, mask: mx.array
) -> tuple[mx.array, mx.array]:
    """Per row, the summed log-probability of the trained targets; and the logits."""
    logits = model(inputs)
    token_logps = -nn.losses.cross_entropy(logits, targets).astype(mx.float32)
    return (token_logps * mask).sum(axis=-1), logits


def _dpo_loss(
    model: nn.Module,
    inputs: mx.array,
    targets: mx.array,
    mask: mx.array,
    reference: mx.array,
    scale: mx.array,
    beta: float,
) -> Any:
    """DPO's sigmoid loss (Rafailov et al. 2023) over rows ``[chosen..., rejected...]``.

    ``-log sigmoid(beta * (chosen log-ratio - rejected log-ratio))``, the log-ratios taken
    against ``reference`` (the same sums under the reference policy), computed as
    ``logaddexp(0, -z)`` to stay finite, summed over the pairs times ``scale`` (1 / pairs:
    the mean; see ``pair_step`` on several ranks). Also the chosen rows' greedy token hits.
    """
    logps, logits = _sequence_logps(model, inputs, targets, mask)
    n = logps.shape[0] // 2
    ratios = logps - reference
    chosen, rejected = ratios[:n], ratios[n:]
    loss = mx.logaddexp(mx.zeros_like(chosen), -beta * (chosen - rejected)).sum() * scale
    chosen_mask = mask[:n]
    correct = ((mx.argmax(logits[:n], axis=-1) == targets[:n]) * chosen_mask).sum()
    return loss, chosen, rejected, chosen_mask.sum(), correct


def _f32(values: np.ndarray) -> mx.array:
    return mx.array(np.asarray(values, dtype=np.float32))


def _pair_output(out: Any) -> PairOutput:
    loss, chosen, rejected, n_targets, correct = out
    return PairOutput(
        loss=float(loss.item()),
        chosen=np.array(chosen, dtype=np.float64),
        rejected=np.array(rejected, dtype=np.float64),
        n_targets=int(n_targets.item()),
        n_correct=int(correct.item()),
    )
