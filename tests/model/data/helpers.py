"""Small hand-made event tables for the data tests."""

from __future__ import annotations

import numpy as np

from model.data.events import Events


def make_events(
    user_id: list[int] | np.ndarray, timestamp: list[int] | np.ndarray | None = None
) -> Events:
    """Events for the given users (sorted input expected); other columns get plausible values."""
    user = np.asarray(user_id, dtype=np.int64)
    n = len(user)
    ts = (
        np.asarray(timestamp, dtype=np.int64)
        if timestamp is not None
        else np.arange(n, dtype=np.int64) * 10
    )
    return Events.from_arrays(
        user_id=user,
        item_id=np.arange(n) % 7 + 100,
        timestamp=ts,
        source=np.arange(n) % 3,
        artist_id=np.where(np.arange(n) % 2 == 0, 5, -1),
        played_ratio=np.where(np.arange(n) % 4 == 0, np.nan, (np.arange(n) % 5) / 4.0),
        liked=np.arange(n) % 5 == 0,
        disliked=np.arange(n) % 11 == 0,
    )
