"""The runner's batches on the wire (`wire.pack` / `wire.unpack`): token items travel as
tuples and come back as the same events; everything else goes as itself."""

from __future__ import annotations

from server.engine.base import Sampled
from server.engine.runner.wire import Event, Failure, pack, unpack


def test_a_batch_comes_back_as_it_was_sent() -> None:
    batch = [
        Event(1, "item", Sampled(7)),
        Event(1, "item", Sampled(8, -0.25, ((8, -0.25), (3, -1.5)), cached_tokens=12)),
        Event(2, "item", [Sampled(4, -2.0), Sampled(5, -0.5)]),  # a call's answer (score)
        Event(2, "item", {"max_batch_size": 4}),  # stats
        Event(1, "done"),
        Event(3, "error", Failure("InvalidRequest", "no", {"status_code": 400})),
    ]
    assert unpack(pack(batch)) == batch


def test_tokens_are_plain_tuples_on_the_wire() -> None:
    import pickle

    flat = pickle.loads(pack([Event(5, "item", Sampled(9, -0.1, ((9, -0.1),), None))]))
    assert flat == [(5, 9, -0.1, ((9, -0.1),), None)]
