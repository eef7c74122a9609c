"""Fine-tuning jobs: the background runner."""
