"""Small event tables for tests, written as rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from model.data.events import COLUMNS, Events


def events_from(**columns: Any) -> Events:
    """Events from ``user_id``, ``item_id`` and ``timestamp`` sequences and any other columns,
    the rest at their contract defaults (organic, unknown artist, not a consumption, no
    feedback), sorted by ``(user_id, timestamp)`` as the contract wants."""
    n = len(columns["user_id"])
    defaults = {
        "source": np.zeros(n),
        "artist_id": np.full(n, -1),
        "played_ratio": np.full(n, np.nan),
        "liked": np.zeros(n, bool),
        "disliked": np.zeros(n, bool),
    }
    arrays = {**defaults, **{k: np.asarray(v) for k, v in columns.items()}}
    order = np.lexsort((arrays["timestamp"], arrays["user_id"]))
    return Events.from_arrays(**{c: arrays[c][order] for c in COLUMNS})
