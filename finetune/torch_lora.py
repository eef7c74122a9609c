"""torch backend: transformers + PEFT LoRA with the same contract as the MLX one.

Adapters are written with PEFT's ``save_pretrained`` (``PeftModel.from_pretrained`` loads
them); :func:`finetune.adapters.convert_peft_to_mlx` turns one into mlx-lm's format.
torch, transformers and peft are imported only when this module loads.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from finetune.adapters import PEFT_WEIGHTS
from finetune.backend import StepOutput
from finetune.config import TrainConfig
from finetune.data import Batch
from finetune.devices import pick_device

OPTIMIZER_FILE = "optimizer.pt"


class TorchLoRABackend:
    """A transformers causal LM wrapped by PEFT, Adam on the LoRA parameters."""

    name = "torch"

    def __init__(self, config: TrainConfig) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        self.config = config
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

    def _forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = torch.from_numpy(batch.ids).long().to(self.device)
        mask = torch.from_numpy(batch.targets_mask).to(self.device)
        targets = ids[:, 1:]
        logits = self.model(input_ids=ids[:, :-1], use_cache=False).logits.float()
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none") * mask
        n_targets = mask.sum()
        loss = losses.sum() / n_targets.clamp(min=1)
        correct = ((logits.argmax(dim=-1) == targets).float() * mask).sum()
        return loss, n_targets, correct

    def train_step(self, batch: Batch) -> StepOutput:
        """One Adam update on the batch."""
        self.model.train()
        loss, n_targets, correct = self._forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return StepOutput(float(loss.item()), int(n_targets.item()), int(correct.item()))

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


def _check_targets(model: Any, targets: tuple[str, ...]) -> None:
    """Refuse a target that matched no layer (PEFT only complains when none matches)."""
    names = [name for name, module in model.named_modules() if hasattr(module, "lora_A")]
    missing = [t for t in targets if not any(name.endswith(f".{t}") for name in names)]
    if missing:
        raise ValueError(f"target_modules not found in the model's blocks: {missing}")
