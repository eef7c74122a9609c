"""The torch engine: transformers (+ PEFT adapters) on CUDA, MPS or the CPU."""
