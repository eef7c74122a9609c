"""What the server and an engine runner say to each other (pickled over a socket pair).

Server → runner: `Submit` a generation, `Cancel` it, `Call` an engine method (score,
stats, clear_cache). Runner → server: `Ready` once the engine is loaded (or `LoadFailed`),
then lists of `Event`s — a runner sends every item its worker made since its last send in
one message, so the per-token cost stays a fraction of a token's decode time.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from server.engine.base import GenerationParams, Sampled


@dataclass(frozen=True)
class Load:
    """How the runner loads its engine: `server.models.loading.load_engine`'s arguments."""

    backend: str
    path: str
    options: dict[str, int]
    context: int | None
    draft: str | None


@dataclass(frozen=True)
class Ready:
    """The loaded engine's facts, and its tokenizer (the server renders and detokenizes)."""

    backend: str
    model_path: str
    tokenizer: Any
    eos_token_ids: frozenset[int]
    context_length: int
    max_concurrency: int
    description: str
    pid: int
    #: the runner's resident memory before it loaded the weights (interpreter and engine
    #: libraries): what it holds above this is the model's (`RemoteEngine.resident_bytes`)
    baseline_rss: int = 0
    #: facts of an engine that is not a generator (the embedding engine's dimension, ...)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadFailed:
    message: str


@dataclass(frozen=True)
class GrammarSource:
    """A request's grammar, compiled again in the runner (where the logits are)."""

    text: str
    param: str
    eos: frozenset[int]


@dataclass(frozen=True)
class Submit:
    """Start a token stream (`adapter`: the LoRA adapter to apply, None for the base)."""

    request: int
    prompt_ids: list[int]
    params: GenerationParams  # without its constraint factory: see `grammar`
    grammar: GrammarSource | None = None
    adapter: str | None = None


@dataclass(frozen=True)
class Cancel:
    request: int


@dataclass(frozen=True)
class Call:
    """Run `method(*args)` on the engine, on its worker thread; the answer is one `Event`."""

    request: int
    method: str
    args: tuple[Any, ...] = ()
    adapter: str | None = None


@dataclass(frozen=True)
class Event:
    """One item of request `request`: `kind` is item (a `Sampled`, or a call's answer),
    done, or error (`value` is then a `Failure`)."""

    request: int
    kind: str
    value: Any = None


@dataclass(frozen=True)
class Failure:
    """An exception raised in the runner, rebuilt in the server (see `remote.rebuild`)."""

    kind: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


#: a token item on the wire: (request, token, logprob, top, cached_tokens)
_Token = tuple[int, int, float | None, tuple[tuple[int, float], ...], int | None]


def pack(events: list[Event]) -> bytes:
    """A runner's batch of events as it goes over the socket (`unpack` reads it).

    A token item travels as a plain tuple: pickling the two dataclasses took ~4x as
    long, once a token on the runner's side, between two decodes (and again to read).
    """
    flat: list[Event | _Token] = []
    for event in events:
        value = event.value
        if event.kind == "item" and type(value) is Sampled:
            flat.append((event.request, value.token, value.logprob, value.top, value.cached_tokens))
        else:
            flat.append(event)
    return pickle.dumps(flat, pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes) -> list[Event]:
    """The events `pack` sent."""
    return [
        Event(item[0], "item", Sampled(item[1], item[2], item[3], item[4]))
        if type(item) is tuple
        else item
        for item in pickle.loads(data)
    ]
