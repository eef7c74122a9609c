"""torch backend: transformers + PEFT LoRA with the same contract as the MLX one.

Adapters are written with PEFT's ``save_pretrained`` (``PeftModel.from_pretrained`` loads
them); :func:`finetune.adapters.convert_peft_to_mlx` turns one into mlx-lm's format.
torch, transformers and peft are imported only when this module loads.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from finetune.adapters import PEFT_WEIGHTS
from finetune.backend import PairOutput, StepOutput
from finetune.config import TrainConfig
from finetune.data import Batch
from finetune.devices import pick_device
from finetune.distributed import Group, Solo, gathered_pairs, rank_pairs, rank_rows

OPTIMIZER_FILE = "optimizer.pt"


class TorchLoRABackend:
    """A transformers causal LM wrapped by PEFT, Adam on the LoRA parameters."""

    name = "torch"

    def __init__(self, config: TrainConfig, group: Group | None = None) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.config = config
        self.group: Group = group or Solo()
        self.device = pick_device()
        # fp32 on cpu and mps (fp16 training needs loss scaling; cpu bf16 would drift from
        # the MLX engine's numbers); bf16 on cuda.
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        # the LoRA A matrices and dropout masks come from torch's global generator
        torch.manual_seed(config.seed)
        quantization = None
        if config.quantize is not None:
            # QLoRA: bitsandbytes' 4-bit NF4 or 8-bit base, CUDA only (a clear ValueError
            # elsewhere, or without bitsandbytes: finetune/quantize.py)
            from finetune.quantize import torch_quantization_config

            quantization = torch_quantization_config(config.quantize, self.device == "cuda")
        if quantization is None:
            base = AutoModelForCausalLM.from_pretrained(str(config.model_path), dtype=dtype)
        else:
            from peft import prepare_model_for_kbit_training

            base = AutoModelForCausalLM.from_pretrained(
                str(config.model_path),
                dtype=dtype,
                quantization_config=quantization,
                device_map={"": torch.cuda.current_device()},
            )
            # freezes the base, casts its float leftovers (norms, head) to fp32, and turns
            # on gradient checkpointing, as QLoRA trains
            base = prepare_model_for_kbit_training(
                base, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        n_layers = int(base.config.num_hidden_layers)
        num_layers = config.lora.layers_to_adapt(n_layers)
        lora = config.lora
        # PEFT annotates lora_alpha as int but only ever divides by it; keep 16.0 as 16
        alpha: Any = int(lora.alpha) if float(lora.alpha).is_integer() else lora.alpha
        peft_config = LoraConfig(
            r=lora.rank,
            lora_alpha=alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            layers_to_transform=(
                list(range(n_layers - num_layers, n_layers)) if num_layers < n_layers else None
            ),
            layers_pattern="layers" if num_layers < n_layers else None,
            bias="none",
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():
            # PEFT asks transformers 5 a deprecated question (is_gradient_checkpointing)
            warnings.simplefilter("ignore", FutureWarning)
            self.model: Any = get_peft_model(base, peft_config)
        if quantization is None:  # bitsandbytes placed a quantized base already
            self.model.to(self.device)
        _check_targets(self.model, lora.target_modules)
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=config.learning_rate)

    def _forward(
        self, batch: Batch, scale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss (the mean over trained tokens, or their sum times ``scale``), trained
        tokens and greedy hits."""
        ids = torch.from_numpy(batch.ids).long().to(self.device)
        mask = torch.from_numpy(batch.targets_mask).to(self.device)
        targets = ids[:, 1:]
        logits = self.model(input_ids=ids[:, :-1], use_cache=False).logits.float()
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
        n_targets = mask.sum()
        loss = losses.sum() / n_targets.clamp(min=1) if scale is None else losses.sum() * scale
        correct = ((logits.argmax(dim=-1) == targets).float() * mask).sum()
        return loss, n_targets, correct

    def train_step(self, batch: Batch) -> StepOutput:
        """One Adam update on the batch (on several ranks: on this rank's rows, the
        gradients summed over the group; the figures returned are the whole batch's)."""
        self.model.train()
        if self.group.size == 1:
            loss, n_targets, correct = self._forward(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            return StepOutput(float(loss.item()), int(n_targets.item()), int(correct.item()))
        n_total = int(batch.targets_mask.sum())
        local = rank_rows(batch, self.group)
        # this rank's share of the global mean: the sum of the gradients is the whole
        # batch's gradient, as DDP's all-reduce would make it
        loss, n_targets, correct = self._forward(local, scale=1 / max(n_total, 1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sum_gradients()
        self.optimizer.step()
        total = self.group.all_sum(np.array([loss.item(), correct.item()]))
        return StepOutput(float(total[0]), n_total, round(float(total[1])))

    def _sum_gradients(self) -> None:
        """Sum the LoRA gradients over the group in one flat buffer (one collective)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.reshape(-1) for g in grads]).detach().cpu().numpy()
        summed = torch.from_numpy(self.group.all_sum(flat))
        offset = 0
        for p, g in zip(self.parameters, grads, strict=True):
            n = g.numel()
            p.grad = summed[offset : offset + n].view_as(g).to(g.device, g.dtype)
            offset += n

    def eval_step(self, batch: Batch) -> StepOutput:
        """Loss and accuracy with dropout off and no graph."""
        self.model.eval()
        with torch.no_grad():
            loss, n_targets, correct = self._forward(batch)
        self.model.train()
        return StepOutput(float(loss.item()), int(n_targets.item()), int(correct.item()))

    def save_adapter(self, directory: Path) -> None:
        """PEFT's ``adapter_model.safetensors`` + ``adapter_config.json``."""
        with warnings.catch_warnings():
            # the same deprecated question, asked again while PEFT writes its model card
            warnings.simplefilter("ignore", FutureWarning)
            self.model.save_pretrained(str(directory))

    def save_optimizer(self, directory: Path) -> None:
        """Adam's moments and step count."""
        torch.save(self.optimizer.state_dict(), Path(directory) / OPTIMIZER_FILE)

    def load_checkpoint(self, directory: Path) -> None:
        """Adapter weights (strictly: same LoRA layers) and optimizer state."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / PEFT_WEIGHTS).is_file():
            raise ValueError(f"{directory} holds no PEFT adapter ({PEFT_WEIGHTS})")
        result = set_peft_model_state_dict(self.model, load_file(str(directory / PEFT_WEIGHTS)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"{directory}: adapter weights do not match this run: {unexpected}")
        if (directory / OPTIMIZER_FILE).is_file():
            state = torch.load(directory / OPTIMIZER_FILE, weights_only=True)
            self.optimizer.load_state_dict(state)

    def load_adapter_weights(self, directory: Path) -> None:
        """Start from a parent fine-tune: its adapter's weights, strictly the same layers."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(directory)
        weights = load_file(str(directory / PEFT_WEIGHTS))
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", []):
            raise ValueError(f"{directory.name}: adapter weights do not match this run's layers")

    # ----------------------------------------------------------------- DPO

    def _pair_forward(
        self, batch: Batch, reference: np.ndarray, beta: float, scale: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """DPO's sigmoid loss over rows ``[chosen..., rejected...]`` (see mlx_lora._dpo_loss):
        the mean over the pairs, or their sum times ``scale``."""
        logps, logits, targets, mask = self._sequence_logps(batch)
        n = logps.shape[0] // 2
        ratios = logps - torch.as_tensor(reference, dtype=torch.float32, device=self.device)
        chosen, rejected = ratios[:n], ratios[n:]
        losses = F.softplus(-beta * (chosen - rejected))
        loss = losses.mean() if scale is None else losses.sum() * scale
        chosen_mask = mask[:n]
        correct = ((logits[:n].argmax(dim=-1) == targets[:n]).float() * chosen_mask).sum()
        return loss, chosen, rejected, chosen_mask.sum(), correct

    def _sequence_logps(
        self, batch: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(batch.ids).long().to(self.device)
        mask = torch.from_numpy(batch.targets_mask).to(self.device)
        targets = ids[:, 1:]
        logits = self.model(input_ids=ids[:, :-1], use_cache=False).logits.float()
        token_logps = -F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        return (token_logps * mask).sum(dim=-1), logits, targets, mask

    def sequence_logprobs(self, batch: Batch) -> np.ndarray:
        """Summed log-probability of each row's trained tokens, dropout off."""
        self.model.eval()
        with torch.no_grad():
            logps = self._sequence_logps(batch)[0]
        self.model.train()
        return logps.double().cpu().numpy()

    def pair_step(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """One Adam update on DPO's loss over a batch of pairs (on several ranks: this
        rank's pairs, the gradients summed over the group; figures for the whole batch)."""
        self.model.train()
        if self.group.size == 1:
            out = self._pair_forward(batch, reference, beta)
            self.optimizer.zero_grad(set_to_none=True)
            out[0].backward()
            self.optimizer.step()
            return _pair_output(out)
        n = batch.ids.shape[0] // 2
        local, local_ref, pairs = rank_pairs(batch, reference, self.group)
        out = self._pair_forward(local, local_ref, beta, scale=1 / n)
        self.optimizer.zero_grad(set_to_none=True)
        out[0].backward()
        self._sum_gradients()
        self.optimizer.step()
        result = _pair_output(out)
        n_targets = int(batch.targets_mask[:n].sum())
        return gathered_pairs(result, result.loss, pairs, n, self.group, n_targets)

    def pair_eval(self, batch: Batch, reference: np.ndarray, beta: float) -> PairOutput:
        """DPO's loss and log-ratios with dropout off and no graph."""
        self.model.eval()
        with torch.no_grad():
            out = self._pair_forward(batch, reference, beta)
        self.model.train()
        return _pair_output(out)

    # ----------------------------------------------------------------- evaluation

    def greedy(self, prompt_ids: list[int], max_tokens: int, stop_ids: set[int]) -> list[int]:
        """The greedy continuation of ``prompt_ids`` (``generate(do_sample=False)``, dropout
        off), without the stop token that ended it; at most ``max_tokens`` tokens."""
        from transformers import GenerationConfig

        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        stops = sorted(stop_ids)
        config = GenerationConfig(
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=stops or None,
            pad_token_id=stops[0] if stops else 0,
        )
        self.model.eval()
        try:
            with torch.no_grad():
                generated = self.model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config
                )
        finally:
            self.model.train()
        out = [int(t) for t in generated[0, len(prompt_ids) :].tolist()]
        for index, token in enumerate(out):
            if token in stop_ids:
                return out[:index]
        return out


def _check_targets(model: Any, targets: tuple[str, ...]) -> None:
    """Refuse a target that matched no layer (PEFT only complains when none matches)."""
    names = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    missing = [t for t in targets if not any(name.endswith(f".{t}") for name in names)]
    if missing:
        raise ValueError(f"target_modules not found in the model's blocks: {missing}")


def _pair_output(out: tuple[torch.Tensor, ...]) -> PairOutput:
    loss, chosen, rejected, n_targets, correct = out
    return PairOutput(
        loss=float(loss.item()),
        chosen=chosen.detach().double().cpu().numpy(),
        rejected=rejected.detach().double().cpu().numpy(),
        n_targets=int(n_targets.item()),
        n_correct=int(correct.item()),
    )
