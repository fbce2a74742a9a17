"""argus convert table: a company's own log, CSV or Parquet, onto the event schema."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from argus.cli import app
from model.data import table
from model.data.events import read_events
from model.data.table import Mapping, convert_table, hash_text

LOG = """uid,track,ts_ms,surface,play_ms,length_ms,is_like,rating,artist
alice,t-1,1700000002000,1,30000,200000,0,3,a1
bob,t-2,1700000001500,0,200000,200000,true,5,
alice,t-2,1700000001000,1,0,0,1,4,a2
bob,t-1,1700000000000,1,50000,100000,false,1,a1
"""
MAPS = [
    "user_id=uid",
    "item_id=track",
    "timestamp=ts_ms:ms",
    "source=surface",
    "played_ratio=play_ms/length_ms",
    "liked=is_like",
    "disliked=rating<=2",
    "artist_id=artist",
]


def run(src: Path, out: Path, maps: list[str]) -> tuple[int, str]:
    flags = [part for m in maps for part in ("--map", m)]
    result = CliRunner().invoke(app, ["convert", "table", str(src), str(out), *flags])
    return result.exit_code, result.output


def test_a_csv_with_text_ids_and_milliseconds_becomes_sorted_events(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text(LOG)
    code, output = run(tmp_path / "log.csv", tmp_path / "out", list(MAPS))
    assert code == 0, output
    assert "4 events · 2 users · 2 items" in output and "user_id hashed (2 texts" in output
    events = read_events(tmp_path / "out")
    alice, bob = hash_text(["alice", "bob"])
    t1, t2 = hash_text(["t-1", "t-2"])
    expected_users = sorted([alice, alice, bob, bob])
    assert events.user_id.tolist() == expected_users
    first = np.flatnonzero(events.user_id == alice)
    assert events.item_id[first].tolist() == [t2, t1]  # by time within the user
    assert events.timestamp[first].tolist() == [1_700_000_001, 1_700_000_002]
    assert np.isnan(events.played_ratio[first[0]])  # a zero length: not a consumption
    assert events.played_ratio[first[1]] == pytest.approx(0.15)
    assert events.liked[first].tolist() == [True, False]
    bob_rows = np.flatnonzero(events.user_id == bob)
    assert events.disliked[bob_rows].tolist() == [True, False]  # rating 1, then 5
    assert events.artist_id[bob_rows[1]] == -1  # empty: unknown
    assert events.source.tolist().count(0) == 1
    # The mapping beside the events says which text each id is.
    users = pq.read_table(tmp_path / "out" / "ids" / "user_id.parquet").to_pydict()
    assert dict(zip(users["text"], users["id"], strict=True)) == {"alice": alice, "bob": bob}
    assert not (tmp_path / "out" / "ids" / "timestamp.parquet").exists()


def test_parquet_with_integer_ids_iso_times_and_a_constant_source(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user": pa.array([7, 7, 3], pa.int32()),
            "item": pa.array([10, 11, 10], pa.int64()),
            "when": ["2024-01-02T00:00:05", "2024-01-02 00:00:01", "2024-01-01T00:00:00"],
            "liked": [True, None, False],
        }
    )
    pq.write_table(table, tmp_path / "log.parquet", row_group_size=2)
    maps = ["user_id=user", "item_id=item", "timestamp=when:iso", "source=2", "liked=liked"]
    maps.append("disliked=false")
    convert_table(tmp_path / "log.parquet", tmp_path / "out", maps)
    events = read_events(tmp_path / "out")
    assert events.user_id.tolist() == [3, 7, 7] and events.item_id.tolist() == [10, 11, 10]
    assert events.timestamp.tolist() == [1_704_067_200, 1_704_153_601, 1_704_153_605]
    assert (events.source == 2).all() and events.liked.tolist() == [False, False, True]
    assert np.isnan(events.played_ratio).all() and not (tmp_path / "out" / "ids").exists()


def test_string_ids_hash_the_same_on_every_run_and_in_every_file(tmp_path: Path) -> None:
    for day, rows in (("a", "u1,x,1\nu2,y,2\n"), ("b", "u2,x,3\n")):
        (tmp_path / "logs").mkdir(exist_ok=True)
        (tmp_path / "logs" / f"{day}.csv").write_text("u,i,t\n" + rows)
    maps = ["user_id=u", "item_id=i", "timestamp=t", "liked=true"]  # purchases: all positive
    convert_table(tmp_path / "logs", tmp_path / "one", maps)
    convert_table(tmp_path / "logs", tmp_path / "two", maps)
    one, two = read_events(tmp_path / "one"), read_events(tmp_path / "two")
    assert one.user_id.tolist() == two.user_id.tolist() and len(one) == 3
    assert hash_text(["u2"])[0] in one.user_id and (one.user_id >= 0).all()
    assert one.positive.all()


@pytest.mark.parametrize(
    ("maps", "message"),
    [
        (
            ["user_id=uid", "item_id=track", "timestamp=ts_ms:ms", "colour=red"],
            "unknown target 'colour'",
        ),
        (["user_id=uid", "item_id=track"], "timestamp must be mapped"),
        (["user_id=uid", "item_id=track", "timestamp=ts_ms:hours"], "unit 'hours'"),
        (["user_id=uid", "item_id=nope", "timestamp=ts_ms:ms"], "no column 'nope'"),
        (["user_id=uid", "user_id=track", "timestamp=ts_ms:ms"], "mapped twice"),
    ],
)
def test_bad_maps_are_refused_before_anything_is_written(
    tmp_path: Path, maps: list[str], message: str
) -> None:
    (tmp_path / "log.csv").write_text(LOG)
    code, output = run(tmp_path / "log.csv", tmp_path / "out", list(maps))
    assert code == 2 and message in output, output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("log", "maps", "message"),
    [
        ("u,i,t\n1,2,3\n1,2,soon\n", ["timestamp=t"], "column 't', row 2: 'soon' is not a number"),
        ("u,i,t\n1,2,3\n,2,4\n", [], "column 'u', row 2: empty value"),
        ("u,i,t\n1,2,-5\n", [], "column 't', row 1: -5 s is outside"),
        ("u,i,t\n1,2,1700000000000\n", [], "is the unit right?"),
        ("u,i,t,l\n1,2,3,yes\n1,2,4,maybe\n", ["liked=l"], "column 'l', row 2: 'maybe'"),
        ("u,i,t,s\n1,2,3,1.5\n", ["source=s"], "column 's', row 1: source 1.5"),
    ],
)
def test_a_bad_value_names_the_file_column_and_row_and_writes_nothing(
    tmp_path: Path, log: str, maps: list[str], message: str
) -> None:
    (tmp_path / "log.csv").write_text(log)
    base = {"user_id": "user_id=u", "item_id": "item_id=i", "timestamp": "timestamp=t"}
    for m in maps:
        base[m.split("=")[0]] = m
    code, output = run(tmp_path / "log.csv", tmp_path / "out", list(base.values()))
    assert code == 2 and "log.csv" in output and message in output, output
    assert not (tmp_path / "out").exists()


def test_ids_that_turn_to_text_after_integer_rows_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(table, "BATCH_ROWS", 2)  # the first batch decides: integers
    log = pa.table({"u": ["1", "2", "3", "dave"], "i": [1, 2, 3, 4], "t": [1, 2, 3, 4]})
    pq.write_table(log, tmp_path / "log.parquet", row_group_size=2)
    maps = ["user_id=u", "item_id=i", "timestamp=t"]
    with pytest.raises(ValueError, match=r"column 'u', row 4: 'dave' is not an integer.*u:str"):
        convert_table(tmp_path / "log.parquet", tmp_path / "out", maps)
    convert_table(tmp_path / "log.parquet", tmp_path / "out", ["user_id=u:str", *maps[1:]])
    assert hash_text(["dave"])[0] in read_events(tmp_path / "out").user_id


def test_expressions_parse() -> None:
    assert Mapping.parse("user_id=uid:str").unit == "str"
    expected = Mapping("liked", ("rating",), op=">=", threshold=4.0)
    assert Mapping.parse("liked=rating >= 4") == expected
    assert Mapping.parse("source=3").constant == 3
    assert Mapping.parse("liked=true").constant == 1 and Mapping.parse("liked=truth").columns
    assert Mapping.parse("played_ratio=a/b").columns == ("a", "b")
