"""LoRA fine-tuning: one config, callbacks, MLX and torch backends."""
