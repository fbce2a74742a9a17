"""Huge pages for the HNSW graph.

A search at a million items visits thousands of graph nodes scattered over a gigabyte, and with
4 KiB pages nearly every visit also misses the TLB. numpy asks the kernel for 2 MiB pages for its
own large arrays (``MADV_HUGEPAGE``), but hnswlib's graph is plain C++ ``malloc`` memory, which
gets them only where transparent huge pages are ``always`` on (most distributions ship
``madvise``). So once the graph is read in, :func:`back_with_huge_pages` marks the anonymous
memory mapped while it loaded (:func:`mapped_since`) ``MADV_HUGEPAGE`` and collapses it into huge
pages at once (``MADV_COLLAPSE``, Linux 6.1+). The search's answers do not change; only its
speed does.

Where the kernel cannot (another OS, transparent huge pages ``never``, no free huge pages), the
calls fail and the memory stays as it was: nothing else depends on it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

HUGE_PAGE = 2 << 20  # bytes: x86-64's and arm64's (4 KiB base pages) transparent huge page
MADV_HUGEPAGE = 14
MADV_COLLAPSE = 25
MIN_REGION = 8 * HUGE_PAGE  # smaller mappings are not the graph


def anonymous_regions() -> set[tuple[int, int]]:
    """``(start, end)`` of this process's writable anonymous mappings (empty where
    ``/proc/self/maps`` is not there)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return set()
    regions = set()
    for line in lines:
        fields = line.split()
        if len(fields) == 5 and fields[1].startswith("rw"):  # no path: anonymous
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.add((start, end))
    return regions


@functools.cache
def _madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def mapped_since(before: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The address ranges of this process's anonymous mappings that ``before`` (an earlier
    :func:`anonymous_regions`) did not cover: the memory mapped since, without what was there
    already (the kernel merges a new mapping into a neighbouring one)."""
    old = sorted(before)
    fresh = set()
    for start, end in anonymous_regions():
        at = start
        for low, high in old:
            if high <= at or low >= end:
                continue
            if low > at:
                fresh.add((at, low))
            at = max(at, high)
        if at < end:
            fresh.add((at, end))
    return fresh


def back_with_huge_pages(regions: set[tuple[int, int]]) -> int:
    """Ask for 2 MiB pages under each region of at least :data:`MIN_REGION` bytes, now. Returns
    the bytes collapsed into huge pages (0 where the kernel cannot)."""
    madvise = _madvise()
    if madvise is None:
        return 0
    collapsed = 0
    for start, end in sorted(regions):
        low = -(-start // HUGE_PAGE) * HUGE_PAGE  # the huge pages wholly inside the region
        high = end // HUGE_PAGE * HUGE_PAGE
        if high - low < MIN_REGION or madvise(low, high - low, MADV_HUGEPAGE) != 0:
            continue
        if madvise(low, high - low, MADV_COLLAPSE) == 0:
            collapsed += high - low
    return collapsed
