from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.contract import DAY
from model.data.batching import (
    Spans,
    TemporalSplit,
    bucket_batches,
    chunk_spans,
    eval_spans,
    iter_batches,
    make_batch,
)
from model.data.events import Events
from tests.model.data.helpers import make_events

history_lengths = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=25)


def events_from_lengths(lengths: list[int], seed: int = 0) -> Events:
    """Users 1..U with the given numbers of events, times spread over 30 days."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    times = np.concatenate([np.sort(rng.integers(0, 30 * DAY, n)) for n in lengths])
    return make_events(users, times)


@given(lengths=history_lengths, max_len=st.integers(min_value=1, max_value=16))
def test_every_event_is_in_exactly_one_chunk(lengths: list[int], max_len: int) -> None:
    events = events_from_lengths(lengths)
    _, offsets = events.user_offsets()
    spans = chunk_spans(offsets, max_len)
    covered = np.concatenate([np.arange(s, e) for s, e in zip(spans.start, spans.end, strict=True)])
    assert np.array_equal(np.sort(covered), np.arange(len(events)))  # exactly once
    assert (spans.length >= 1).all() and (spans.length <= max_len).all()
    assert (
        events.user_id[spans.start] == events.user_id[spans.end - 1]
    ).all()  # one user per chunk
    assert np.array_equal(spans.target_start, spans.start)  # training: every event is a target
    # Cut from the newest event backwards: only a user's oldest chunk may be short.
    newest = np.isin(spans.end, offsets[1:])
    assert (
        spans.length[newest]
        == np.minimum(np.diff(offsets), max_len)[np.searchsorted(offsets[1:], spans.end[newest])]
    ).all()


@given(
    lengths=history_lengths,
    max_len=st.integers(min_value=1, max_value=16),
    batch_size=st.integers(min_value=1, max_value=7),
    shuffle=st.booleans(),
)
@settings(deadline=None)
def test_batches_hold_every_event_once_with_right_padding(
    lengths: list[int], max_len: int, batch_size: int, shuffle: bool
) -> None:
    events = events_from_lengths(lengths)
    spans = chunk_spans(events.user_offsets()[1], max_len)
    seen = []
    for batch in iter_batches(events, spans, batch_size=batch_size, shuffle=shuffle, seed=3):
        real = batch.padding_mask
        assert batch.item_id.shape[0] <= batch_size and batch.item_id.shape[1] % 8 == 0
        assert np.array_equal(real.sum(1), batch.lengths)
        rows = batch.row_index[real]
        seen.append(rows)
        assert np.array_equal(batch.item_id[real], events.item_id[rows])
        assert np.array_equal(batch.timestamp[real], events.timestamp[rows])
        assert np.array_equal(batch.played_ratio[real], events.played_ratio[rows], equal_nan=True)
        assert (
            (batch.item_id[~real] == 0).all()
            and not batch.liked[~real].any()
            and (batch.row_index[~real] == -1).all()
        )
        assert np.array_equal(batch.target_mask, real)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(events)))


def test_bucketing_keeps_padding_low_and_respects_max_tokens() -> None:
    lengths = [1, 2, 3, 50, 51, 52, 100, 99, 4, 49, 98, 5] * 5
    events = events_from_lengths(lengths)
    spans = chunk_spans(events.user_offsets()[1], max_len=128)
    padded = sum(
        b.item_id.size for b in iter_batches(events, spans, batch_size=4, pad_to_multiple=1)
    )
    order = np.random.default_rng(0).permutation(len(spans))
    unbucketed = sum(
        make_batch(events, spans.take(order[i : i + 4]), pad_to_multiple=1).item_id.size
        for i in range(0, len(order), 4)
    )
    assert padded <= 1.1 * len(events) < unbucketed
    for index in bucket_batches(spans, batch_size=64, max_tokens=200, shuffle=True, seed=1):
        assert len(index) * spans.length[index].max() <= 200 or len(index) == 1


def test_shuffled_batches_are_deterministic_for_a_seed() -> None:
    spans = chunk_spans(
        events_from_lengths([5, 9, 3, 7, 2, 8, 1, 6] * 4).user_offsets()[1], max_len=4
    )

    def order(seed: int) -> list[list[int]]:
        return [b.tolist() for b in bucket_batches(spans, batch_size=3, shuffle=True, seed=seed)]

    assert order(1) == order(1) != order(2)


def test_temporal_split_by_days_and_by_fraction() -> None:
    events = make_events([1, 1, 1, 2, 2], timestamp=[0, 5 * DAY, 9 * DAY, DAY, 10 * DAY - 1])
    split = TemporalSplit.last_days(events, test_days=2)
    assert (split.split_time, split.end_time) == (8 * DAY, 10 * DAY)
    assert split.train(events).timestamp.tolist() == [0, 5 * DAY, DAY]
    assert split.in_test(events.timestamp).tolist() == [False, False, True, False, True]
    by_fraction = TemporalSplit.last_fraction(events, 0.2)
    assert by_fraction.split_time == int(0.8 * (10 * DAY - 1))


@given(
    lengths=history_lengths,
    max_len=st.integers(min_value=1, max_value=12),
    test_days=st.floats(min_value=0.5, max_value=29.0),
    seed=st.integers(0, 1000),
)
@settings(deadline=None)
def test_eval_masks_select_exactly_the_test_window(
    lengths: list[int], max_len: int, test_days: float, seed: int
) -> None:
    events = events_from_lengths(lengths, seed)
    split = TemporalSplit.last_days(events, test_days=test_days)
    context = split.until_end(events)
    spans = eval_spans(context, split, max_len)
    targets: list[np.ndarray] = []
    for batch in iter_batches(context, spans, batch_size=4):
        targets.append(batch.row_index[batch.target_mask])
        assert (batch.lengths <= max_len).all()
        # Context is the same user's history right before the targets.
        first_row = batch.row_index[:, 0]
        assert (context.user_id[first_row] == batch.user_id).all()
    got = np.sort(np.concatenate(targets)) if targets else np.zeros(0, np.int64)
    assert np.array_equal(
        got, np.flatnonzero(split.in_test(context.timestamp))
    )  # each test event once
    # Every span reaches back as far as max_len allows within its user's history.
    _, offsets = context.user_offsets()
    user_first = offsets[np.searchsorted(offsets, spans.start, side="right") - 1]
    assert np.array_equal(spans.start, np.maximum(spans.end - max_len, user_first))


def test_eval_spans_use_history_before_the_window_as_context() -> None:
    events = make_events([1] * 6 + [2] * 2, timestamp=[0, 1, 2, 3, 10 * DAY, 10 * DAY + 1, 0, 1])
    split = TemporalSplit(split_time=5 * DAY, end_time=11 * DAY)
    spans = eval_spans(events, split, max_len=4)
    assert (spans.start.tolist(), spans.end.tolist(), spans.target_start.tolist()) == (
        [2],
        [6],
        [4],
    )


def test_to_torch_gives_typed_tensors() -> None:
    events = make_events([1, 1, 2])
    batch = make_batch(events, Spans(np.array([0, 2]), np.array([2, 3]), np.array([0, 2])))
    tensors = batch.to_torch()
    assert tensors["item_id"].dtype == torch.int64 and tensors["item_id"].shape == (2, 8)
    assert tensors["played_ratio"].dtype == torch.float32 and tensors["liked"].dtype == torch.bool
    assert tensors["lengths"].tolist() == [2, 1]
