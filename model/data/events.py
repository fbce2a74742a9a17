"""The event schema, a columnar in-memory table of events, and a validating reader.

One row per interaction, sorted by ``(user_id, timestamp)``. Every stage reads events through
:func:`read_events`, which refuses a file that breaks the contract with one message naming the
file, the column and the first bad row, so a bad upstream export fails loudly at the first stage.

Lossless integer widening (``uint32`` ids, ``int32`` timestamps, ...) and ``float64`` ratios are
accepted and cast; anything else of the wrong type is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from model.contract import DAY, HOUR, MAX_PLAYED_RATIO, MAX_TIMESTAMP

SKIP_THRESHOLD = 0.3  # an event is a skip when played_ratio < 0.3
# What feedback prediction (FP) predicts of an event, in the FP head's output order.
FEEDBACK = ("like", "dislike", "skip", "played_ratio")
_UNITS = {"s": 1, "m": 60, "h": HOUR, "d": DAY}
EVENTS_FILE = "events.parquet"  # the file name a data-set directory uses for its events

_FIELDS: list[pa.Field] = [
    pa.field("user_id", pa.int64(), nullable=False),
    pa.field("item_id", pa.int64(), nullable=False),
    pa.field("timestamp", pa.int64(), nullable=False),  # seconds since the Unix epoch
    pa.field("source", pa.int16(), nullable=False),  # 0 organic, 1..K recommendation surfaces
    pa.field("artist_id", pa.int64(), nullable=False),  # -1 when unknown
    pa.field("played_ratio", pa.float32(), nullable=True),  # NaN when not a consumption
    pa.field("liked", pa.bool_(), nullable=False),
    pa.field("disliked", pa.bool_(), nullable=False),
]
EVENT_SCHEMA = pa.schema(_FIELDS)
COLUMNS = tuple(EVENT_SCHEMA.names)
_NAN32 = pa.scalar(float("nan"), pa.float32())

# Types accepted for each target type because the cast to it loses nothing (or, for played_ratio,
# nothing that matters: float64 ratios are rounded to float32).
_ACCEPTED: dict[pa.DataType, set[pa.DataType]] = {
    pa.int64(): {
        pa.int8(),
        pa.int16(),
        pa.int32(),
        pa.int64(),
        pa.uint8(),
        pa.uint16(),
        pa.uint32(),
    },
    pa.int16(): {pa.int8(), pa.int16(), pa.uint8()},
    pa.float32(): {pa.float16(), pa.float32(), pa.float64()},
    pa.bool_(): {pa.bool_()},
}


class EventSchemaError(ValueError):
    """An events file breaks the event contract. The message names file, column, row."""


@dataclass(frozen=True, eq=False)
class Events:
    """A columnar table of events, one numpy array per column of :data:`EVENT_SCHEMA`.

    Rows are sorted by ``(user_id, timestamp)``. Arrays are never copied unless an operation needs
    to; treat them as read-only.
    """

    user_id: np.ndarray  # (N,) int64
    item_id: np.ndarray  # (N,) int64
    timestamp: np.ndarray  # (N,) int64, seconds
    source: np.ndarray  # (N,) int16
    artist_id: np.ndarray  # (N,) int64, -1 when unknown
    played_ratio: np.ndarray  # (N,) float32, NaN when not a consumption
    liked: np.ndarray  # (N,) bool
    disliked: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.user_id)

    @property
    def skipped(self) -> np.ndarray:
        """(N,) bool: ``played_ratio < SKIP_THRESHOLD`` (False where played_ratio is NaN)."""
        with np.errstate(invalid="ignore"):
            return self.played_ratio < SKIP_THRESHOLD

    @property
    def positive(self) -> np.ndarray:
        """(N,) bool: a positive interaction, not disliked and either liked or listened past the
        skip threshold. MovieLens: rating >= 4. The SASRec baseline and the ranking metrics'
        "next positive item" use this definition."""
        with np.errstate(invalid="ignore"):
            return ~self.disliked & (self.liked | (self.played_ratio >= SKIP_THRESHOLD))

    def positive_counts(self, before: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(item ids, counts)``: every item with a positive event (before ``before``, when
        given) and how many it has; ids ascending. What MostPop ranks by."""
        keep = self.positive if before is None else self.positive & (self.timestamp < before)
        return np.unique(self.item_id[keep], return_counts=True)

    def positives_before(
        self, item_id: np.ndarray, before: np.ndarray, window: int | None = None
    ) -> np.ndarray:
        """(M,) each of ``item_id``'s positive events before its ``before`` time (only those of
        the last ``window`` seconds, when given): the count a popularity table built at that
        time holds (what a bundle exported then serves)."""
        keep = self.positive
        since = (
            np.full(len(item_id), np.iinfo(np.int64).min // 4)
            if window is None
            else (np.asarray(before) - window)
        )
        return counts_before(self.item_id[keep], self.timestamp[keep], item_id, since, before)

    def events_before(self, item_id: np.ndarray, before: np.ndarray) -> np.ndarray:
        """(M,) each of ``item_id``'s events of any kind before its ``before`` time: zero for an
        item a catalog built then does not hold (a cold item)."""
        since = np.full(len(item_id), np.iinfo(np.int64).min // 4)
        return counts_before(self.item_id, self.timestamp, item_id, since, before)

    def take(self, index: np.ndarray | slice) -> Events:
        """The rows selected by a boolean mask, an index array or a slice, in that order."""
        return Events(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def user_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """``(users, offsets)``: user k's events are rows ``offsets[k]:offsets[k + 1]``.

        ``users`` is (U,) int64 and ``offsets`` is (U + 1,) int64.
        """
        starts = np.flatnonzero(np.diff(self.user_id)) + 1
        offsets = np.concatenate([[0], starts, [len(self)]]).astype(np.int64)
        if len(self) == 0:
            offsets = np.zeros(1, dtype=np.int64)
        return self.user_id[offsets[:-1]], offsets

    @classmethod
    def from_table(cls, table: pa.Table) -> Events:
        """Events from an Arrow table that already has :data:`EVENT_SCHEMA`'s types."""
        ratio = table.column("played_ratio").fill_null(_NAN32)
        columns = {
            name: table.column(name).to_numpy() for name in COLUMNS if name != "played_ratio"
        }
        return cls(played_ratio=ratio.to_numpy(), **columns)

    @classmethod
    def from_arrays(cls, **columns: np.ndarray) -> Events:
        """Events from numpy arrays, cast to the schema's dtypes (no validation: see validate)."""
        dtypes = {f.name: f.type.to_pandas_dtype() for f in EVENT_SCHEMA}
        return cls(
            **{name: np.ascontiguousarray(columns[name], dtype=dtypes[name]) for name in COLUMNS}
        )

    def to_table(self) -> pa.Table:
        """An Arrow table with :data:`EVENT_SCHEMA` (NaN played_ratio stays NaN, not null)."""
        return pa.Table.from_arrays([getattr(self, name) for name in COLUMNS], schema=EVENT_SCHEMA)


def counts_before(
    keys: np.ndarray, times: np.ndarray, query_keys: np.ndarray, start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """For each query, the number of (key, time) records with key == query key and start <= time
    < end (records given in any order)."""
    # One sorted key per record: times fall in [1, span - 2], so a query clipped to
    # [base, base + span - 1] lands before every record of its key or after all of them.
    span = int(times.max() - times.min()) + 3 if len(times) else 3
    base = int(times.min()) - 1 if len(times) else 0
    packed = np.sort(keys * span + (times - base))

    def rank(at: np.ndarray) -> np.ndarray:
        query = query_keys * span + (np.clip(at, base, base + span - 1) - base)
        order = np.argsort(query)  # sorted queries search far faster (memory order)
        out = np.empty(len(query), dtype=np.int64)
        out[order] = np.searchsorted(packed, query[order])
        return out

    return rank(end) - rank(start)


def event_files(path: str | Path) -> list[Path]:
    """The Parquet files of a data set: ``path`` itself, or every ``*.parquet`` in the directory
    ``path`` (sorted by name; their concatenation must be sorted by user and time)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise EventSchemaError(f"{path}: no *.parquet files in this directory")
        return files
    if not path.exists():
        raise EventSchemaError(f"{path}: no such file or directory")
    return [path]


def write_events(events: Events, out: str | Path, *, row_group_rows: int = 1 << 20) -> Path:
    """Write ``out/events.parquet`` atomically (a partial file never has the final name)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / EVENTS_FILE
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(events.to_table(), tmp, compression="zstd", row_group_size=row_group_rows)
    tmp.replace(path)
    return path


def read_events(path: str | Path, *, validate: bool = True) -> Events:
    """Read and (by default) validate the events of a Parquet file or directory of files.

    Raises :class:`EventSchemaError` naming the file, the column and the first bad row when a
    column is missing or has the wrong type, holds nulls, a negative timestamp, a played_ratio
    outside [0, 10], or when rows are not sorted by ``(user_id, timestamp)``.
    """
    tables = [table for _, table in _iter_checked_batches(path, validate=validate)]
    if not tables:
        return Events.from_table(EVENT_SCHEMA.empty_table())
    return Events.from_table(pa.concat_tables(tables).combine_chunks())


def validate_events(path: str | Path, *, batch_rows: int = 1 << 20) -> int:
    """Validate a data set without keeping it in memory; returns the number of events."""
    return sum(
        t.num_rows for _, t in _iter_checked_batches(path, validate=True, batch_rows=batch_rows)
    )


def _iter_checked_batches(
    path: str | Path, *, validate: bool, batch_rows: int = 1 << 20
) -> Iterator[tuple[Path, pa.Table]]:
    """Yield ``(file, table)`` pieces cast to EVENT_SCHEMA, checking each as it streams past.

    Memory stays bounded by one batch; sort order is checked across batches and files.
    """
    previous: tuple[int, int] | None = None  # (user_id, timestamp) of the last row seen
    for file in event_files(path):
        try:
            parquet = pq.ParquetFile(file)
        except (pa.ArrowException, OSError) as error:
            raise EventSchemaError(f"{file}: not a readable Parquet file ({error})") from error
        _check_columns(file, parquet.schema_arrow)
        row = 0
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(COLUMNS)):
            table = _cast(pa.Table.from_batches([batch]))
            if validate:
                _check_values(file, table, row, previous)
            if table.num_rows:
                previous = (
                    table.column("user_id")[-1].as_py(),
                    table.column("timestamp")[-1].as_py(),
                )
            row += table.num_rows
            yield file, table


def _check_columns(file: Path, schema: pa.Schema) -> None:
    for field in EVENT_SCHEMA:
        index = schema.get_field_index(field.name)
        if index < 0:
            raise EventSchemaError(f"{file}: missing column {field.name!r} (expected {field.type})")
        actual = schema.field(index).type
        if actual not in _ACCEPTED[field.type]:
            raise EventSchemaError(
                f"{file}: column {field.name!r} has type {actual}, expected {field.type}"
            )


def _cast(table: pa.Table) -> pa.Table:
    arrays = [table.column(f.name).cast(f.type) for f in EVENT_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA.remove_metadata())


def _check_values(
    file: Path, table: pa.Table, first_row: int, previous: tuple[int, int] | None
) -> None:
    def fail(column: str, index: int, problem: str) -> NoReturn:
        raise EventSchemaError(f"{file}: column {column!r}, row {first_row + index}: {problem}")

    for field in EVENT_SCHEMA:
        if not field.nullable and table.column(field.name).null_count:
            index = int(
                np.flatnonzero(table.column(field.name).is_null().to_numpy(zero_copy_only=False))[0]
            )
            fail(field.name, index, "null value in a column that may not hold nulls")

    timestamp = table.column("timestamp").to_numpy()
    negative = np.flatnonzero(timestamp < 0)
    if negative.size:
        fail("timestamp", int(negative[0]), f"negative timestamp {timestamp[negative[0]]}")
    late = np.flatnonzero(timestamp > MAX_TIMESTAMP)
    if late.size:
        fail("timestamp", int(late[0]), f"{timestamp[late[0]]} is past {MAX_TIMESTAMP} (2106)")

    ratio = table.column("played_ratio").fill_null(_NAN32).to_numpy()
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero((ratio < 0) | (ratio > MAX_PLAYED_RATIO) | np.isinf(ratio))
    if bad.size:
        fail("played_ratio", int(bad[0]), f"{ratio[bad[0]]} is outside [0, {MAX_PLAYED_RATIO:g}]")

    # Sort order, continuing from the last row of the previous batch or file.
    user = table.column("user_id").to_numpy()
    if previous is not None:
        user, timestamp = np.r_[previous[0], user], np.r_[previous[1], timestamp]
    same_user = user[1:] == user[:-1]
    backwards = (user[1:] < user[:-1]) | (same_user & (timestamp[1:] < timestamp[:-1]))
    if backwards.any():
        pair = int(np.flatnonzero(backwards)[0])
        column = "timestamp" if same_user[pair] else "user_id"
        fail(
            column, pair + 1 - (previous is not None), "rows are not sorted by (user_id, timestamp)"
        )


@dataclass(frozen=True)
class Catalog:
    """Every item of a data set (sorted ids) with its artist (-1 when unknown)."""

    ids: np.ndarray  # (C,) int64
    artist_id: np.ndarray  # (C,) int64

    @classmethod
    def from_events(cls, events: Events) -> Catalog:
        ids, first = np.unique(events.item_id, return_index=True)
        return cls(ids, events.artist_id[first])

    def __len__(self) -> int:
        return len(self.ids)

    def column(self, item_id: np.ndarray) -> np.ndarray:
        """The catalog column of each id (ids must be in the catalog)."""
        return np.searchsorted(self.ids, item_id)


def parse_duration(text: str) -> int:
    """Seconds in ``"0"``, ``"3600"``, ``"90s"``, ``"30m"``, ``"6h"`` or ``"1d"``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; use e.g. 0, 90s, 30m, 6h, 1d")
    return int(float(match.group(1)) * _UNITS[match.group(2) or "s"])
