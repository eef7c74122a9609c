"""The Engine interface, its MLX and torch backends, and the generation worker."""
