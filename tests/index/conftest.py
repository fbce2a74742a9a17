from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from index.bundle import HnswParams, build
from model.contract import EXPORT_MANIFEST


@pytest.fixture(scope="session")
def bundle_root(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One bundle built from the tiny real export; tests copy it before damaging it."""
    root = tmp_path_factory.mktemp("bundles")
    build(exported, root, HnswParams(k=20, sample=200, search="hnsw"), progress=False)
    return root


@pytest.fixture
def bundle_dir(bundle_root: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle (same version name)."""
    (source,) = [p for p in bundle_root.iterdir() if not p.name.startswith(".")]
    copy = tmp_path / "bundles" / source.name
    shutil.copytree(source, copy)
    return copy


def export_with_users(exported: Path, out: Path, n_users: int, seed: int = 0) -> Path:
    """A copy of the tiny export with ``n_users`` synthetic users (for publish at scale)."""
    import json

    shutil.copytree(exported, out)
    dim = np.load(out / "user_vectors.npy").shape[1]  # ranking | retrieval
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(10 * n_users, n_users, replace=False)).astype(np.int64) + 1
    np.save(out / "user_ids.npy", ids)
    np.save(out / "user_vectors.npy", rng.standard_normal((n_users, dim)).astype(np.float32))
    manifest = json.loads((out / EXPORT_MANIFEST).read_text())
    (out / EXPORT_MANIFEST).write_text(json.dumps({**manifest, "n_users": n_users}))
    return out
