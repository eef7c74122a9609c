"""pomar: an OpenAI-compatible local inference and fine-tuning server."""

__version__ = "0.1.0"
