"""Any CSV or Parquet log onto the event schema: ``argus convert table``.

Each ``--map TARGET=EXPRESSION`` says where one field of the event schema comes from:

==============  ==========================================================================
target          expression
==============  ==========================================================================
user_id         a column; integers are kept, strings (or ``COLUMN:str``) hashed to int64
item_id         as user_id
artist_id       as user_id; unmapped or null: -1 (unknown)
timestamp       ``COLUMN`` or ``COLUMN:UNIT``, UNIT one of ``s`` (default), ``ms``, ``us``,
                ``iso`` (ISO 8601 text); a Parquet timestamp or date column needs no unit
source          a column of small integers, or a constant (``source=1``); unmapped: 0
played_ratio    ``COLUMN`` or ``NUMERATOR/DENOMINATOR`` (NaN where the denominator is 0 or
                a value is null; capped at 10); unmapped: NaN (not a consumption)
liked           a boolean or numeric column (non-zero is true), ``COLUMN OP NUMBER`` with
disliked        OP one of ``>= <= > < == !=`` (``liked=rating>=4``), or ``true`` for every
                row (a log of purchases: each row is itself the positive); unmapped: false
==============  ==========================================================================

``user_id``, ``item_id`` and ``timestamp`` are required. Hashed ids are the first 8 bytes of
BLAKE2b of the UTF-8 text, as a non-negative int64: stable across runs and machines, so the
service can be asked with the same ids every day. Each hashed target's mapping is written beside
the events (``ids/<target>.parquet``: ``text``, ``id``).

The input is read in batches (Parquet row groups, 64 MiB CSV blocks) and only the converted
columns (34 bytes per event) are kept, then sorted by ``(user_id, timestamp)``. Everything is
checked before anything is written: a bad value is one line naming the file, the column and the
first bad row (rows count from 1, the header not counted); an unknown target or a missing column
is refused before any row is read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model.contract import MAX_PLAYED_RATIO, MAX_TIMESTAMP
from model.data.events import Events, write_events

TARGETS = (
    "user_id",
    "item_id",
    "timestamp",
    "source",
    "artist_id",
    "played_ratio",
    "liked",
    "disliked",
)
REQUIRED = ("user_id", "item_id", "timestamp")
IDS = ("user_id", "item_id", "artist_id")
UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
OPS = {">=": np.greater_equal, "<=": np.less_equal, "==": np.equal, "!=": np.not_equal}
OPS |= {">": np.greater, "<": np.less}
COMPARISON = re.compile(r"^(.+?)\s*(>=|<=|==|!=|>|<)\s*(-?[0-9.]+(?:[eE][-+]?\d+)?)$")
BATCH_ROWS = 1 << 20
CSV_BLOCK = 64 << 20
TRUE_TEXT = {"true", "1", "yes", "t", "y"}
FALSE_TEXT = {"false", "0", "no", "f", "n", ""}


class TableError(ValueError):
    """A log that cannot be mapped: the message names the file, column and first bad row."""


@dataclass(frozen=True)
class Mapping:
    """One ``--map``: where ``target`` comes from."""

    target: str
    columns: tuple[str, ...] = ()  # source columns read (none for a constant)
    unit: str = "s"  # timestamp: s, ms, us, iso; ids: "str" forces hashing
    constant: int | None = None  # source=1
    op: str | None = None  # liked=rating>=4
    threshold: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> Mapping:
        target, sep, expression = spec.partition("=")
        target, expression = target.strip(), expression.strip()
        if not sep or not expression:
            raise ValueError(f"--map {spec!r}: expected TARGET=EXPRESSION, e.g. user_id=uid")
        if target not in TARGETS:
            raise ValueError(
                f"--map {spec!r}: unknown target {target!r}; choose one of {', '.join(TARGETS)}"
            )
        if target == "source" and re.fullmatch(r"\d+", expression):
            return cls(target, constant=int(expression))
        if target in ("liked", "disliked") and expression in ("true", "false"):
            return cls(target, constant=int(expression == "true"))
        if target in ("timestamp", *IDS) and ":" in expression:
            column, unit = expression.rsplit(":", 1)
            allowed = ("s", "ms", "us", "iso") if target == "timestamp" else ("str",)
            if unit not in allowed:
                raise ValueError(f"--map {spec!r}: unit {unit!r} is not one of {allowed}")
            return cls(target, (column,), unit=unit)
        if target == "played_ratio" and "/" in expression:
            numerator, denominator = (part.strip() for part in expression.split("/", 1))
            return cls(target, (numerator, denominator))
        if target in ("liked", "disliked") and (found := COMPARISON.match(expression)):
            column, op, number = found.groups()
            return cls(target, (column.strip(),), op=op, threshold=float(number))
        return cls(target, (expression,))


def parse_maps(specs: list[str]) -> dict[str, Mapping]:
    maps: dict[str, Mapping] = {}
    for spec in specs:
        mapping = Mapping.parse(spec)
        if mapping.target in maps:
            raise ValueError(f"--map {spec!r}: {mapping.target} is mapped twice")
        maps[mapping.target] = mapping
    missing = [t for t in REQUIRED if t not in maps]
    if missing:
        raise ValueError(f"--map: {', '.join(missing)} must be mapped (e.g. --map {missing[0]}=…)")
    return maps


# -- reading -------------------------------------------------------------------------------------


def log_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not found")
    files = sorted(
        p for p in src.iterdir() if p.suffix in (".parquet", ".csv", ".tsv", ".tab", ".txt")
    )
    if not files:
        raise FileNotFoundError(f"{src}: no .parquet, .csv or .tsv files")
    return files


def _csv_options(file: Path) -> pacsv.ParseOptions:
    return pacsv.ParseOptions(delimiter="\t" if file.suffix in (".tsv", ".tab") else ",")


def columns_of(file: Path) -> list[str]:
    if file.suffix == ".parquet":
        return list(pq.ParquetFile(file).schema_arrow.names)
    read = pacsv.ReadOptions(block_size=1 << 16)
    with pacsv.open_csv(file, read_options=read, parse_options=_csv_options(file)) as reader:
        return list(reader.schema.names)


def batches(file: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The ``columns`` of ``file`` in batches; CSV columns as text (converted, and checked row
    by row, here rather than by the CSV reader's type guess)."""
    if file.suffix == ".parquet":
        yield from pq.ParquetFile(file).iter_batches(batch_size=BATCH_ROWS, columns=columns)
        return
    convert = pacsv.ConvertOptions(
        include_columns=columns,
        column_types=dict.fromkeys(columns, pa.string()),
        strings_can_be_null=True,
    )
    read = pacsv.ReadOptions(block_size=CSV_BLOCK)
    with pacsv.open_csv(
        file, read_options=read, parse_options=_csv_options(file), convert_options=convert
    ) as reader:
        yield from reader


# -- converting ----------------------------------------------------------------------------------


@dataclass
class Where:
    """The batch being converted, for error messages."""

    file: Path
    first_row: int  # of the batch, counting from 1

    def fail(self, column: str, index: int, problem: str) -> TableError:
        return TableError(
            f"{self.file}: column {column!r}, row {self.first_row + index}: {problem}"
        )


def hash_text(values: list[str]) -> np.ndarray:
    """Stable non-negative int64 ids of ``values`` (BLAKE2b, first 8 bytes)."""
    out = np.empty(len(values), dtype=np.int64)
    for i, value in enumerate(values):
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") & (2**63 - 1)
    return out


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _no_nulls(array: pa.Array, column: str, where: Where) -> None:
    if array.null_count:
        index = _first(array.is_null().to_numpy(zero_copy_only=False))
        raise where.fail(column, index, "empty value where one is required")


def _numbers(array: pa.Array, column: str, where: Where) -> np.ndarray:
    """float64 values of a numeric or text column (null: NaN); text that is not a number fails
    naming its row."""
    if pa.types.is_boolean(array.type):
        array = pc.cast(array, pa.int8())
    if pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        text = pc.utf8_trim_whitespace(array)
        numeric = pc.match_substring_regex(
            text, r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^(nan|NaN|inf|-inf)$"
        )
        bad = pc.and_(pc.invert(numeric), pc.is_valid(text)).to_numpy(zero_copy_only=False)
        if bad.any():
            index = _first(bad)
            raise where.fail(column, index, f"{array[index].as_py()!r} is not a number")
        array = pc.cast(text, pa.float64())
    return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


@dataclass
class Ids:
    """One id target across batches: whether its text is hashed, and the text seen."""

    target: str
    hashed: bool | None = None  # decided by the first batch (or forced by :str)
    text: dict[str, int] = field(default_factory=dict)

    def convert(self, array: pa.Array, column: str, where: Where, force: bool) -> np.ndarray:
        textual = pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
        if pa.types.is_dictionary(array.type):
            array, textual = pc.cast(array, pa.string()), True
        if self.hashed is None:
            self.hashed = force or (textual and not self._all_integers(array))
        if not self.hashed:
            if textual and not self._all_integers(array):
                bad = pc.invert(self._integer_mask(array)).to_numpy(zero_copy_only=False)
                index = _first(bad & array.is_valid().to_numpy(zero_copy_only=False))
                raise where.fail(
                    column,
                    index,
                    f"{array[index].as_py()!r} is not an integer (earlier rows were: map it as "
                    f"{column}:str to hash every id)",
                )
            if not (textual or pa.types.is_integer(array.type)):
                raise where.fail(column, 0, f"ids must be integers or text, not {array.type}")
            return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False)
        encoded: Any = pc.dictionary_encode(pc.cast(array, pa.string()))
        uniques = encoded.dictionary.to_pylist()
        new = [u for u in uniques if u not in self.text]
        self.text.update(zip(new, hash_text(new).tolist(), strict=True))
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        return np.array([self.text[u] for u in uniques], dtype=np.int64)[codes]

    @staticmethod
    def _integer_mask(array: pa.Array) -> pa.Array:
        return pc.match_substring_regex(pc.utf8_trim_whitespace(array), r"^[-+]?\d{1,18}$")

    def _all_integers(self, array: pa.Array) -> bool:
        mask = self._integer_mask(array)
        return bool(pc.all(pc.or_(mask, pc.is_null(array))).as_py())

    def table(self) -> pa.Table:
        return pa.table(
            {"text": list(self.text), "id": pa.array(list(self.text.values()), pa.int64())}
        )


def _timestamps(array: pa.Array, mapping: Mapping, where: Where) -> np.ndarray:
    column = mapping.columns[0]
    _no_nulls(array, column, where)
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        seconds = pc.cast(pc.cast(array, pa.timestamp("s")), pa.int64())
        return seconds.to_numpy(zero_copy_only=False)
    if mapping.unit == "iso":
        try:
            parsed = pc.cast(pc.utf8_trim_whitespace(array), pa.timestamp("s"))
        except pa.ArrowInvalid:
            for index, value in enumerate(array.to_pylist()):
                try:
                    pc.cast(pa.array([str(value).strip()]), pa.timestamp("s"))
                except pa.ArrowInvalid:
                    raise where.fail(column, index, f"{value!r} is not an ISO 8601 time") from None
            raise
        return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
    values = _numbers(array, column, where) * UNITS[mapping.unit]
    if not np.isfinite(values).all():
        raise where.fail(column, _first(~np.isfinite(values)), "not a finite time")
    return np.floor(values).astype(np.int64)


def _flags(array: pa.Array, mapping: Mapping, where: Where) -> np.ndarray:
    column = mapping.columns[0]
    if pa.types.is_boolean(array.type) and mapping.op is None:
        filled: Any = pc.fill_null(array, False)  # type: ignore[type-var]
        return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)
    textual = pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
    if textual and mapping.op is None:
        text: Any = pc.fill_null(array, "")  # type: ignore[type-var]
        words = pc.utf8_lower(pc.utf8_trim_whitespace(text))
        true = pc.is_in(words, pa.array(sorted(TRUE_TEXT))).to_numpy(zero_copy_only=False)
        false = pc.is_in(words, pa.array(sorted(FALSE_TEXT))).to_numpy(zero_copy_only=False)
        if not (true | false).all():
            index = _first(~(true | false))
            raise where.fail(column, index, f"{array[index].as_py()!r} is not true/false or 1/0")
        return true
    values = _numbers(array, column, where)
    if mapping.op is None:
        return np.nan_to_num(values) != 0
    with np.errstate(invalid="ignore"):
        return OPS[mapping.op](values, mapping.threshold) & ~np.isnan(values)


def _ratios(batch: pa.RecordBatch, mapping: Mapping, where: Where) -> np.ndarray:
    values = _numbers(batch.column(mapping.columns[0]), mapping.columns[0], where)
    if len(mapping.columns) == 2:
        denominator = _numbers(batch.column(mapping.columns[1]), mapping.columns[1], where)
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(denominator > 0, values / denominator, np.nan)
    bad = values < 0
    if bad.any():
        raise where.fail("/".join(mapping.columns), _first(bad), f"negative ratio {values[bad][0]}")
    return np.minimum(values, MAX_PLAYED_RATIO)


def _source(batch: pa.RecordBatch, mapping: Mapping | None, where: Where) -> np.ndarray:
    n = batch.num_rows
    if mapping is None or mapping.constant is not None:
        return np.full(n, 0 if mapping is None else mapping.constant, dtype=np.int64)
    column = mapping.columns[0]
    values = _numbers(batch.column(column), column, where)
    bad = ~np.isfinite(values) | (values < 0) | (values > 32_767) | (values != np.floor(values))
    if bad.any():
        index = _first(bad)
        raise where.fail(column, index, f"source {values[index]} is not an integer in [0, 32767]")
    return values.astype(np.int64)


@dataclass
class Converted:
    """The converted columns of every batch so far."""

    parts: dict[str, list[np.ndarray]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    rows: int = 0

    def events(self) -> Events:
        columns = {t: np.concatenate(self.parts[t]) if self.rows else np.empty(0) for t in TARGETS}
        order = np.lexsort((columns["timestamp"], columns["user_id"]))
        return Events.from_arrays(**{t: v[order] for t, v in columns.items()})


def convert_batch(
    batch: pa.RecordBatch, maps: dict[str, Mapping], ids: dict[str, Ids], where: Where
) -> dict[str, np.ndarray]:
    n = batch.num_rows
    out: dict[str, np.ndarray] = {}
    for target in IDS:
        mapping = maps.get(target)
        if mapping is None:
            out[target] = np.full(n, -1, dtype=np.int64)
            continue
        column = mapping.columns[0]
        array = batch.column(column)
        if target == "artist_id":
            valid = array.is_valid().to_numpy(zero_copy_only=False)
            values = ids[target].convert(pc.drop_null(array), column, where, mapping.unit == "str")
            full = np.full(n, -1, dtype=np.int64)
            full[valid] = values
            out[target] = full
            continue
        _no_nulls(array, column, where)
        out[target] = ids[target].convert(array, column, where, mapping.unit == "str")
    timestamp = _timestamps(batch.column(maps["timestamp"].columns[0]), maps["timestamp"], where)
    bad = (timestamp < 0) | (timestamp > MAX_TIMESTAMP)
    if bad.any():
        index = _first(bad)
        raise where.fail(
            maps["timestamp"].columns[0],
            index,
            f"{timestamp[index]} s is outside [0, {MAX_TIMESTAMP}] (is the unit right?)",
        )
    out["timestamp"] = timestamp
    out["source"] = _source(batch, maps.get("source"), where)
    ratio = maps.get("played_ratio")
    out["played_ratio"] = np.full(n, np.nan) if ratio is None else _ratios(batch, ratio, where)
    for flag in ("liked", "disliked"):
        mapping = maps.get(flag)
        if mapping is None or mapping.constant is not None:
            out[flag] = np.full(n, mapping is not None and mapping.constant == 1)
        else:
            out[flag] = _flags(batch.column(mapping.columns[0]), mapping, where)
    return out


@dataclass(frozen=True)
class TableSummary:
    events: int
    users: int
    items: int
    files: int
    hashed: dict[str, int]  # target -> distinct texts

    def line(self, out: Path) -> str:
        counts = f"{self.events:,} events · {self.users:,} users · {self.items:,} items"
        hashed = "".join(
            f" · {target} hashed ({n:,} texts → {out / 'ids' / (target + '.parquet')})"
            for target, n in self.hashed.items()
        )
        return f"converted {self.files} file(s): {counts}{hashed} → {out / 'events.parquet'}"


def convert_table(src: str | Path, out: str | Path, specs: list[str]) -> TableSummary:
    """Map the CSV/Parquet log(s) at ``src`` onto ``out/events.parquet`` (see the module)."""
    src, out = Path(src), Path(out)
    maps = parse_maps(specs)
    files = log_files(src)
    wanted = list(dict.fromkeys(c for m in maps.values() for c in m.columns))
    for file in files:
        have = set(columns_of(file))
        missing = [c for c in wanted if c not in have]
        if missing:
            raise TableError(
                f"{file}: no column {missing[0]!r} (it has: {', '.join(sorted(have))})"
            )
    ids = {t: Ids(t) for t in IDS}
    converted = Converted()
    for file in files:
        row = 1
        for batch in batches(file, wanted):
            columns = convert_batch(batch, maps, ids, Where(file, row))
            for target, values in columns.items():
                converted.parts[target].append(values)
            converted.rows += batch.num_rows
            row += batch.num_rows
    events = converted.events()
    hashed = {t: i for t, i in ids.items() if i.hashed}
    for target, mapped in hashed.items():
        values = np.fromiter(mapped.text.values(), dtype=np.int64, count=len(mapped.text))
        if len(np.unique(values)) != len(values):
            raise TableError(f"{src}: two {target} texts hash to the same id; map integer ids")
    # Everything is checked: now write (each file atomically, the events last).
    for target, mapped in hashed.items():
        path = out / "ids" / f"{target}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        pq.write_table(mapped.table(), partial, compression="zstd")
        partial.replace(path)
    write_events(events, out)
    return TableSummary(
        events=len(events),
        users=len(np.unique(events.user_id)),
        items=len(np.unique(events.item_id)),
        files=len(files),
        hashed={t: len(i.text) for t, i in hashed.items()},
    )
