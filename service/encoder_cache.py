"""The runtime encoder's per-user key/value cache (docs/serving.md, "Near-real-time").

A :class:`State` is what the encoder holds after a user's window of live history: every layer's
keys and values, the taste sums of the retrieval query, the user vector, and the window itself (so
that the next request can be checked against it). A request whose window

* equals the cached one is answered from the cache (``hit``: no encoder work);
* extends it costs its new events only (``extend``: the step graph, one token per layer each);
* does anything else — a new user (``miss``), a history that no longer starts where the cached
  one did (``diverged``: an edited history, or one past ``max_len`` whose window rolled) — is
  encoded in full, and its state replaces the entry.

:class:`EncoderCache` bounds the states' bytes and evicts the least recently used. It belongs to
one bundle's encoder (a bundle swap starts an empty one) and to the encoder's worker thread: no
lock. The keys and values are ONNX Runtime values on the encoder's device (the GPU's memory when
it runs there).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUTCOMES = ("hit", "extend", "miss", "diverged")


@dataclass
class State:
    """The encoder's state after ``events`` (a HISTORY_EVENT window, oldest first)."""

    events: np.ndarray
    vector: np.ndarray  # [dim + retrieval_dim]
    keys: Any  # onnxruntime.OrtValue [n_layers, 1, H, len(events), D/H] on the encoder's device
    values: Any
    taste_sum: np.ndarray  # [1, R]
    positives: np.ndarray  # [1]

    @property
    def nbytes(self) -> int:
        kv = 2 * int(np.prod(self.keys.shape())) * 4  # float32 keys and values
        return kv + self.events.nbytes + self.vector.nbytes + self.taste_sum.nbytes + 64


def classify(state: State | None, window: np.ndarray) -> str:
    """How a cached ``state`` serves ``window``: one of :data:`OUTCOMES`."""
    if state is None:
        return "miss"
    n = len(state.events)
    if len(window) < n or window[:n].tobytes() != state.events.tobytes():
        return "diverged"
    return "hit" if len(window) == n else "extend"


@dataclass
class CacheReport:
    """What one batch did, for the service's metrics."""

    outcomes: Counter[str] = field(default_factory=Counter)
    full_tokens: int = 0  # events encoded by full encodes
    step_tokens: int = 0  # events encoded by steps
    bytes: int = 0  # the cache's size after the batch
    users: int = 0


class EncoderCache:
    """States by user, least recently used first out, at most ``max_bytes`` in all (a state
    larger than that is not kept)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._states: OrderedDict[int, State] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def get(self, user: int) -> State | None:
        state = self._states.get(user)
        if state is not None:
            self._states.move_to_end(user)
        return state

    def put(self, user: int, state: State) -> None:
        self.drop(user)
        size = state.nbytes
        if size > self.max_bytes:
            return
        while self._states and self.bytes + size > self.max_bytes:
            _, evicted = self._states.popitem(last=False)
            self.bytes -= evicted.nbytes
        self._states[user] = state
        self.bytes += size

    def drop(self, user: int) -> None:
        old = self._states.pop(user, None)
        if old is not None:
            self.bytes -= old.nbytes

    def clear(self) -> None:
        self._states.clear()
        self.bytes = 0
