"""Temporal split, per-user chunking and length-bucketed padded batches.

A *span* is a run of consecutive rows of one user, ``[start, end)``, with ``target_start``: the
rows ``[target_start, end)`` are the span's targets (the rows a loss or metric counts) and the rows
before it are context only. Training spans cover each user's history in non-overlapping chunks
(every row a target exactly once); evaluation spans reach back for context and target only
test-window rows, each exactly once.

Batches are numpy arrays, padded on the right; :meth:`Batch.to_torch` is the single place where
they become tensors, so the model never converts numpy itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from model.contract import DAY
from model.data.events import Events

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TemporalSplit:
    """A global temporal split: train on ``timestamp < split_time``, test on
    ``split_time <= timestamp < end_time``; later events are not used."""

    split_time: int
    end_time: int

    @classmethod
    def last_days(cls, events: Events, test_days: float = 7.0) -> TemporalSplit:
        """The last ``test_days`` days of the data set are the test window."""
        end = int(events.timestamp.max()) + 1
        return cls(split_time=end - int(test_days * DAY), end_time=end)

    @classmethod
    def last_fraction(cls, events: Events, test_fraction: float = 0.2) -> TemporalSplit:
        """The last ``test_fraction`` of the data set's time range is the test window."""
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        first, last = int(events.timestamp.min()), int(events.timestamp.max())
        return cls(
            split_time=first + int((1.0 - test_fraction) * (last - first)), end_time=last + 1
        )

    def train(self, events: Events) -> Events:
        """Events before the split."""
        return events.take(events.timestamp < self.split_time)

    def until_end(self, events: Events) -> Events:
        """Events before the end of the test window: the context an evaluation may see."""
        return events.take(events.timestamp < self.end_time)

    def in_test(self, timestamp: np.ndarray) -> np.ndarray:
        """(N,) bool: which timestamps fall inside the test window."""
        return (timestamp >= self.split_time) & (timestamp < self.end_time)


@dataclass(frozen=True)
class Spans:
    """Row ranges into an :class:`Events` table. All arrays are (S,) int64."""

    start: np.ndarray
    end: np.ndarray
    target_start: np.ndarray

    def __len__(self) -> int:
        return len(self.start)

    @property
    def length(self) -> np.ndarray:
        return self.end - self.start

    def take(self, index: np.ndarray) -> Spans:
        return Spans(self.start[index], self.end[index], self.target_start[index])


def chunk_spans(offsets: np.ndarray, max_len: int) -> Spans:
    """Split every user's history into non-overlapping chunks of at most ``max_len`` events.

    ``offsets`` is (U + 1,) as from :meth:`Events.user_offsets`. Chunks are cut from the most recent
    event backwards, so the newest chunk is full and only the oldest one is short. Every row is in
    exactly one chunk, and every row is a target.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    user_start, user_end = offsets[:-1], offsets[1:]
    n_chunks = -(-(user_end - user_start) // max_len)  # ceil division, (U,)
    user = np.repeat(np.arange(len(user_start)), n_chunks)  # (S,)
    first_chunk = np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    k = np.arange(len(user)) - first_chunk  # 0 for the newest chunk of each user
    end = user_end[user] - k * max_len
    start = np.maximum(end - max_len, user_start[user])
    order = np.argsort(start, kind="stable")  # oldest first, users in table order
    return Spans(start[order], end[order], start[order].copy())


def eval_spans(events: Events, split: TemporalSplit, max_len: int) -> Spans:
    """Spans that target each test-window event exactly once, with as much history as fits.

    ``events`` must not extend past ``split.end_time`` (use :meth:`TemporalSplit.until_end`).
    For a user whose test events are rows ``[a, b)``, the first span ends at ``b`` and reaches back
    ``max_len`` rows; its targets are the test rows inside it. If the user has more than
    ``max_len`` test events, further spans cover the earlier ones the same way.
    """
    if len(events) and int(events.timestamp.max()) >= split.end_time:
        raise ValueError(
            "events extend past the end of the test window; pass split.until_end(events)"
        )
    _, offsets = events.user_offsets()
    is_test = split.in_test(events.timestamp)
    user_start, user_end = offsets[:-1], offsets[1:]
    # Rows are sorted by time within a user, so the test rows of a user are a suffix [a, b).
    n_test = (
        np.add.reduceat(is_test.astype(np.int64), user_start) if len(events) else user_start * 0
    )
    has_test = n_test > 0
    return covering_spans(
        user_start[has_test], (user_end - n_test)[has_test], user_end[has_test], max_len
    )


def covering_spans(first: np.ndarray, a: np.ndarray, b: np.ndarray, max_len: int) -> Spans:
    """Spans that target every row of the ranges ``[a, b)`` exactly once, each target with as
    much context as fits (back to ``first``, the row where its user's history starts).

    All arrays are (U,) int64 with ``first <= a < b``. The first span of a range ends at ``b``
    and reaches back ``max_len`` rows; if the range is longer, further spans cover the rest the
    same way. Spans are sorted by start.
    """
    starts, ends, targets = [], [], []
    while len(b):
        start = np.maximum(b - max_len, first)
        target_start = np.maximum(start, a)
        starts.append(start)
        ends.append(b)
        targets.append(target_start)
        more = target_start > a
        a, b, first = a[more], target_start[more], first[more]
    if not starts:
        empty = np.zeros(0, dtype=np.int64)
        return Spans(empty, empty, empty)
    start, end, target = (np.concatenate(x).astype(np.int64) for x in (starts, ends, targets))
    order = np.argsort(start, kind="stable")
    return Spans(start[order], end[order], target[order])


@dataclass(frozen=True)
class Batch:
    """Padded event features of B spans; padding is on the right and is zero / False / NaN."""

    user_id: np.ndarray  # (B,) int64
    lengths: np.ndarray  # (B,) int64, number of real events per row
    item_id: np.ndarray  # (B, L) int64
    artist_id: np.ndarray  # (B, L) int64
    timestamp: np.ndarray  # (B, L) int64
    source: np.ndarray  # (B, L) int64
    played_ratio: np.ndarray  # (B, L) float32
    liked: np.ndarray  # (B, L) bool
    disliked: np.ndarray  # (B, L) bool
    target_mask: np.ndarray  # (B, L) bool, rows counted by a loss or metric
    row_index: np.ndarray  # (B, L) int64, row in the Events table, -1 where padded

    @property
    def padding_mask(self) -> np.ndarray:
        """(B, L) bool: True where the position holds a real event."""
        return np.arange(self.item_id.shape[1]) < self.lengths[:, None]

    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Every field as a tensor on ``device`` (int64, float32 or bool)."""
        import torch

        return {
            name: torch.from_numpy(np.ascontiguousarray(value)).to(device, non_blocking=True)
            for name, value in vars(self).items()
        }


def make_batch(events: Events, spans: Spans, pad_to_multiple: int = 8) -> Batch:
    """Gather the spans' rows into right-padded arrays of width ``max(length)`` rounded up to a
    multiple of ``pad_to_multiple``."""
    lengths = spans.length
    width = int(lengths.max()) if len(spans) else 0
    width = -(-width // pad_to_multiple) * pad_to_multiple
    position = np.arange(width)
    real = position < lengths[:, None]  # (B, L)
    rows = np.where(real, spans.start[:, None] + position, 0)  # (B, L)
    target = real & (rows >= spans.target_start[:, None])

    def gather(column: np.ndarray, fill: Any, dtype: Any = None) -> np.ndarray:
        values = column[rows] if len(column) else np.zeros(rows.shape, dtype=column.dtype)
        return np.where(real, values, fill).astype(dtype or column.dtype)

    return Batch(
        user_id=events.user_id[spans.start] if len(spans) else np.zeros(0, np.int64),
        lengths=lengths.astype(np.int64),
        item_id=gather(events.item_id, 0),
        artist_id=gather(events.artist_id, 0),
        timestamp=gather(events.timestamp, 0),
        source=gather(events.source, 0, np.int64),
        played_ratio=gather(events.played_ratio, np.nan),
        liked=gather(events.liked, False),
        disliked=gather(events.disliked, False),
        target_mask=target,
        row_index=np.where(real, rows, -1),
    )


def bucket_batches(
    spans: Spans,
    *,
    batch_size: int,
    max_tokens: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    pool_batches: int = 64,
) -> list[np.ndarray]:
    """Group spans into batches of similar length to keep padding low.

    Returns a list of index arrays into ``spans``. A batch holds at most ``batch_size`` spans and,
    when ``max_tokens`` is given, at most ``max_tokens`` padded positions (B x longest span).
    Without ``shuffle`` spans are sorted by length (deterministic, used for export and evaluation).
    With ``shuffle`` they are shuffled, sorted by length within pools of ``pool_batches`` batches,
    and the batches shuffled again: random order, little padding, deterministic for a seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lengths = spans.length
    rng = np.random.default_rng(seed)
    if shuffle:
        order = rng.permutation(len(spans))
        pool = np.arange(len(order)) // (batch_size * pool_batches)
        order = order[np.lexsort((lengths[order], pool))]  # by length within each pool
    else:
        order = np.argsort(lengths, kind="stable")
    batches: list[np.ndarray] = []
    begin = 0
    while begin < len(order):
        end = min(begin + batch_size, len(order))
        if max_tokens is not None:
            # Padded size of each prefix of the candidate batch: its size x its longest span.
            longest = np.maximum.accumulate(lengths[order[begin:end]])
            fits = np.flatnonzero(longest * np.arange(1, end - begin + 1) <= max_tokens)
            end = begin + (int(fits[-1]) + 1 if fits.size else 1)
        batches.append(order[begin:end])
        begin = end
    if shuffle:
        rng.shuffle(batches)
    return batches


def iter_batches(
    events: Events,
    spans: Spans,
    *,
    batch_size: int,
    max_tokens: int | None = None,
    shuffle: bool = False,
    seed: int = 0,
    pad_to_multiple: int = 8,
) -> Iterator[Batch]:
    """Padded :class:`Batch` es of the spans, bucketed by length (see :func:`bucket_batches`)."""
    for index in bucket_batches(
        spans, batch_size=batch_size, max_tokens=max_tokens, shuffle=shuffle, seed=seed
    ):
        yield make_batch(events, spans.take(index), pad_to_multiple=pad_to_multiple)


def sample_users(events: Events, split: TemporalSplit, n: int, seed: int = 0) -> Events:
    """The events of ``n`` users drawn at random (seeded) among those with test-window events."""
    users = np.unique(events.user_id[split.in_test(events.timestamp)])
    if len(users) <= n:
        return events
    chosen = np.random.default_rng(seed).choice(users, n, replace=False)
    return events.take(np.isin(events.user_id, chosen))
