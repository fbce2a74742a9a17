"""What the offline stage hands to ``index/`` and ``service/``: file names, the encoder's inputs
and the packed form of one history event. Numpy only, so the serving side can import it without
torch."""

from __future__ import annotations

import numpy as np

# Timestamps are int64 seconds since the Unix epoch (UTC), in [0, MAX_TIMESTAMP].
HOUR, DAY = 3_600, 86_400
# The defaults every stage shares, as durations (``parse_duration``): the daily bundle's lag, and
# the silence that ends a session.
DEFAULT_LAG = "1d"
DEFAULT_SESSION_GAP = "30m"
# Publishing to Redis: how long the versions a publish replaces stay readable, and the vectors
# written per MULTI/EXEC transaction.
PUBLISH_GRACE = "1d"
PUBLISH_CHUNK = 4_096
MAX_TIMESTAMP = 2**32 - 1  # 2106-02-07: past any log, far from overflowing a time gap
MAX_PLAYED_RATIO = 10.0  # >1 means the user replayed parts of the item (Yambda goes past 100%)

ENCODER_FILE = "encoder.onnx"
EXPORT_MANIFEST = "export.json"
# The arrays of an export directory (``<name>.npy``), each with its dtype and rank.
EXPORT_ARRAYS: dict[str, tuple[str, int]] = {
    "item_ids": ("int64", 1),  # [n_items], sorted
    "item_artist_ids": ("int64", 1),  # [n_items], -1 when unknown
    "item_vectors": ("float32", 2),  # [n_items, dim]: the ranking space (/score)
    "retrieval_item_vectors": ("float32", 2),  # [n_items, retrieval_dim]: /candidates
    "user_ids": ("int64", 1),  # [n_users], sorted
    "user_vectors": ("float32", 2),  # [n_users, dim + retrieval_dim]: ranking | retrieval
    "popular": ("int64", 1),  # item ids, most popular first
}
# The encoder's inputs, in order: [B, L] event features (right-padded) and [B] lengths.
ENCODER_INPUTS = (
    "item_id",  # int64
    "artist_id",  # int64, -1 when unknown
    "timestamp",  # int64 seconds
    "source",  # int64
    "played_ratio",  # float32, NaN when not a consumption
    "liked",  # bool
    "disliked",  # bool
    "lengths",  # int64 [B], real events per row (>= 1)
)
ENCODER_OUTPUT = "user_vector"  # [B, dim + retrieval_dim]: the ranking vector, then retrieval
# The encoder's state after each row's last event, its further outputs (the service's
# key/value cache): every layer's keys and values [n_layers, B, H, L, D/H] (past the row's length:
# padding), the sum of the retrieval embeddings of its positive events [B, R] and their number [B].
CACHE_OUTPUTS = ("keys", "values", "taste_sum", "positives")
# The step graph: new events [B, S] after a cached state (every row of a batch with the same number
# P of cached events) -> the user vector and the state after them (keys and values [.., P + S, ..]).
STEP_FILE = "encoder_step.onnx"
STEP_INPUTS = (
    *ENCODER_INPUTS,  # the new events; ``lengths``: real new events per row (>= 1)
    "past_keys",  # float32 [n_layers, B, H, P, D/H]
    "past_values",  # float32 [n_layers, B, H, P, D/H]
    "last_timestamp",  # int64 [B]: the last cached event's time (the first new event's gap)
    "past_taste_sum",  # float32 [B, R]
    "past_positives",  # float32 [B]
)
OPSET = 17

# One event of a live history as stored in Redis (little-endian, packed: 29 bytes).
HISTORY_EVENT = np.dtype(
    [
        ("item_id", "<i8"),
        ("artist_id", "<i8"),
        ("timestamp", "<i8"),
        ("source", "<i2"),
        ("played_ratio", "<f4"),
        ("liked", "?"),
        ("disliked", "?"),
    ]
)
