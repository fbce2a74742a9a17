from __future__ import annotations

import ctypes
import mmap
import os
import re
from pathlib import Path

import numpy as np

from index.hnsw import ItemIndex
from index.pages import (
    HUGE_PAGE,
    MIN_REGION,
    anonymous_regions,
    back_with_huge_pages,
    mapped_since,
)


def huge_pages_possible() -> bool:
    """Transparent huge pages not ``never``, and a kernel with MADV_COLLAPSE (6.1+)."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", os.uname().release).groups())  # type: ignore[union-attr]
    return "[never]" not in mode and (major, minor) >= (6, 1)


def huge_kib(start: int, end: int) -> int:
    """AnonHugePages (KiB) of the mapping that holds ``[start, end)``, from /proc/self/smaps."""
    inside, total = False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            inside = low <= start and end <= high
        elif inside and line.startswith("AnonHugePages:"):
            total += int(line.split()[1])
    return total


def test_an_anonymous_mapping_is_found_and_collapsed_where_the_kernel_can() -> None:
    size = MIN_REGION + 2 * HUGE_PAGE
    memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    memory.write(b"\x01" * size)  # touched: backed by 4 KiB pages now
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    holding = [r for r in anonymous_regions() if r[0] <= start and start + size <= r[1]]
    assert len(holding) == 1
    collapsed = back_with_huge_pages(set(holding))
    if huge_pages_possible():
        assert collapsed >= MIN_REGION
        assert huge_kib(start, start + size) * 1024 >= MIN_REGION
    else:
        assert collapsed == 0
    memory.seek(0)
    assert memory.read(size) == b"\x01" * size  # the contents survive the move
    assert back_with_huge_pages({(start, start + MIN_REGION - HUGE_PAGE)}) == 0  # too small


def test_a_loaded_index_answers_the_same_from_huge_pages(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((100_000, 48)).astype(np.float32)  # a graph of about 26 MiB
    built = ItemIndex.build(items, m=8, ef_construction=20, threads=2)
    built.save(str(tmp_path / "items.hnsw"))
    kwargs = {"space": "mips", "dim": 48, "max_norm": built.max_norm, "n": len(items)}
    plain = ItemIndex.load(str(tmp_path / "items.hnsw"), huge_pages=False, **kwargs)  # type: ignore[arg-type]
    huge = ItemIndex.load(str(tmp_path / "items.hnsw"), **kwargs)  # type: ignore[arg-type]
    assert plain.huge_page_bytes == 0
    assert (huge.huge_page_bytes >= MIN_REGION) == huge_pages_possible()
    queries = rng.standard_normal((50, 48)).astype(np.float32)
    for index in (plain, huge):
        index.set_ef(64)
    rows, scores = huge.knn(queries, 20)
    expected_rows, expected_scores = plain.knn(queries, 20)
    assert np.array_equal(rows, expected_rows) and np.array_equal(scores, expected_scores)


def test_only_the_memory_mapped_since_counts() -> None:
    before = anonymous_regions()
    memory = mmap.mmap(-1, 4 * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    start = ctypes.addressof(ctypes.c_char.from_buffer(memory))
    fresh = mapped_since(before)
    assert any(low <= start and start + 4 * HUGE_PAGE <= high for low, high in fresh)
    for low, high in fresh:  # nothing that was mapped before
        assert not any(a < high and low < b for a, b in before)
