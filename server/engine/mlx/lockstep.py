"""Ranks of a sharded MLX model running the same forward passes in lockstep.

A model sharded across ranks (`server.engine.mlx.sharded`) computes every forward pass
on all of them together: tensor parallel layers sum their partial results across the
group, pipeline stages hand their activations on. So each rank must run the same passes,
in the same order, over the same token ids. Rank 0 decides them all (it serves HTTP,
schedules, samples, applies grammars); before each pass it sends the command to the
other ranks, the followers, which run the pass on their own KV cache and drop its logits.

A command is one `all_sum` of a fixed-size int32 buffer, which rank 0 fills and the
followers fill with zeros (mlx-lm's server shares its requests the same way):
`[kind, fresh, count, ids...]`. Kinds: `PREFILL` (a pass whose KV cache is what counts),
`LOGITS` (a pass whose logits are sampled or scored), `REST` (the sequence is over: wait
for the doorbell, `server.engine.mlx.doorbell`, before the next command) and `EXIT`;
`fresh` starts a new sequence (a new KV cache) first. A pass reads at most `CHUNK` ids;
longer inputs are split into several passes on every rank alike.

What each rank evaluates matters: a collective that one rank evaluates and another
skips leaves the group waiting for each other. So the kind says what to evaluate, and
every rank evaluates the same arrays of the same graph: after `PREFILL` the caches'
states (as `mlx_lm`'s prefill does: the last layer's output projections and MLP are not
needed, and are skipped on every rank), after `LOGITS` the logits.
"""

from __future__ import annotations

import threading
from typing import Any, cast

from server.engine.mlx.doorbell import BellLost, Doorbell

#: ids one command carries (one forward pass reads at most this many)
CHUNK = 512
_HEADER = 3
PREFILL, LOGITS, REST, EXIT = 1, 2, 3, 4


class RankLost(RuntimeError):
    """A collective failed: another rank is gone; the sharded model cannot serve any more."""


class Lockstep:
    """Rank 0's side: forward passes of the sharded model, each sent to the followers first.

    Called as `lockstep(inputs, cache=cache)`, as `mlx_lm.generate.generate_step` calls
    its model, it returns the evaluated logits. A cache it has not seen before starts a
    new sequence on every rank; `rest(cache)` ends one. Passes are serialized by a lock, so
    `close` (from another thread) never comes between a command and its pass.
    """

    def __init__(self, model: Any, group: Any, bell: Doorbell | None = None) -> None:
        import mlx.core as mx

        self._mx = mx
        self.model = model
        self.group = group
        self._bell = bell
        #: the followers wait on the doorbell (they start so once loaded)
        self._resting = bell is not None
        self._lock = threading.Lock()
        self._cache: Any = None
        #: why passes are refused now (closed, or a rank was lost); None: serving
        self.stopped: str | None = None

    def __call__(self, inputs: Any, cache: Any = None, **_: Any) -> Any:
        ids = [int(i) for i in inputs.reshape(-1).tolist()]
        outputs = [self._pass(LOGITS, ids[s : s + CHUNK], cache) for s in range(0, len(ids), CHUNK)]
        return outputs[0] if len(outputs) == 1 else self._mx.concatenate(outputs, axis=1)

    def prefill(self, ids: list[int], cache: Any) -> None:
        """Read `ids` into `cache` (and the followers' caches), in passes of `CHUNK` ids."""
        for start in range(0, len(ids), CHUNK):
            self._pass(PREFILL, ids[start : start + CHUNK], cache)

    def rest(self, cache: Any) -> None:
        """The sequence of `cache` is over: the followers wait on the doorbell until the
        next one (nothing to do once another sequence has started)."""
        with self._lock:
            if cache is not self._cache:
                return
            if self.stopped is None and not self._resting and self._bell is not None:
                self._guarded(lambda: self._send(REST, [], False))
                self._resting = True
            self._cache = None

    def _pass(self, kind: int, ids: list[int], cache: Any) -> Any:
        mx = self._mx
        with self._lock:
            fresh = cache is not self._cache

            def run() -> Any:
                self._send(kind, ids, fresh)
                logits = self.model(mx.array(ids)[None], cache=cache)
                mx.eval(logits if kind == LOGITS else [c.state for c in cache])
                return logits

            logits = self._guarded(run)
            self._cache = cache
        return logits

    def _guarded(self, run: Any) -> Any:
        """`run()` under the lock, unless stopped; a lost rank stops every later pass."""
        if self.stopped is not None:
            raise RankLost(self.stopped)
        try:
            return run()
        except (RuntimeError, BellLost) as exc:  # the ring's "connection ... was lost"
            self.stopped = f"a rank of the sharded model was lost: {exc}"
            raise RankLost(self.stopped) from exc

    def close(self, timeout: float = 5.0) -> bool:
        """Tell the followers to exit; refuse passes from now on. True: they were told.

        Waits at most `timeout` seconds (for a pass in flight, and for the followers:
        with one already gone the collective fails or waits).
        """
        told: list[bool] = []

        def send_exit() -> None:
            with self._lock:
                if self.stopped is not None:
                    return
                try:
                    self._send(EXIT, [], False)
                except (RuntimeError, BellLost):
                    return
                finally:
                    self.stopped = "the sharded model has shut down"
                told.append(True)
            if self._bell is not None:
                self._bell.close()

        sender = threading.Thread(target=send_exit, name="pomar-lockstep-exit", daemon=True)
        sender.start()
        sender.join(timeout)
        return bool(told)

    def _send(self, kind: int, ids: list[int], fresh: bool) -> None:
        if self.group.size() == 1:
            return
        mx = self._mx
        if self._resting and self._bell is not None:
            self._bell.ring()
            self._resting = False
        buffer = mx.zeros((_HEADER + CHUNK,), dtype=mx.int32)
        buffer[: _HEADER + len(ids)] = mx.array([kind, int(fresh), len(ids), *ids], dtype=mx.int32)
        mx.eval(mx.distributed.all_sum(buffer, group=self.group, stream=mx.cpu))


def follow(model: Any, group: Any, bell: Doorbell | None = None) -> int:
    """A follower rank's loop: run rank 0's passes until it says `EXIT`.

    Between sequences it waits on `bell` (when there is one). Returns how many passes it
    ran. Raises `RankLost` when rank 0 goes away without saying so.
    """
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache: Any = None
    passes = 0
    resting = bell is not None
    zeros = mx.zeros((_HEADER + CHUNK,), dtype=mx.int32)
    while True:
        try:
            if resting and bell is not None:
                bell.wait()
                resting = False
            buffer = mx.distributed.all_sum(zeros, group=group, stream=mx.cpu)
            kind, fresh, count = cast(list[int], buffer[:_HEADER].tolist())
            if kind == EXIT:
                return passes
            if kind == REST:
                resting, cache = bell is not None, None
                continue
            if fresh or cache is None:
                cache = make_prompt_cache(model)
            logits = model(buffer[_HEADER : _HEADER + count][None], cache=cache)
            mx.eval(logits if kind == LOGITS else [c.state for c in cache])
        except (RuntimeError, BellLost) as exc:
            raise RankLost(f"rank 0 of the sharded model was lost: {exc}") from exc
        passes += 1
