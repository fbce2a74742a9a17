from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.data.events import (
    EVENT_SCHEMA,
    Events,
    EventSchemaError,
    counts_before,
    read_events,
    validate_events,
    write_events,
)
from tests.model.data.helpers import make_events


def assert_same(a: Events, b: Events) -> None:
    for name in EVENT_SCHEMA.names:
        assert np.array_equal(
            getattr(a, name), getattr(b, name), equal_nan=name == "played_ratio"
        ), name


def write(table: pa.Table, path: Path) -> Path:
    pq.write_table(table, path)
    return path


def valid_table(n: int = 12) -> pa.Table:
    return make_events(np.repeat([1, 2, 3], n // 3)).to_table()


def replace(
    table: pa.Table, name: str, values: pa.Array | pa.ChunkedArray | list[object]
) -> pa.Table:
    return table.set_column(
        table.schema.get_field_index(name),
        name,
        pa.array(values) if isinstance(values, list) else values,
    )


def test_round_trip_keeps_every_value(tmp_path: Path) -> None:
    events = make_events([1, 1, 2, 2, 2, 9])
    write_events(events, tmp_path)
    assert_same(read_events(tmp_path), events)
    assert_same(read_events(tmp_path / "events.parquet"), events)


def test_skipped_is_played_ratio_below_0_3_and_never_nan() -> None:
    events = make_events([1, 1, 1, 1, 1])
    events = Events.from_arrays(
        **{**vars(events), "played_ratio": np.array([np.nan, 0.0, 0.29, 0.3, 1.5])}
    )
    assert events.skipped.tolist() == [False, True, True, False, False]


def test_user_offsets_delimit_each_users_rows() -> None:
    users, offsets = make_events([4, 4, 7, 9, 9, 9]).user_offsets()
    assert users.tolist() == [4, 7, 9]
    assert offsets.tolist() == [0, 2, 3, 6]


def test_missing_column_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(valid_table().drop_columns(["source"]), tmp_path / "a.parquet")
    with pytest.raises(EventSchemaError, match=r"a\.parquet: missing column 'source'"):
        read_events(path)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    table = replace(
        valid_table(), "user_id", [str(u) for u in valid_table().column("user_id").to_pylist()]
    )
    with pytest.raises(EventSchemaError, match=r"column 'user_id' has type string, expected int64"):
        read_events(write(table, tmp_path / "a.parquet"))


def test_lossless_integer_widening_is_accepted(tmp_path: Path) -> None:
    table = valid_table()
    table = replace(table, "item_id", table.column("item_id").cast(pa.uint32()))
    table = replace(table, "timestamp", table.column("timestamp").cast(pa.int32()))
    events = read_events(write(table, tmp_path / "a.parquet"))
    assert events.item_id.dtype == np.int64 and events.timestamp.dtype == np.int64


def test_unsorted_users_name_the_first_bad_row(tmp_path: Path) -> None:
    table = replace(valid_table(), "user_id", [1, 1, 1, 1, 2, 2, 1, 2, 3, 3, 3, 3])
    with pytest.raises(EventSchemaError, match=r"column 'user_id', row 6: rows are not sorted"):
        read_events(write(table, tmp_path / "a.parquet"))


def test_unsorted_timestamps_within_a_user_name_the_row(tmp_path: Path) -> None:
    table = replace(valid_table(), "timestamp", [0, 10, 20, 30, 40, 50, 60, 55, 80, 90, 100, 110])
    with pytest.raises(EventSchemaError, match=r"column 'timestamp', row 7: rows are not sorted"):
        read_events(write(table, tmp_path / "a.parquet"))


def test_time_may_go_back_when_the_user_changes(tmp_path: Path) -> None:
    table = replace(valid_table(), "timestamp", [50, 60, 70, 80, 0, 1, 2, 3, 10, 20, 30, 40])
    assert validate_events(write(table, tmp_path / "a.parquet")) == 12


def test_negative_timestamp_is_named(tmp_path: Path) -> None:
    table = replace(valid_table(), "timestamp", [-5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110])
    with pytest.raises(EventSchemaError, match=r"column 'timestamp', row 0: negative timestamp -5"):
        read_events(write(table, tmp_path / "a.parquet"))


@pytest.mark.parametrize("bad", [10.5, -0.25, float("inf")])
def test_played_ratio_out_of_range_is_named(tmp_path: Path, bad: float) -> None:
    ratios = [0.5] * 12
    ratios[3] = bad
    table = replace(valid_table(), "played_ratio", pa.array(ratios, pa.float32()))
    with pytest.raises(
        EventSchemaError, match=r"column 'played_ratio', row 3: .* outside \[0, 10\]"
    ):
        read_events(write(table, tmp_path / "a.parquet"))


def test_played_ratio_may_be_nan_null_or_above_one(tmp_path: Path) -> None:
    table = replace(
        valid_table(), "played_ratio", pa.array([None, float("nan"), 2.5, 10.0] * 3, pa.float32())
    )
    events = read_events(write(table, tmp_path / "a.parquet"))
    assert np.isnan(events.played_ratio[[0, 1]]).all() and events.played_ratio[2] == 2.5


def test_nulls_in_a_required_column_are_named(tmp_path: Path) -> None:
    liked = [False] * 12
    table = replace(valid_table(), "liked", pa.array([*liked[:5], None, *liked[6:]], pa.bool_()))
    with pytest.raises(EventSchemaError, match=r"column 'liked', row 5: null"):
        read_events(write(table, tmp_path / "a.parquet"))


def test_sort_order_is_checked_across_batches_and_files(tmp_path: Path) -> None:
    write(make_events([1, 1, 2]).to_table(), tmp_path / "part-0.parquet")
    write(make_events([2, 3], timestamp=[100, 0]).to_table(), tmp_path / "part-1.parquet")
    assert validate_events(tmp_path, batch_rows=1) == 5
    write(make_events([1, 4]).to_table(), tmp_path / "part-2.parquet")
    with pytest.raises(EventSchemaError, match=r"part-2\.parquet: column 'user_id', row 0"):
        validate_events(tmp_path, batch_rows=1)


def test_empty_directory_and_missing_path_are_errors(tmp_path: Path) -> None:
    with pytest.raises(EventSchemaError, match=r"no \*\.parquet files"):
        read_events(tmp_path)
    with pytest.raises(EventSchemaError, match="no such file"):
        read_events(tmp_path / "nope.parquet")


def test_counts_before_counts_each_key_s_records_in_the_window_even_at_the_edges() -> None:
    keys = np.array([2, 1, 2, 2, 5, 1])
    times = np.array([30, 10, 10, 20, 40, 40])
    query = np.array([2, 2, 2, 1, 1, 5, 3, 2, 5])
    start = np.array([0, 10, 11, 0, 41, -(10**9), 0, 30, 0])
    # ends beyond the last record and starts before the first
    end = np.array([10**9, 30, 31, 40, 10**9, 41, 100, 30, 10**9])
    brute = [
        int(((keys == q) & (times >= a) & (times < b)).sum())
        for q, a, b in zip(query, start, end, strict=True)
    ]
    assert brute == [3, 2, 2, 1, 0, 1, 0, 0, 1]
    assert counts_before(keys, times, query, start, end).tolist() == brute
