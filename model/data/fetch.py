"""Public data a fresh machine can get through the package registry alone.

MovieLens-100K's 100,000 ratings ship inside RecBole's wheel on PyPI
(``recbole/dataset_example/ml-100k/ml-100k.inter``, the same rows as GroupLens' ``u.data`` with a
header line). :func:`ml100k` returns a directory holding one or the other:

1. ``$ARGUS_ML100K`` when set (a directory with ``u.data`` or ``ml-100k.inter``);
2. ``../shared/data/ml-100k`` next to the checkout, on machines that keep a copy there (a fast
   path, never needed);
3. the cache (``$ARGUS_CACHE``, else ``$XDG_CACHE_HOME/argus``, else ``~/.cache/argus``): the first
   call downloads the wheel with ``pip download --no-deps``, checks its SHA-256, and moves the one
   file out of the zip into place atomically, so an interrupted fetch leaves nothing half-written.

The data are never part of the repository.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

RECBOLE = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
ML100K_MEMBER = "recbole/dataset_example/ml-100k/ml-100k.inter"
ML100K_FILES = ("u.data", "ml-100k.inter")

_CHECKOUT = Path(__file__).resolve().parents[2]
_BESIDE = _CHECKOUT.parent / "shared" / "data" / "ml-100k"


class FetchError(ConnectionError):
    """A download that failed or did not match its hash."""


def cache_dir() -> Path:
    if env := os.environ.get("ARGUS_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "argus"


def holds_ml100k(path: Path) -> bool:
    return any((path / name).is_file() for name in ML100K_FILES)


def ml100k(cache: Path | None = None) -> Path:
    """A directory holding MovieLens-100K, downloading it into the cache the first time."""
    if env := os.environ.get("ARGUS_ML100K"):
        path = Path(env)
        if not holds_ml100k(path):
            raise FileNotFoundError(f"ARGUS_ML100K={path}: holds neither u.data nor ml-100k.inter")
        return path
    if cache is None and holds_ml100k(_BESIDE):
        return _BESIDE
    target = (cache or cache_dir()) / "ml-100k"
    if not (target / "ml-100k.inter").is_file():
        _fetch_ml100k(target)
    return target


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_ml100k(target: Path) -> None:
    from_wheel(RECBOLE, RECBOLE_WHEEL, RECBOLE_SHA256, {ML100K_MEMBER: "ml-100k.inter"}, target)


def from_wheel(
    requirement: str, wheel: str, digest: str, members: dict[str, str], target: Path
) -> None:
    """Files out of a PyPI wheel: ``pip download --no-deps requirement``, its SHA-256 checked
    against ``digest``, each ``members`` entry (path in the zip -> file name) moved into
    ``target`` whole, so an interrupted fetch leaves nothing half-written."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", requirement]
        done = subprocess.run([*command, "-d", tmp], capture_output=True, text=True)
        path = Path(tmp) / wheel
        if done.returncode != 0 or not path.is_file():
            reason = (done.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise FetchError(f"pip download {requirement} failed: {reason}")
        if (found := sha256(path)) != digest:
            raise FetchError(f"{wheel}: SHA-256 {found}, expected {digest}")
        with zipfile.ZipFile(path) as zf:
            for member, name in members.items():
                part = Path(tmp) / name
                part.write_bytes(zf.read(member))
                os.replace(part, target / name)
