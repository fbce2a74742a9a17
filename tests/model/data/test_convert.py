from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from argus.cli import app
from model.data import fetch
from model.data.convert import convert_yambda
from model.data.events import read_events

# -- MovieLens-100K ------------------------------------------------------------------------------


def _ratings(src: Path) -> np.ndarray:
    """The (user, item, rating) rows of either MovieLens-100K layout, read without our converter."""
    path = src / "u.data" if (src / "u.data").is_file() else src / "ml-100k.inter"
    return np.loadtxt(path, dtype=np.float64, skiprows=int(path.suffix == ".inter"))[:, :3]


def test_ml100k_gives_100000_events_943_users_1682_items(tmp_path: Path) -> None:
    src = fetch.ml100k()
    result = CliRunner().invoke(app, ["convert", "ml100k", str(src), str(tmp_path)])
    assert result.exit_code == 0, result.output
    events = read_events(tmp_path)
    assert len(events) == 100_000
    assert len(np.unique(events.user_id)) == 943
    assert len(np.unique(events.item_id)) == 1682
    assert (
        (events.source == 0).all()
        and np.isnan(events.played_ratio).all()
        and (events.artist_id == -1).all()
    )
    ratings = _ratings(src).astype(np.int64)
    assert events.liked.sum() == (ratings[:, 2] >= 4).sum()
    assert events.disliked.sum() == (ratings[:, 2] <= 2).sum()
    # The rating of a given (user, item) survives the conversion.
    user, item, rating = ratings[0, 0], ratings[0, 1], ratings[0, 2]
    row = np.flatnonzero((events.user_id == user) & (events.item_id == item))[0]
    assert events.liked[row] == (rating >= 4) and events.disliked[row] == (rating <= 2)


def test_ml100k_fetch_downloads_the_hash_checked_wheel_once_and_converts_the_same_ratings(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    result = CliRunner().invoke(app, ["fetch", "ml100k", "--cache", str(cache)])
    assert result.exit_code == 0, result.output
    src = Path(result.output.strip())
    assert src == cache / "ml-100k" and sorted(p.name for p in src.iterdir()) == ["ml-100k.inter"]
    stamp = (src / "ml-100k.inter").stat().st_mtime_ns
    assert fetch.ml100k(cache) == src and (src / "ml-100k.inter").stat().st_mtime_ns == stamp
    # RecBole's file and GroupLens' u.data hold the same 100,000 ratings, in the same order.
    ratings = _ratings(src)
    assert ratings.shape == (100_000, 3)
    if (fetch.ml100k() / "u.data").is_file():
        np.testing.assert_array_equal(ratings, _ratings(fetch.ml100k()))
    # A file given directly converts too.
    out = tmp_path / "out"
    assert (
        "100,000 events"
        in CliRunner()
        .invoke(app, ["convert", "ml100k", str(src / "ml-100k.inter"), str(out)])
        .output
    )


def test_ml100k_fetch_refuses_a_wheel_whose_hash_differs_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "RECBOLE_SHA256", "0" * 64)
    result = CliRunner().invoke(app, ["fetch", "ml100k", "--cache", str(tmp_path)])
    assert result.exit_code == 2 and "SHA-256" in result.output and "expected 0000" in result.output
    assert list((tmp_path / "ml-100k").iterdir()) == []


def test_ml100k_missing_source_names_the_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["convert", "ml100k", str(tmp_path), str(tmp_path / "out")])
    assert result.exit_code == 2 and "u.data: not found" in result.output


# -- Yambda --------------------------------------------------------------------------------------

U32, U16, U8 = pa.uint32(), pa.uint16(), pa.uint8()

LISTENS = {  # uid, timestamp, item_id, is_organic, played_ratio_pct, track_length_seconds
    "uid": [10, 10, 10, 20, 20],
    "timestamp": [1000, 1300, 2000, 500, 100],
    "item_id": [500, 501, 500, 600, 601],
    "is_organic": [1, 0, 1, 0, 1],
    "played_ratio_pct": [100, 20, 150, 100, 5],
    "track_length_seconds": [200, 180, 200, 240, 240],
}
LIKES = {
    "uid": [10, 10, 20, 30],
    "timestamp": [1100, 2100, 5000, 50],
    "item_id": [500, 500, 600, 700],
    "is_organic": [1, 1, 0, 1],
}
DISLIKES = {"uid": [10], "timestamp": [1310], "item_id": [501], "is_organic": [0]}
TYPES: dict[str, pa.DataType] = {
    "uid": U32,
    "timestamp": U32,
    "item_id": U32,
    "is_organic": U8,
    "played_ratio_pct": U16,
    "track_length_seconds": U32,
}

# Hand-computed result, sorted by (user, time). Columns as in the event schema.
EXPECTED = [
    # user, time, item, source, artist, played_ratio, liked, disliked
    (10, 1000, 500, 0, 7, 1.0, True, False),  # like at 1100 falls inside this listen
    (10, 1300, 501, 1, 7, 0.2, False, True),  # dislike at 1310 attached; recommended -> source 1
    (
        10,
        2000,
        500,
        0,
        7,
        1.5,
        True,
        False,
    ),  # like at 2100 goes to the latest listen, not the first
    (20, 100, 601, 0, -1, 0.05, False, False),
    (20, 500, 600, 1, 8, 1.0, False, False),
    (20, 5000, 600, 1, 8, None, True, False),  # like long after the listen: its own event
    (30, 50, 700, 0, -1, None, True, False),  # like with no listen at all
]


def table(columns: dict[str, list[int]]) -> pa.Table:
    return pa.table({name: pa.array(values, TYPES[name]) for name, values in columns.items()})


def write_flat(src: Path) -> Path:
    src.mkdir(parents=True)
    pq.write_table(table(LISTENS), src / "listens.parquet")
    pq.write_table(table(LIKES), src / "likes.parquet")
    pq.write_table(table(DISLIKES), src / "dislikes.parquet")
    pq.write_table(
        table({"uid": [10], "timestamp": [3000], "item_id": [500], "is_organic": [1]}),
        src / "unlikes.parquet",
    )
    write_artists(src)
    return src


def write_artists(src: Path) -> None:
    pq.write_table(
        pa.table(
            {"item_id": pa.array([500, 501, 600], U32), "artist_id": pa.array([7, 7, 8], U32)}
        ),
        src / "artist_item_mapping.parquet",
    )


def write_multi_event(src: Path) -> Path:
    src.mkdir(parents=True)
    parts = []
    for kind, columns in (
        ("listen", LISTENS),
        ("like", LIKES),
        ("dislike", DISLIKES),
        ("unlike", {"uid": [10], "timestamp": [3000], "item_id": [500], "is_organic": [1]}),
    ):
        part = table(columns)
        n = part.num_rows
        for name in ("played_ratio_pct", "track_length_seconds"):
            if name not in part.column_names:
                part = part.append_column(name, pa.array([None] * n, TYPES[name]))
        parts.append(part.append_column("event_type", pa.array([kind] * n).dictionary_encode()))
    multi = pa.concat_tables(parts)
    order = np.argsort(multi.column("timestamp").to_numpy(), kind="stable")  # shuffled kinds
    pq.write_table(multi.take(order), src / "multi_event.parquet")
    write_artists(src)
    return src


def rows(path: Path) -> list[tuple[object, ...]]:
    e = read_events(path)
    return [
        (
            int(u),
            int(t),
            int(i),
            int(s),
            int(a),
            None if np.isnan(r) else round(float(r), 6),
            bool(lk),
            bool(dl),
        )
        for u, t, i, s, a, r, lk, dl in zip(
            e.user_id,
            e.timestamp,
            e.item_id,
            e.source,
            e.artist_id,
            e.played_ratio,
            e.liked,
            e.disliked,
            strict=True,
        )
    ]


def test_yambda_flat_layout_round_trips_the_fixture(tmp_path: Path) -> None:
    src = write_flat(tmp_path / "flat")
    result = CliRunner().invoke(app, ["convert", "yambda", str(src), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "feedback: 3 on listens, 2 own events" in result.output
    assert rows(tmp_path / "out") == EXPECTED


def test_yambda_multi_event_gives_the_same_events(tmp_path: Path) -> None:
    summary = convert_yambda(write_multi_event(tmp_path / "multi"), tmp_path / "out")
    assert rows(tmp_path / "out") == EXPECTED
    assert (summary.feedback_on_listens, summary.feedback_events) == (3, 2)


def test_yambda_match_window_decides_attachment(tmp_path: Path) -> None:
    src = write_flat(tmp_path / "flat")
    convert_yambda(src, tmp_path / "wide", match_window=10_000)
    wide = rows(tmp_path / "wide")
    assert (20, 500, 600, 1, 8, 1.0, True, False) in wide  # the late like now attaches
    assert len(wide) == len(EXPECTED) - 1


def test_yambda_missing_file_or_column_is_named(tmp_path: Path) -> None:
    src = write_flat(tmp_path / "flat")
    (src / "dislikes.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"dislikes\.parquet: not found"):
        convert_yambda(src, tmp_path / "out")
    pq.write_table(table(DISLIKES).drop_columns(["is_organic"]), src / "dislikes.parquet")
    with pytest.raises(ValueError, match=r"dislikes\.parquet: missing column 'is_organic'"):
        convert_yambda(src, tmp_path / "out")


# -- KuaiRand ------------------------------------------------------------------------------------

KUAIRAND_HEADER = "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_hate,long_view,"
KUAIRAND_HEADER += "play_time_ms,duration_ms,is_rand\n"


def test_kuairand_own_layout_and_a_label_subset_give_impressions_with_feedback(
    tmp_path: Path,
) -> None:
    logs = tmp_path / "kuairand"
    logs.mkdir()
    (logs / "log_standard_4_08_to_4_21.csv").write_text(
        KUAIRAND_HEADER
        + "7,100,20220408,1000,1649412000500,1,1,0,1,9000,10000,0\n"
        + "7,101,20220408,1000,1649411000999,0,0,1,0,1000,0,0\n"
        + "3,100,20220409,1100,1649500000000,1,0,0,0,30000,10000,0\n"
    )
    (logs / "log_random_4_22_to_5_08.csv").write_text(
        KUAIRAND_HEADER + "3,102,20220422,0900,1650600000000,1,1,0,1,5000,20000,1\n"
    )
    result = CliRunner().invoke(app, ["convert", "kuairand", str(logs), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    events = read_events(tmp_path / "out")
    assert events.user_id.tolist() == [3, 3, 7, 7] and events.item_id.tolist() == [
        100,
        102,
        101,
        100,
    ]
    assert events.timestamp.tolist() == [1649500000, 1650600000, 1649411000, 1649412000]
    assert events.source.tolist() == [1, 2, 1, 1]  # the randomly exposed video: source 2
    assert events.liked.tolist() == [False, True, False, True]
    assert events.disliked.tolist() == [False, False, True, False]
    ratio = events.played_ratio.tolist()
    assert ratio[0] == 3.0 and ratio[1] == 0.25 and np.isnan(ratio[2])
    assert ratio[3] == pytest.approx(0.9)
    assert (events.artist_id == -1).all()

    subset = tmp_path / "subset.tsv"  # the like-vs-hate layout: label 1 a like, 0 a hate
    subset.write_text(
        "user_id\tvideo_id\ttime_ms\tplay_time_ms\tduration_ms\tlabel\n"
        "5\t9\t1649412000000\t100\t1000\t1\n5\t8\t1649412100000\t100\t1000\t0\n"
    )
    result = CliRunner().invoke(app, ["convert", "kuairand", str(subset), str(tmp_path / "sub")])
    assert result.exit_code == 0, result.output
    events = read_events(tmp_path / "sub")
    assert events.liked.tolist() == [True, False] and events.disliked.tolist() == [False, True]


def test_kuairand_missing_columns_are_named_and_nothing_is_written(tmp_path: Path) -> None:
    bad = tmp_path / "log_standard_bad.csv"
    bad.write_text("user_id,video_id,time_ms\n1,2,3\n")
    result = CliRunner().invoke(app, ["convert", "kuairand", str(bad), str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "log_standard_bad.csv" in result.output and "play_time_ms" in result.output
    assert "is_like and is_hate (or label)" in result.output
    assert not (tmp_path / "out").exists()
