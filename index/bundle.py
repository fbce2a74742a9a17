"""Bundles: one immutable, verified directory per daily version.

``build`` turns an ``argus export`` directory into ``ROOT/<version>/``::

    manifest.json      schema version, model config, dim, counts, HNSW parameters and measured
                       recall, from how many items fetched the service searches exactly
                       (``exact_from``, with both searches' measured times), the cold item
                       vector (the ranking vector of an item the catalog lacks, when the model
                       has one), sha256 and size of every other file, and its own checksum
    items.hnsw         hnswlib index over retrieval_item_vectors for inner-product search (label =
                       row; index.hnsw.ItemIndex: the MIPS-to-L2 transform by default)
    item_ids.npy       int64 [n_items], sorted; row i of the index is item_ids[i]
    item_artist_ids.npy  int64 [n_items], each item's artist (-1 unknown): the unfamiliar filter
    item_vectors.npy   float32 [n_items, dim]: the ranking space (/score, ranking_score)
    retrieval_item_vectors.npy  float32 [n_items, retrieval_dim]: the retrieval space (/candidates)
    encoder.onnx       the runtime user encoder: [ranking | retrieval] user vectors, and the state
                       the service caches (every layer's keys and values, the taste sums)
    encoder_step.onnx  (optional) the step graph: new events after a cached state
    popular.npy        int64 item ids, most popular first: the fallback ranking
    user_ids.npy       int64 [n_users], sorted
    user_vectors.npy   float32 [n_users, dim + retrieval_dim], the ranking vector then the
                       retrieval query (the local store maps it; publish sends it to Redis: one
                       read per request serves both spaces)

The version is the UTC build time, to the second, and a short hash of the files' contents
(``20261123T040012Z-3f9a1c``), so versions sort by time and two different bundles never share a
name. The directory is written under a hidden name and renamed when complete: a reader never sees
a half-built bundle.

``Bundle.open`` checks the manifest's own checksum, then every file's size and sha256, then every
array's dtype and shape against the manifest, and refuses anything else with a
:class:`BundleError` naming the file. Arrays are loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from index.hnsw import (
    SEARCHES,
    ItemIndex,
    SearchChoice,
    Tuning,
    choose_search,
    tune_ef,
)
from model.contract import ENCODER_FILE, EXPORT_ARRAYS, EXPORT_MANIFEST, STEP_FILE
from model.progress import bar as tqdm
from model.readout import Readout, history_grades

SCHEMA_VERSION = 2  # 2: two item spaces (retrieval, ranking)
MANIFEST = "manifest.json"
INDEX_FILE = "items.hnsw"
TIMED_QUERIES = 100  # tuning queries that time the two searches (a minute's build at 1M items)
ARRAY_FILES = {f"{name}.npy": spec for name, spec in EXPORT_ARRAYS.items()}
BUNDLE_FILES = (INDEX_FILE, *ARRAY_FILES, ENCODER_FILE)


class BundleError(ValueError):
    """A bundle (or export) that must not be used; the message starts with the offending file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


@dataclass(frozen=True)
class HnswParams:
    m: int = 16  # graph degree: memory and recall grow with it
    ef_construction: int = 200  # build-time beam width: build time and graph quality
    k: int = 100  # recall@k is measured at this k (the service's usual number of candidates)
    target_recall: float = 0.95  # ef_search = smallest ef reaching this recall@k vs exact search
    sample: int = 1_000  # user vectors used as tuning queries
    threads: int = 0  # build threads, 0 = every core
    seed: int = 0
    space: str = "mips"  # see index.hnsw.ItemIndex; "ip" is hnswlib's raw inner-product space
    allow_low_recall: bool = False  # write the bundle even when no ef reaches target_recall
    search: str = "auto"  # what the service searches: hnsw, exact, or whichever is faster (auto)

    def __post_init__(self) -> None:
        if self.m < 2 or self.ef_construction < 1 or self.k < 1 or self.sample < 1:
            raise ValueError("M >= 2, ef_construction >= 1, k >= 1 and sample >= 1 are required")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {self.search!r}")
        if not 0.0 < self.target_recall <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target_recall}")


def sha256_of(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` with its own checksum (over every other field)."""
    manifest = {**manifest, "checksum": _manifest_checksum(manifest)}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def load_array(path: Path, *, mmap: bool = False) -> np.ndarray:
    """``np.load`` that never unpickles and names the file in every error."""
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise BundleError(path, "missing") from None
    except (ValueError, OSError, EOFError) as error:
        raise BundleError(path, f"not a readable .npy array ({error})") from None


def check_array(path: Path, array: np.ndarray, dtype: str, shape: tuple[int | None, ...]) -> None:
    """Refuse ``array`` unless it has ``dtype`` and ``shape`` (``None`` matches any length)."""
    if array.dtype != np.dtype(dtype):
        raise BundleError(path, f"dtype {array.dtype}, expected {dtype}")
    if len(array.shape) != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        wanted = tuple("*" if want is None else want for want in shape)
        raise BundleError(path, f"shape {array.shape}, expected {wanted}")


def _expected_shapes(
    dim: int, retrieval_dim: int, n_items: int, n_users: int
) -> dict[str, tuple[int | None, ...]]:
    return {
        "item_ids.npy": (n_items,),
        "item_artist_ids.npy": (n_items,),
        "item_vectors.npy": (n_items, dim),
        "retrieval_item_vectors.npy": (n_items, retrieval_dim),
        "user_ids.npy": (n_users,),
        "user_vectors.npy": (n_users, dim + retrieval_dim),
        "popular.npy": (None,),
    }


def dots(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(N, D) float32 vectors, a (D,) query -> (N,) float32 inner products, each summed in
    float64 along its own row and rounded once: one item's score does not depend on which items
    share the batch (a float32 BLAS product picks its kernel, and so its rounding, by the batch's
    shape), and it is the correctly rounded dot product but for float64's own error."""
    return np.einsum("ij,j->i", vectors.astype(np.float64), query.astype(np.float64)).astype(
        np.float32
    )


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` for ``rows`` known to be in range, by ``ndarray.take`` in clip mode.
    numpy's fancy indexing checks each index and copies row by row; at a million items, right
    after a search has filled the caches with the graph, it took 67 µs to gather 100 rows of
    two 128-wide tables where this takes 18 µs. Clip mode maps a row out of range to the
    nearest valid one, so only rows from the index or :func:`rows_of` come here."""
    return array.take(rows, axis=0, mode="clip")


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, found)`` of ``ids`` in the sorted id array of a bundle (rows of missing ids are
    valid indices, to be masked with ``found``)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    rows = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return rows, take_rows(sorted_ids, rows) == ids


class IdRows:
    """:func:`rows_of` for one sorted id array, asked many times: where the ids are dense (they
    span at most :attr:`DENSITY` slots an id), a table of each id's row answers with one memory
    read an id, where a binary search over a million ids misses the cache at most of its 20
    steps (1,000 ids took 0.35 ms, a third of ``/score``). Sparse ids are searched as before."""

    DENSITY = 4

    def __init__(self, sorted_ids: np.ndarray) -> None:
        self.ids = sorted_ids
        self.table: np.ndarray | None = None
        self.low = self.high = 0
        if len(sorted_ids) and len(sorted_ids) < 2**31:
            low, high = int(sorted_ids[0]), int(sorted_ids[-1])
            if high - low + 1 <= self.DENSITY * len(sorted_ids) + 1024:
                self.table = np.full(high - low + 1, -1, dtype=np.int32)
                self.table[sorted_ids - low] = np.arange(len(sorted_ids), dtype=np.int32)
                self.low, self.high = low, high

    def __call__(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, found)`` as :func:`rows_of` gives them (a missing id's row is 0)."""
        if self.table is None:
            return rows_of(self.ids, ids)
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= self.low) & (ids <= self.high)
        with np.errstate(over="ignore"):  # an id far outside wraps, and is masked out
            rows = take_rows(self.table, np.where(inside, ids - self.low, 0))
        found = inside & (rows >= 0)
        return np.where(found, rows, 0).astype(np.int64), found


class ArtistItems:
    """The catalog's item ids grouped by artist, for the items of a few artists: each asked
    artist's group found through an :class:`IdRows` of the artists (a table where their ids are
    dense), where a pass over the catalog (``np.isin``) took 5-9 ms a request at a million items.
    Items without an artist (-1) are never asked for."""

    def __init__(self, item_ids: np.ndarray, artist_ids: np.ndarray) -> None:
        order = np.argsort(artist_ids, kind="stable")
        self.items = item_ids[order]  # each artist's items together, in id order
        artists, self.starts, lengths = np.unique(
            artist_ids[order], return_index=True, return_counts=True
        )
        self.lengths = lengths.astype(np.int64)
        self.rows = IdRows(artists)

    def __call__(self, artists: np.ndarray) -> np.ndarray:
        """The ids of every catalog item by one of ``artists`` (each once, in no set order)."""
        rows, found = self.rows(sorted_unique(artists[artists >= 0]))
        start, lengths = self.starts[rows[found]], self.lengths[rows[found]]
        # the positions of each group, back to back: the group's start, then one more per item
        first = np.cumsum(lengths) - lengths
        return self.items[np.repeat(start - first, lengths) + np.arange(int(lengths.sum()))]


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` for a request's few thousand ids: a sort and a mask (numpy 2.4's
    ``np.unique`` took 79 µs for 1,400 ids, this 8.5)."""
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def members(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_set)`` for a sorted ``sorted_set``: one binary search a value
    (``np.isin`` sorts both sides every call: 10 µs for 100 ids against 3, 54 µs for 400 against
    300, where this takes 2 and 5)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), dtype=bool)
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[at] == values


def _check_ids(path: Path, ids: np.ndarray) -> None:
    if len(ids) > 1 and not bool(np.all(ids[1:] > ids[:-1])):
        raise BundleError(path, "ids are not strictly increasing")


def read_export(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and arrays of an ``argus export`` directory, checked for consistency."""
    directory = Path(directory)
    manifest_path = directory / EXPORT_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        dim, retrieval_dim = int(manifest["dim"]), int(manifest["retrieval_dim"])
    except FileNotFoundError:
        raise BundleError(manifest_path, "missing; is this an `argus export` directory?") from None
    except (ValueError, KeyError, TypeError) as error:
        raise BundleError(manifest_path, f"unreadable ({error})") from None
    arrays = {name: load_array(directory / name) for name in ARRAY_FILES}
    shapes = _expected_shapes(
        dim, retrieval_dim, len(arrays["item_ids.npy"]), len(arrays["user_ids.npy"])
    )
    for name, array in arrays.items():
        check_array(directory / name, array, ARRAY_FILES[name][0], shapes[name])
    _check_ids(directory / "item_ids.npy", arrays["item_ids.npy"])
    _check_ids(directory / "user_ids.npy", arrays["user_ids.npy"])
    if len(arrays["item_ids.npy"]) == 0:
        raise BundleError(directory / "item_ids.npy", "no items")
    if not (directory / ENCODER_FILE).is_file():
        raise BundleError(directory / ENCODER_FILE, "missing")
    cold_vector(manifest_path, manifest)
    readout_of(manifest_path, manifest)
    return manifest, arrays


def readout_of(path: Path, manifest: dict[str, Any]) -> Readout:
    """The manifest's feedback readout, checked (off when it names none)."""
    try:
        return Readout.from_manifest(manifest)
    except ValueError as error:
        raise BundleError(path, str(error)) from None


def cold_vector(path: Path, manifest: dict[str, Any]) -> np.ndarray | None:
    """The manifest's ``cold_item_vector`` as (dim,) float32, checked (None when it has none)."""
    raw = manifest.get("cold_item_vector")
    if raw is None:
        return None
    try:
        vector = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError):
        raise BundleError(path, "cold_item_vector is not a list of numbers") from None
    if vector.shape != (int(manifest["dim"]),) or not np.isfinite(vector).all():
        raise BundleError(
            path, f"cold_item_vector must be {manifest['dim']} finite numbers, got {vector.shape}"
        )
    return vector


@dataclass(frozen=True)
class Indexed:
    """The index of a bundle's items, how it was tuned, and the search the service will run."""

    index: ItemIndex
    tuning: Tuning
    build_s: float
    choice: SearchChoice  # from which fetch the service searches exactly


@dataclass
class BuildSummary:
    path: str
    version: str
    dim: int
    items: int
    users: int
    indexed: Indexed
    elapsed_s: float
    params: HnswParams = field(default_factory=HnswParams)

    def line(self) -> str:
        t, build_s = self.indexed.tuning, self.indexed.build_s
        status = "" if t.reached else f" (TARGET {t.target} NOT REACHED)"
        return (
            f"built bundle {self.version}: {self.items:,} items x {self.dim}, "
            f"HNSW M={self.params.m} ef_construction={self.params.ef_construction} in "
            f"{build_s:.1f} s ({self.items / max(build_s, 1e-9):,.0f} items/s), "
            f"ef_search={t.ef_search} recall@{t.k}={t.recall:.4f}{status} on {t.queries:,} "
            f"user queries; {self.search_line()}; {self.users:,} user vectors; "
            f"{self.elapsed_s:.1f} s -> {self.path}"
        )

    def search_line(self) -> str:
        choice = self.indexed.choice
        exact_from = (
            "every search exact"
            if choice.exact_from == 0
            else f"exact from {choice.exact_from:,} items fetched"
        )
        timed = ", ".join(
            f"{t.fetch}: HNSW {t.hnsw_ms:.3f} ms / exact {t.exact_ms:.3f} ms"
            for t in choice.timings
        )
        return f"{exact_from} ({f'one query, {timed}' if timed else 'chosen'})"


def tuned_index(
    items: np.ndarray, pool: np.ndarray, params: HnswParams, *, progress: bool
) -> Indexed:
    """The HNSW index of ``items``, its ``ef_search`` tuned on a seeded sample of ``pool``
    queries, its build seconds, and the search the service runs: with ``search="auto"`` the
    exact pass unless the tuned index is clearly faster (:func:`index.hnsw.choose_search`). An
    index short of the recall target is refused unless allowed or the exact pass is chosen."""
    with tqdm(total=1, desc="HNSW build", disable=not progress, unit="index") as bar:
        began = time.perf_counter()
        index = ItemIndex.build(
            items,
            space=params.space,
            m=params.m,
            ef_construction=params.ef_construction,
            threads=params.threads,
            seed=params.seed,
        )
        build_s = time.perf_counter() - began
        bar.update()
    rng = np.random.default_rng(params.seed)
    queries = pool[rng.choice(len(pool), size=min(params.sample, len(pool)), replace=False)]
    tuning = tune_ef(index, items, queries, k=params.k, target=params.target_recall)
    timed = queries[:TIMED_QUERIES]
    choice = choose_search(index, items, timed, k=params.k, search=params.search)
    if choice.exact_from > 0 and not tuning.reached and not params.allow_low_recall:
        raise ValueError(
            f"HNSW recall@{tuning.k} reaches only {tuning.recall:.4f} < {tuning.target} "
            f"(best ef {tuning.ef_search}); raise --m/--ef-construction, use --space mips, "
            "pass --allow-low-recall, or --search exact"
        )
    return Indexed(index, tuning, build_s, choice)


def hnsw_manifest(params: HnswParams, indexed: Indexed) -> dict[str, Any]:
    """The manifest's ``hnsw`` entry: how the index was built and tuned, and the search the
    service runs."""
    index, tuning, choice = indexed.index, indexed.tuning, indexed.choice
    return {
        "exact_from": choice.exact_from,
        "search_ms": {
            str(t.fetch): {"hnsw": round(t.hnsw_ms, 4), "exact": round(t.exact_ms, 4)}
            for t in choice.timings
        },
        "space": params.space,
        "max_norm": index.max_norm,
        "M": params.m,
        "ef_construction": params.ef_construction,
        "ef_search": tuning.ef_search,
        "k": tuning.k,
        "target_recall": tuning.target,
        "recall": tuning.recall,
        "reached": tuning.reached,
        "tuning_queries": tuning.queries,
        "tried": {str(ef): r for ef, r in tuning.tried.items()},
        "build_seconds": round(indexed.build_s, 3),
        "build_threads": params.threads or os.cpu_count(),
    }


def build(
    export_dir: str | Path,
    bundles: str | Path,
    params: HnswParams | None = None,
    *,
    progress: bool = True,
) -> BuildSummary:
    """Build ``bundles/<version>/`` from ``export_dir`` (see the module docstring)."""
    params = params or HnswParams()
    began = time.perf_counter()
    export_manifest, arrays = read_export(export_dir)
    items, users = arrays["retrieval_item_vectors.npy"], arrays["user_vectors.npy"]
    n_items, dim = arrays["item_vectors.npy"].shape
    queries_of_users = users[:, dim:]  # the retrieval half
    root = Path(bundles)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        pool = queries_of_users if len(users) else items  # no users yet: tune on items
        indexed = tuned_index(items, pool, params, progress=progress)
        indexed.index.save(str(tmp / INDEX_FILE))
        optional = [STEP_FILE] if (Path(export_dir) / STEP_FILE).is_file() else []
        for name in (*ARRAY_FILES, ENCODER_FILE, *optional):
            shutil.copyfile(Path(export_dir) / name, tmp / name)
        digests = {name: sha256_of(tmp / name) for name in (*BUNDLE_FILES, *optional)}
        files = {
            name: {"sha256": digest, "bytes": (tmp / name).stat().st_size}
            for name, digest in digests.items()
        }
        content = hashlib.sha256("".join(digests.values()).encode())
        version = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{content.hexdigest()[:6]}"
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "model_config": export_manifest.get("model_config", {}),
            "cold_item_vector": export_manifest.get("cold_item_vector"),
            "readout": export_manifest.get("readout"),
            "dim": int(dim),
            "retrieval_dim": int(items.shape[1]),
            "n_items": int(n_items),
            "n_users": len(users),
            "n_popular": len(arrays["popular.npy"]),
            "trained_until": export_manifest.get("trained_until"),
            "events_until": export_manifest.get("events_until"),
            "encoder": export_manifest.get("encoder", {}),
            "user_encoders": export_manifest.get("user_encoders", {}),
            "hnsw": hnsw_manifest(params, indexed),
            "source": str(export_dir),
            "files": files,
        }
        write_manifest(tmp, manifest)
        final = root / version
        if final.exists():
            raise BundleError(final, "a bundle with this version already exists")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return BuildSummary(
        path=str(final),
        version=version,
        dim=int(dim),
        items=int(n_items),
        users=len(users),
        indexed=indexed,
        elapsed_s=time.perf_counter() - began,
        params=params,
    )


def read_manifest(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of bundle ``path``; with ``verify``, after checking its checksum and the size
    and sha256 of every file it lists."""
    path = Path(path)
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise BundleError(manifest_path, "missing; not a bundle directory") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleError(manifest_path, f"not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("checksum") != _manifest_checksum(manifest):
        raise BundleError(manifest_path, "checksum mismatch: the manifest is corrupt or was edited")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            manifest_path,
            f"schema version {manifest.get('schema_version')}, this reader needs {SCHEMA_VERSION}",
        )
    if manifest["version"] != path.name:
        raise BundleError(path, f"directory name does not match version {manifest['version']}")
    missing = [name for name in BUNDLE_FILES if name not in manifest["files"]]
    if missing:
        raise BundleError(manifest_path, f"lists no checksum for {', '.join(missing)}")
    if verify:
        for name, expected in manifest["files"].items():
            file = path / name
            if not file.is_file():
                raise BundleError(file, "missing")
            size = file.stat().st_size
            if size != expected["bytes"]:
                raise BundleError(file, f"{size} bytes, the manifest says {expected['bytes']}")
            if sha256_of(file) != expected["sha256"]:
                raise BundleError(file, "sha256 mismatch: the file is corrupt or was replaced")
    return manifest


@dataclass
class Bundle:
    """A verified, read-only bundle: arrays (user vectors memory-mapped), the HNSW index with its
    tuned ``ef`` set, and the encoder's path."""

    path: Path
    manifest: dict[str, Any]
    item_ids: np.ndarray
    item_artist_ids: np.ndarray
    item_vectors: np.ndarray
    retrieval_item_vectors: np.ndarray
    user_ids: np.ndarray
    user_vectors: np.ndarray
    popular: np.ndarray
    index: ItemIndex | None
    # a search that fetches this many items or more is an exact pass over the retrieval vectors,
    # not the graph: the build found it faster there (index.hnsw.choose_search); 0: always; -1
    # (a bundle from before the choice): half the catalog, where an exact pass is as cheap
    exact_from: int = -1
    cold_item_vector: np.ndarray | None = None  # (dim,) the ranking vector of an unknown item
    # the feedback readout the export read into the stored vectors (:meth:`read_feedback`)
    readout: Readout = field(default_factory=Readout)
    item_rows: IdRows = field(init=False, repr=False)  # ``(rows, found)`` of item ids
    artist_items: ArtistItems = field(init=False, repr=False)  # item ids of some artists

    def __post_init__(self) -> None:
        if self.exact_from < 0:
            self.exact_from = len(self.item_ids) // 2 + 1
        self.item_rows = IdRows(self.item_ids)
        self.artist_items = ArtistItems(self.item_ids, self.item_artist_ids)

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def prior_query(self) -> np.ndarray | None:
        """(dim,) the ranking query of a user with no vector: with an item prior (the model's
        non-personal score, the last coordinate of every item vector) that coordinate alone;
        None without one (such a user gets no scores)."""
        if not self.manifest.get("model_config", {}).get("item_prior"):
            return None
        query = np.zeros(self.dim, dtype=np.float32)
        query[-1] = 1.0
        return query

    def read_feedback(self, vector: np.ndarray, history: np.ndarray) -> np.ndarray:
        """A runtime encoder's user ``vector`` with the readout of its live ``history``'s
        feedback (the newest ``max_len`` events, as the encoder reads them) in its ranking part:
        the vector the export would store for that history."""
        readout = self.readout
        if not readout.on or not len(history):
            return vector
        recent = history[-int(self.manifest["model_config"]["max_len"]) :]
        rows, known = self.item_rows(recent["item_id"].astype(np.int64))
        grades = np.where(known, history_grades(recent), np.nan)
        items = np.where(known[:, None], take_rows(self.item_vectors, rows), 0.0)
        out = vector.copy()
        ranking = self.ranking_part(vector)[None]
        out[: self.dim] = readout.apply(ranking, items[None], grades[None])[0]
        return out

    def ranking_items(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, known)`` of (N,) item ids: their (N, dim) ranking vectors (an item the
        catalog lacks gets the cold item vector, or zeros when the bundle has none) and which
        of them the catalog holds."""
        rows, known = self.item_rows(ids)
        vectors = take_rows(self.item_vectors, rows)
        if known.all():
            return vectors, known
        cold = (
            np.zeros(self.dim, np.float32)
            if self.cold_item_vector is None
            else self.cold_item_vector
        )
        return np.where(known[:, None], vectors, cold).astype(np.float32), known

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def retrieval_dim(self) -> int:
        return int(self.manifest["retrieval_dim"])

    @property
    def user_dim(self) -> int:
        """Width of a user vector: the ranking vector, then the retrieval query."""
        return self.dim + self.retrieval_dim

    def ranking_part(self, user_vector: np.ndarray) -> np.ndarray:
        return user_vector[..., : self.dim]

    def retrieval_part(self, user_vector: np.ndarray) -> np.ndarray:
        return user_vector[..., self.dim :]

    @property
    def encoder_path(self) -> Path:
        return self.path / ENCODER_FILE

    @property
    def step_path(self) -> Path | None:
        """The encoder's step graph (incremental encoding), when the bundle has one."""
        return self.path / STEP_FILE if STEP_FILE in self.manifest["files"] else None

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, with_index: bool = True) -> Bundle:
        """Open bundle ``path``. ``verify`` checks every checksum first (seconds per GB);
        ``with_index=False`` skips loading the HNSW graph (publish needs only the vectors)."""
        path = Path(path)
        manifest = read_manifest(path, verify=verify)
        dim, n_items, n_users = manifest["dim"], manifest["n_items"], manifest["n_users"]
        shapes = _expected_shapes(dim, manifest["retrieval_dim"], n_items, n_users)
        arrays = {name: load_array(path / name, mmap=name == "user_vectors.npy") for name in shapes}
        for name, array in arrays.items():
            check_array(path / name, array, ARRAY_FILES[name][0], shapes[name])
        _check_ids(path / "item_ids.npy", arrays["item_ids.npy"])
        _check_ids(path / "user_ids.npy", arrays["user_ids.npy"])
        index = None
        if with_index:
            index_path, hnsw = path / INDEX_FILE, manifest["hnsw"]
            try:
                index = ItemIndex.load(
                    str(index_path),
                    space=hnsw["space"],
                    dim=manifest["retrieval_dim"],
                    max_norm=hnsw["max_norm"],
                    n=n_items,
                )
            except RuntimeError as error:
                raise BundleError(index_path, f"not a loadable hnswlib index ({error})") from None
            if index.count != n_items:
                raise BundleError(index_path, f"{index.count} items, the manifest says {n_items}")
            index.set_ef(int(manifest["hnsw"]["ef_search"]))
        exact_from = manifest["hnsw"].get("exact_from")
        if exact_from is not None and (type(exact_from) is not int or exact_from < 0):
            raise BundleError(
                path / MANIFEST, f"hnsw.exact_from must be a count >= 0, got {exact_from!r}"
            )
        return cls(
            path=path,
            manifest=manifest,
            item_ids=arrays["item_ids.npy"],
            item_artist_ids=arrays["item_artist_ids.npy"],
            item_vectors=arrays["item_vectors.npy"],
            retrieval_item_vectors=arrays["retrieval_item_vectors.npy"],
            user_ids=arrays["user_ids.npy"],
            user_vectors=arrays["user_vectors.npy"],
            popular=arrays["popular.npy"],
            index=index,
            exact_from=-1 if exact_from is None else exact_from,
            cold_item_vector=cold_vector(path / MANIFEST, manifest),
            readout=readout_of(path / MANIFEST, manifest),
        )


VERSION = re.compile(r"\d{8}T\d{4}(\d{2})?Z-[0-9a-f]{6}")


def is_version(name: str) -> bool:
    """Whether ``name`` is a bundle version (``20261123T040012Z-3f9a1c``; older ones without
    seconds): nothing else may be joined onto a bundle root (``../x`` or ``/x`` would escape it)."""
    return VERSION.fullmatch(name) is not None


def list_versions(bundles: str | Path) -> list[Path]:
    """Complete bundle directories under ``bundles``, oldest first (versions sort by time)."""
    root = Path(bundles)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )
