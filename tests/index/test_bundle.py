from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from index.bundle import (
    BUNDLE_FILES,
    MANIFEST,
    ArtistItems,
    Bundle,
    BundleError,
    HnswParams,
    IdRows,
    build,
    list_versions,
    members,
    read_manifest,
    rows_of,
    sha256_of,
    sorted_unique,
    take_rows,
    write_manifest,
)
from index.hnsw import exact_top_k, recall
from model.contract import STEP_FILE
from model.export import write_shared_space
from tests.index.test_hnsw import latents


def test_a_bundle_holds_exactly_the_design_files_and_the_export(
    bundle_dir: Path, exported: Path
) -> None:
    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", bundle_dir.name)
    assert {p.name for p in bundle_dir.iterdir()} == {MANIFEST, *BUNDLE_FILES, STEP_FILE}
    manifest = read_manifest(bundle_dir)
    assert manifest["user_encoders"]["runtime"]["lag"] == "0"
    assert manifest["version"] == bundle_dir.name and manifest["schema_version"] == 2
    space = manifest["model_config"]["retrieval_dim"]
    retrieval_dim = space + 1  # the retrieval space's own width and its trend column
    assert space > 0 and manifest["retrieval_dim"] == retrieval_dim
    config = manifest["model_config"]
    assert config["tower_dim"] == 24 and not config["tower_taste"] and config["retrieval_trend"]
    assert manifest["dim"] == 24  # the ranking part: the towers, which read the state alone
    hnsw = manifest["hnsw"]
    assert hnsw["M"] == 16 and hnsw["k"] == 20 and hnsw["recall"] >= hnsw["target_recall"]
    for name in (*BUNDLE_FILES, STEP_FILE):
        assert manifest["files"][name]["sha256"] == sha256_of(bundle_dir / name)

    bundle = Bundle.open(bundle_dir)
    for name in (
        "item_ids",
        "item_artist_ids",
        "item_vectors",
        "retrieval_item_vectors",
        "user_ids",
        "user_vectors",
        "popular",
    ):
        assert np.array_equal(getattr(bundle, name), np.load(exported / f"{name}.npy"))
    assert bundle.user_vectors.shape[1] == bundle.user_dim == manifest["dim"] + retrieval_dim
    assert isinstance(bundle.user_vectors, np.memmap)
    assert manifest["n_items"] == len(bundle.item_ids) and manifest["n_users"] == len(
        bundle.user_ids
    )
    # The loaded index searches the retrieval space at the recall the manifest states.
    assert bundle.index is not None
    queries = bundle.retrieval_part(np.asarray(bundle.user_vectors))
    rows, _ = bundle.index.knn(queries, 20)
    truth = exact_top_k(queries, bundle.retrieval_item_vectors, 20)
    assert recall(rows, truth) >= hnsw["target_recall"]


@pytest.mark.parametrize("name", [MANIFEST, *BUNDLE_FILES, STEP_FILE])
def test_one_corrupt_byte_in_any_file_is_refused_naming_it(bundle_dir: Path, name: str) -> None:
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=re.escape(name)):
        Bundle.open(bundle_dir)


@pytest.mark.parametrize("name", ["items.hnsw", "user_vectors.npy", MANIFEST])
def test_a_truncated_file_is_refused_naming_it(bundle_dir: Path, name: str) -> None:
    path = bundle_dir / name
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(BundleError, match=re.escape(name)):
        Bundle.open(bundle_dir)


def rewrite(bundle_dir: Path, name: str, array: np.ndarray, *, allow_pickle: bool = False) -> None:
    """Replace one array *and* fix its checksum: a consistent but wrong bundle."""
    np.save(bundle_dir / name, array, allow_pickle=allow_pickle)
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    manifest["files"][name] = {
        "sha256": sha256_of(bundle_dir / name),
        "bytes": (bundle_dir / name).stat().st_size,
    }
    write_manifest(bundle_dir, manifest)


def test_arrays_that_disagree_with_the_manifest_are_refused(bundle_dir: Path) -> None:
    item_vectors = np.load(bundle_dir / "item_vectors.npy")
    rewrite(bundle_dir, "item_vectors.npy", item_vectors[:, :-1])
    with pytest.raises(BundleError, match=r"item_vectors\.npy: shape"):
        Bundle.open(bundle_dir)
    rewrite(bundle_dir, "item_vectors.npy", item_vectors.astype(np.float64))
    with pytest.raises(BundleError, match=r"item_vectors\.npy: dtype float64"):
        Bundle.open(bundle_dir)
    rewrite(bundle_dir, "item_vectors.npy", item_vectors)
    user_ids = np.load(bundle_dir / "user_ids.npy")
    rewrite(bundle_dir, "user_ids.npy", user_ids[::-1].copy())
    with pytest.raises(BundleError, match=r"user_ids\.npy: ids are not strictly increasing"):
        Bundle.open(bundle_dir)


def test_an_unknown_item_gets_the_cold_vector_and_a_bad_one_is_refused(bundle_dir: Path) -> None:
    bundle = Bundle.open(bundle_dir)
    cold = bundle.cold_item_vector
    assert cold is not None and cold.shape == (bundle.dim,) and cold.dtype == np.float32
    ids = np.array([bundle.item_ids[2], -5, bundle.item_ids[0]])
    vectors, known = bundle.ranking_items(ids)
    assert known.tolist() == [True, False, True]
    assert np.array_equal(vectors, np.stack([bundle.item_vectors[2], cold, bundle.item_vectors[0]]))
    without = dataclasses.replace(bundle, cold_item_vector=None)  # a model without one
    assert not without.ranking_items(ids)[0][1].any()  # a zero row, to be masked as unknown
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    for bad in (manifest["cold_item_vector"][:-1], ["x"] * bundle.dim, [float("nan")] * bundle.dim):
        write_manifest(bundle_dir, {**manifest, "cold_item_vector": bad})
        with pytest.raises(BundleError, match="cold_item_vector"):
            Bundle.open(bundle_dir)


def test_a_bundle_under_another_name_or_schema_is_refused(bundle_dir: Path) -> None:
    renamed = bundle_dir.with_name("20990101T0000Z-000000")
    bundle_dir.rename(renamed)
    with pytest.raises(BundleError, match="does not match version"):
        Bundle.open(renamed)
    manifest = json.loads((renamed / MANIFEST).read_text())
    write_manifest(renamed, {**manifest, "version": renamed.name, "schema_version": 1})
    with pytest.raises(BundleError, match="schema version 1, this reader needs 2"):
        Bundle.open(renamed)


def test_arrays_are_never_unpickled(bundle_dir: Path, tmp_path: Path) -> None:
    """A bundle whose checksums are right but whose array is a pickle must not run it."""
    marker = tmp_path / "pickle-ran"
    payload = np.array([Exploit(str(marker))], dtype=object)
    rewrite(bundle_dir, "popular.npy", payload, allow_pickle=True)
    with pytest.raises(BundleError, match=r"popular\.npy: not a readable \.npy array"):
        Bundle.open(bundle_dir)
    assert not marker.exists()
    # The same file loaded *with* pickles does run it: the test would notice a regression.
    np.load(bundle_dir / "popular.npy", allow_pickle=True)
    assert marker.exists()


class Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (Path(self.path), "ran"))  # type: ignore[return-value]


def test_a_failed_build_leaves_nothing_visible(exported: Path, tmp_path: Path) -> None:
    broken = tmp_path / "export"
    shutil.copytree(exported, broken)
    (broken / "encoder.onnx").unlink()
    root = tmp_path / "bundles"
    root.mkdir()
    with pytest.raises(BundleError, match=r"encoder\.onnx: missing"):
        build(broken, root, progress=False)
    assert list(root.iterdir()) == []
    shutil.copyfile(exported / "encoder.onnx", broken / "encoder.onnx")
    np.save(broken / "user_vectors.npy", np.zeros((3, 24), np.float32))
    with pytest.raises(BundleError, match=r"user_vectors\.npy: shape"):
        build(broken, root, progress=False)
    assert list(root.iterdir()) == []


def test_an_unreachable_recall_target_writes_no_bundle(exported: Path, tmp_path: Path) -> None:
    """Raw inner-product HNSW on clustered latents cannot reach recall 0.999 (test_hnsw shows
    about 0.98 at ef = every item): the build refuses unless told to allow it."""
    hard = tmp_path / "export"
    shutil.copytree(exported, hard)
    items, users = latents(3_000, 200, 24)
    write_shared_space(
        hard,
        item_ids=np.arange(1, 3_001, dtype=np.int64),
        item_vectors=items,
        user_ids=np.arange(1, 201, dtype=np.int64),
        user_vectors=users,
        popular=np.arange(1, 3_001, dtype=np.int64),
        manifest={},
    )
    root = tmp_path / "bundles"
    params = dict(k=50, sample=200, space="ip", m=8, ef_construction=64, threads=1, search="hnsw")
    with pytest.raises(ValueError, match="allow-low-recall"):
        build(hard, root, HnswParams(target_recall=0.999, **params), progress=False)  # type: ignore[arg-type]
    assert list(root.iterdir()) == []
    low = HnswParams(target_recall=0.999, allow_low_recall=True, **params)  # type: ignore[arg-type]
    kept = build(hard, root, low, progress=False)
    assert not kept.indexed.tuning.reached and "NOT REACHED" in kept.line()
    assert list_versions(root) == [Path(kept.path)]
    assert read_manifest(kept.path)["hnsw"]["reached"] is False
    # A bundle that searches every item exactly needs no graph to reach the target.
    exact = HnswParams(target_recall=0.999, **{**params, "search": "exact"})  # type: ignore[arg-type]
    served = build(hard, tmp_path / "exact", exact, progress=False)
    assert "every search exact" in served.line()
    assert (
        Bundle.open(served.path).exact_from == read_manifest(served.path)["hnsw"]["exact_from"] == 0
    )


def test_a_bundle_says_from_which_fetch_it_searches_exactly(bundle_dir: Path) -> None:
    manifest = read_manifest(bundle_dir)
    n = manifest["n_items"]
    assert manifest["hnsw"]["exact_from"] == n // 2 + 1  # built with search="hnsw"
    assert Bundle.open(bundle_dir).exact_from == n // 2 + 1
    hnsw = {key: value for key, value in manifest["hnsw"].items() if key != "exact_from"}
    write_manifest(bundle_dir, {**manifest, "hnsw": hnsw})  # a bundle from before the choice
    assert Bundle.open(bundle_dir).exact_from == n // 2 + 1
    for bad in (-1, 2.5, "all", True):
        write_manifest(bundle_dir, {**manifest, "hnsw": {**hnsw, "exact_from": bad}})
        with pytest.raises(BundleError, match=r"manifest\.json: hnsw\.exact_from must be a count"):
            Bundle.open(bundle_dir)
    with pytest.raises(ValueError, match="search must be one of auto, hnsw, exact"):
        HnswParams(search="graph")


@pytest.mark.parametrize("spacing", [1, 3, 1_000])  # dense ids (a table), and sparse (a search)
def test_an_id_table_finds_the_rows_the_binary_search_finds(spacing: int) -> None:
    rng = np.random.default_rng(spacing)
    ids = np.cumsum(rng.integers(1, spacing + 1, 5_000)) + 10**6
    rows = IdRows(ids)
    assert (rows.table is not None) == (spacing < IdRows.DENSITY)
    extremes = [np.iinfo(np.int64).min, -1, 0, ids[0] - 1, ids[-1] + 1, np.iinfo(np.int64).max]
    asked = np.concatenate([rng.choice(ids, 2_000), rng.integers(ids[0], ids[-1], 2_000), extremes])
    got, found = rows(asked)
    want, known = rows_of(ids, asked)
    assert got.dtype == np.int64 and np.array_equal(found, known)
    assert np.array_equal(got[found], want[known]) and np.all(ids[got[found]] == asked[found])
    assert np.all((got >= 0) & (got < len(ids)))  # a missing id's row is a valid index too
    assert rows(np.zeros(0, np.int64))[0].shape == (0,)
    assert IdRows(np.zeros(0, np.int64))(asked)[1].sum() == 0


@pytest.mark.parametrize("artists_per_item", [0.0, 0.1, 3.0])
def test_artist_groups_find_the_items_a_pass_over_the_catalog_finds(
    artists_per_item: float,
) -> None:
    rng = np.random.default_rng(7)
    ids = np.cumsum(rng.integers(1, 5, 3_000)) + 10**9
    n_artists = max(1, int(artists_per_item * len(ids)))
    artist = rng.integers(0, n_artists, len(ids)) if artists_per_item else np.full(len(ids), -1)
    artist[rng.random(len(ids)) < 0.1] = -1  # items without an artist
    groups = ArtistItems(ids, artist)
    for asked in (
        rng.choice(artist, 40),  # with repeats, and maybe -1
        np.array([-1, -1]),
        np.array([n_artists, n_artists + 5, np.iinfo(np.int64).max]),  # nobody's
        np.zeros(0, np.int64),
    ):
        got = groups(asked)
        want = ids[np.isin(artist, asked[asked >= 0])]
        assert len(got) == len(set(got.tolist())) and np.array_equal(np.sort(got), want)


def test_sorted_unique_is_np_unique() -> None:
    rng = np.random.default_rng(9)
    for size in (0, 1, 2, 50, 1_400):
        values = rng.integers(-30, 30, size)
        assert np.array_equal(sorted_unique(values), np.unique(values))


def test_members_of_a_sorted_set_are_those_isin_finds() -> None:
    rng = np.random.default_rng(8)
    values = rng.integers(-50, 50, 500)
    for size in (0, 1, 7, 90):
        sorted_set = np.unique(rng.integers(-60, 60, size))
        got = members(values, sorted_set)
        assert got.dtype == bool and np.array_equal(got, np.isin(values, sorted_set))


def test_take_rows_is_fancy_indexing_for_rows_in_range() -> None:
    rng = np.random.default_rng(9)
    table, ids = rng.standard_normal((50, 6)).astype(np.float32), np.arange(50) * 3
    for rows in (np.zeros(0, np.int64), rng.integers(0, 50, 200), np.array([49, 0, 49])):
        got = take_rows(table, rows)
        assert got.dtype == table.dtype and np.array_equal(got, table[rows])
        assert np.array_equal(take_rows(ids, rows), ids[rows])
