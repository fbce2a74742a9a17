"""Loaders that map public data sets onto the event schema.

* **MovieLens-100K** (``u.data``: ``user item rating timestamp``, tab-separated; or RecBole's
  ``ml-100k.inter``, the same rows under a header line): every rating is an
  organic event, ``liked = rating >= 4``, ``disliked = rating <= 2``, ``played_ratio`` NaN.
* **KuaiRand** (Kuaishou's short-video logs, Gao et al., CIKM 2022): its ``log_standard_*.csv``
  and ``log_random_*.csv`` files, or any CSV/TSV file of their rows (such as a like-vs-hate subset
  whose ``label`` is 1 for a like and 0 for a hate). Every row is a recommended impression:
  ``source`` 1, or 2 where ``is_rand`` is 1 (the randomly exposed videos); ``liked = is_like``,
  ``disliked = is_hate``; ``played_ratio = play_time_ms / duration_ms`` (NaN where the duration is
  0, at most 10); ``timestamp = time_ms // 1000``; no artist.
* **Yandex Yambda**, flat layout: ``listens.parquet``, ``likes.parquet``, ``dislikes.parquet``
  (``uid, timestamp, item_id, is_organic`` plus ``played_ratio_pct, track_length_seconds`` on
  listens), or ``multi_event.parquet`` with all of them and an ``event_type`` column. ``is_organic
  = 0`` (recommended) becomes ``source = 1``. A like or dislike becomes feedback on the matching
  listen -- the latest listen of the same user and item that started at or before it and ended no
  more than ``match_window`` seconds before it -- and its own event (``played_ratio`` NaN) when no
  listen matches. ``unlike``/``undislike`` events are dropped. Artist ids come from an
  ``artist_item_mapping.parquet`` (``item_id, artist_id``) when one is given or lies in the source
  directory. The whole input is held in memory: the 50M-event flat set fits on a 24 GiB machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from model.contract import MAX_PLAYED_RATIO
from model.data.events import EVENTS_FILE, Events, write_events


@dataclass(frozen=True)
class ConvertSummary:
    events: int
    users: int
    items: int
    feedback_on_listens: int = 0  # likes/dislikes attached to a listen
    feedback_events: int = 0  # likes/dislikes that became their own event

    def line(self, name: str, out: Path) -> str:
        extra = ""
        if self.feedback_on_listens or self.feedback_events:
            extra = (
                f" · feedback: {self.feedback_on_listens:,} on listens,"
                f" {self.feedback_events:,} own events"
            )
        counts = f"{self.events:,} events · {self.users:,} users · {self.items:,} items"
        return f"converted {name}: {counts}{extra} → {out / EVENTS_FILE}"


def _summary(events: Events, **feedback: int) -> ConvertSummary:
    return ConvertSummary(
        events=len(events),
        users=len(np.unique(events.user_id)),
        items=len(np.unique(events.item_id)),
        **feedback,
    )


def convert_ml100k(src: str | Path, out: str | Path) -> ConvertSummary:
    """Convert MovieLens-100K to ``out/events.parquet``.

    ``src`` is GroupLens' ``u.data`` or RecBole's ``ml-100k.inter`` (the same rows under a header
    line), or a directory holding either.
    """
    path = _ml100k_file(Path(src))
    header = path.suffix == ".inter"
    names = ["user_id", "item_id", "rating", "timestamp"]
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=int(header)),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.float64() for n in names}),
    )
    table = pa.table({n: pc.cast(table.column(n), pa.int64()) for n in names})
    user, item = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    rating, timestamp = table.column("rating").to_numpy(), table.column("timestamp").to_numpy()
    order = np.lexsort((item, timestamp, user))
    n = len(order)
    events = Events.from_arrays(
        user_id=user[order],
        item_id=item[order],
        timestamp=timestamp[order],
        source=np.zeros(n),
        artist_id=np.full(n, -1),
        played_ratio=np.full(n, np.nan),
        liked=rating[order] >= 4,
        disliked=rating[order] <= 2,
    )
    write_events(events, out)
    return _summary(events)


def _ml100k_file(src: Path) -> Path:
    if src.is_file():
        return src
    for name in ("u.data", "ml-100k.inter"):
        if (src / name).is_file():
            return src / name
    raise FileNotFoundError(
        f"{src / 'u.data'}: not found (expected MovieLens-100K: u.data or ml-100k.inter;"
        " `argus fetch ml100k` downloads it)"
    )


# -- Yambda ------------------------------------------------------------------------------------

YAMBDA_FILES = ("listens", "likes", "dislikes")
_LISTEN_COLUMNS = [
    "uid",
    "timestamp",
    "item_id",
    "is_organic",
    "played_ratio_pct",
    "track_length_seconds",
]
_FEEDBACK_COLUMNS = ["uid", "timestamp", "item_id", "is_organic"]


@dataclass
class _Columns:
    """Plain numpy columns of one Yambda event kind."""

    uid: np.ndarray
    timestamp: np.ndarray
    item_id: np.ndarray
    is_organic: np.ndarray
    played_ratio_pct: np.ndarray | None = None
    track_length_seconds: np.ndarray | None = None

    @classmethod
    def from_table(cls, table: pa.Table, file: Path, listens: bool) -> _Columns:
        wanted = _LISTEN_COLUMNS if listens else _FEEDBACK_COLUMNS
        missing = [c for c in wanted if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{file}: missing column {missing[0]!r} (Yambda layout: {', '.join(wanted)})"
            )
        cols = {}
        for name in wanted:
            column = table.column(name)
            if name in ("played_ratio_pct", "track_length_seconds"):
                cols[name] = (
                    column.cast(pa.float64())
                    .fill_null(pa.scalar(float("nan"), pa.float64()))
                    .to_numpy()
                )
            elif column.null_count:
                raise ValueError(f"{file}: column {name!r} holds nulls")
            else:
                cols[name] = column.cast(pa.int64()).to_numpy()
        return cls(**cols)

    def take(self, mask: np.ndarray) -> _Columns:
        def pick(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[mask]

        return _Columns(
            self.uid[mask],
            self.timestamp[mask],
            self.item_id[mask],
            self.is_organic[mask],
            pick(self.played_ratio_pct),
            pick(self.track_length_seconds),
        )


def _read_yambda(src: Path) -> tuple[_Columns, _Columns, _Columns]:
    """(listens, likes, dislikes) from a flat-layout directory or a multi_event file."""
    multi = src if src.is_file() else src / "multi_event.parquet"
    if multi.is_file() and (src.is_file() or not (src / "listens.parquet").is_file()):
        table = pq.read_table(multi)
        if "event_type" not in table.column_names:
            raise ValueError(
                f"{multi}: missing column 'event_type' (expected a Yambda multi_event file)"
            )
        kind = table.column("event_type").cast(pa.string()).to_numpy(zero_copy_only=False)
        return tuple(  # type: ignore[return-value]
            _Columns.from_table(
                table.filter(pa.array(kind == name)), multi, listens=name == "listen"
            )
            for name in ("listen", "like", "dislike")
        )
    parts = []
    for name in YAMBDA_FILES:
        file = src / f"{name}.parquet"
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: not found (expected Yambda's flat layout: {', '.join(YAMBDA_FILES)})"
            )
        parts.append(_Columns.from_table(pq.read_table(file), file, listens=name == "listens"))
    return parts[0], parts[1], parts[2]


def _match_feedback(listens: _Columns, feedback: _Columns, window: int) -> np.ndarray:
    """(F,) index of the listen each feedback event belongs to, or -1.

    An as-of merge in one sort: listens and feedback sorted together by (uid, item, time), listens
    first at equal times; each feedback row takes the last listen before it in that order.
    """
    n_listen = len(listens.uid)
    match = np.full(len(feedback.uid), -1, dtype=np.int64)
    if n_listen == 0 or len(feedback.uid) == 0:
        return match
    uid = np.concatenate([listens.uid, feedback.uid])
    item = np.concatenate([listens.item_id, feedback.item_id])
    time = np.concatenate([listens.timestamp, feedback.timestamp])
    is_feedback = np.arange(len(uid)) >= n_listen
    order = np.lexsort((is_feedback, time, item, uid))
    position = np.arange(len(order))
    last_listen = np.maximum.accumulate(np.where(is_feedback[order], -1, position))  # -1: none yet
    at = np.flatnonzero(is_feedback[order])
    fb = order[at] - n_listen  # feedback row
    found = last_listen[at] >= 0
    listen = np.where(found, order[np.maximum(last_listen[at], 0)], 0)  # listen row where found
    assert listens.track_length_seconds is not None
    ends = listens.timestamp[listen] + np.nan_to_num(listens.track_length_seconds[listen], nan=0.0)
    ok = (
        found
        & (listens.uid[listen] == feedback.uid[fb])
        & (listens.item_id[listen] == feedback.item_id[fb])
        & (feedback.timestamp[fb] <= ends + window)
    )
    match[fb[ok]] = listen[ok]
    return match


def convert_yambda(
    src: str | Path,
    out: str | Path,
    *,
    match_window: int = 300,
    artist_mapping: str | Path | None = None,
) -> ConvertSummary:
    """Convert Yambda's flat layout (or a ``multi_event.parquet``) in ``src`` to
    ``out/events.parquet``."""
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    listens, likes, dislikes = _read_yambda(src)
    n_listen = len(listens.uid)

    liked = np.zeros(n_listen, dtype=bool)
    disliked = np.zeros(n_listen, dtype=bool)
    own: list[tuple[_Columns, bool]] = []
    attached = 0
    for feedback, flag, is_like in ((likes, liked, True), (dislikes, disliked, False)):
        match = _match_feedback(listens, feedback, match_window)
        flag[match[match >= 0]] = True
        attached += int((match >= 0).sum())
        own.append((feedback.take(match < 0), is_like))

    feedback_rows = sum(len(f.uid) for f, _ in own)
    assert listens.played_ratio_pct is not None
    ratio = listens.played_ratio_pct / 100.0
    columns = {
        "user_id": np.concatenate([listens.uid, *(f.uid for f, _ in own)]),
        "item_id": np.concatenate([listens.item_id, *(f.item_id for f, _ in own)]),
        "timestamp": np.concatenate([listens.timestamp, *(f.timestamp for f, _ in own)]),
        "source": np.concatenate([1 - listens.is_organic, *(1 - f.is_organic for f, _ in own)]),
        "played_ratio": np.concatenate(
            [np.clip(ratio, 0.0, MAX_PLAYED_RATIO), np.full(feedback_rows, np.nan)]
        ),
        "liked": np.concatenate([liked, *(np.full(len(f.uid), is_like) for f, is_like in own)]),
        "disliked": np.concatenate(
            [disliked, *(np.full(len(f.uid), not is_like) for f, is_like in own)]
        ),
    }
    columns["artist_id"] = _artist_ids(src, artist_mapping, columns["item_id"])
    # Sort by (user, time, item), listens before feedback events at equal keys.
    kind = np.concatenate([np.zeros(n_listen), np.ones(feedback_rows)])
    order = np.lexsort((kind, columns["item_id"], columns["timestamp"], columns["user_id"]))
    events = Events.from_arrays(**{name: values[order] for name, values in columns.items()})
    write_events(events, out)
    return _summary(events, feedback_on_listens=attached, feedback_events=feedback_rows)


def _artist_ids(src: Path, mapping: str | Path | None, item_id: np.ndarray) -> np.ndarray:
    """(N,) artist id of each item from Yambda's ``artist_item_mapping.parquet``, -1 if unknown."""
    path = (
        Path(mapping)
        if mapping is not None
        else (src if src.is_dir() else src.parent) / "artist_item_mapping.parquet"
    )
    if not path.is_file():
        if mapping is not None:
            raise FileNotFoundError(f"{path}: not found")
        return np.full(len(item_id), -1, dtype=np.int64)
    table = pq.read_table(path, columns=["item_id", "artist_id"])
    items = table.column("item_id").cast(pa.int64()).to_numpy()
    artists = table.column("artist_id").cast(pa.int64()).to_numpy()
    if not len(items):
        return np.full(len(item_id), -1, dtype=np.int64)
    order = np.argsort(items, kind="stable")
    items, artists = items[order], artists[order]
    position = np.clip(np.searchsorted(items, item_id), 0, len(items) - 1)
    return np.where(items[position] == item_id, artists[position], -1)


KUAIRAND_REQUIRED = ("user_id", "video_id", "time_ms", "play_time_ms", "duration_ms")


def _kuairand_files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    files = sorted(src.glob("log_standard_*.csv")) + sorted(src.glob("log_random_*.csv"))
    files = files or sorted([*src.glob("*.csv"), *src.glob("*.tsv")])
    if not files:
        raise FileNotFoundError(f"{src}: no log_standard_*.csv, log_random_*.csv, *.csv or *.tsv")
    return files


def _read_kuairand(file: Path) -> dict[str, np.ndarray]:
    """One KuaiRand file's columns as numpy arrays (feedback as ``is_like``/``is_hate``)."""
    delimiter = "\t" if file.suffix == ".tsv" else ","
    table = pacsv.read_csv(file, parse_options=pacsv.ParseOptions(delimiter=delimiter))
    names = set(table.column_names)
    missing = [c for c in KUAIRAND_REQUIRED if c not in names]
    if "label" not in names and not {"is_like", "is_hate"} <= names:
        missing.append("is_like and is_hate (or label)")
    if missing:
        raise ValueError(f"{file}: not a KuaiRand log, missing column(s) {', '.join(missing)}")
    columns = {name: table.column(name).to_numpy() for name in KUAIRAND_REQUIRED}
    if "label" in names:
        label = table.column("label").to_numpy()
        columns["is_like"], columns["is_hate"] = label == 1, label == 0
    else:
        columns["is_like"] = table.column("is_like").to_numpy() == 1
        columns["is_hate"] = table.column("is_hate").to_numpy() == 1
    is_rand = table.column("is_rand").to_numpy() if "is_rand" in names else None
    columns["is_rand"] = np.zeros(len(table), bool) if is_rand is None else is_rand == 1
    return columns


def convert_kuairand(src: str | Path, out: str | Path) -> ConvertSummary:
    """Convert KuaiRand logs in ``src`` (a directory or one file) to ``out/events.parquet``."""
    parts = [_read_kuairand(f) for f in _kuairand_files(Path(src))]
    c = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    duration = c["duration_ms"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(duration > 0, c["play_time_ms"] / duration, np.nan)
    user, item = c["user_id"].astype(np.int64), c["video_id"].astype(np.int64)
    timestamp = c["time_ms"].astype(np.int64) // 1000
    order = np.lexsort((item, timestamp, user))
    events = Events.from_arrays(
        user_id=user[order],
        item_id=item[order],
        timestamp=timestamp[order],
        source=np.where(c["is_rand"], 2, 1).astype(np.int16)[order],
        artist_id=np.full(len(order), -1, np.int64),
        played_ratio=np.minimum(ratio, MAX_PLAYED_RATIO).astype(np.float32)[order],
        liked=c["is_like"][order],
        disliked=c["is_hate"][order],
    )
    write_events(events, out)
    return _summary(events)
