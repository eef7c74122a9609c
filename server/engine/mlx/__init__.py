"""The MLX engine: mlx-lm on Apple GPUs (Metal) or the CPU, batching and a prompt cache."""
