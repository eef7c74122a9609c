"""Supervision of engine runners (`engine_process`): restart with back-off, or give up.

A runner that died is noticed by the next request for its model: the registry drops the
dead model and loads it again after a back-off (0.5 s, then 1 s, ...). A model whose
runner dies `MAX_CRASHES` times in a row, with no request completed in between, is
marked failed and answered with a 503 `model_failed` until it is loaded again on purpose.
"""

from __future__ import annotations

import asyncio
import logging

from server.errors import PomarError

log = logging.getLogger(__name__)

MAX_CRASHES = 3
BACKOFF_S = 0.5


class ModelFailed(PomarError):
    """A model whose runner keeps dying (503) until it is loaded again on purpose."""

    status_code = 503
    error_type = "server_error"
    code = "model_failed"


class Supervisor:
    """Runner deaths and restarts per model id."""

    def __init__(self) -> None:
        self._in_a_row: dict[str, int] = {}
        self._failed: dict[str, str] = {}
        #: restarts per model since the server started (for `/health` and `/metrics`)
        self.restarts: dict[str, int] = {}

    def check(self, model_id: str) -> None:
        """Raise `ModelFailed` for a model marked failed."""
        how = self._failed.get(model_id)
        if how is not None:
            raise ModelFailed(
                f"Model '{model_id}' is marked failed: its engine crashed {MAX_CRASHES} times "
                f"in a row (last: {how}). The server log says why; load it again to retry."
            )

    async def before_restart(self, model_id: str, how: str, served: int) -> None:
        """Count a death (`served`: requests the runner completed); wait, or give up."""
        n = 1 if served else self._in_a_row.get(model_id, 0) + 1
        self._in_a_row[model_id] = n
        if n >= MAX_CRASHES:
            self._failed[model_id] = how
            log.error("model %s marked failed: its runner died %d times in a row", model_id, n)
            self.check(model_id)
        self.restarts[model_id] = self.restarts.get(model_id, 0) + 1
        wait = BACKOFF_S * 2 ** (n - 1)
        log.warning("restarting the runner of %s in %.1f s (it died: %s)", model_id, wait, how)
        await asyncio.sleep(wait)

    def failed(self) -> dict[str, str]:
        """Models marked failed, and how their runner last died."""
        return dict(self._failed)

    def reset(self, model_id: str) -> None:
        """Forget a model's deaths (it is loaded again on purpose)."""
        self._in_a_row.pop(model_id, None)
        self._failed.pop(model_id, None)
