"""Engine runners: each loaded model's engine in its own process (`POMAR_ENGINE_PROCESS`)."""
