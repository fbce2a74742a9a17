"""The metrics every stage reports, one of each: ranks and ranking metrics of next-item
prediction, PairAccuracy of impression pairs, recall of a future window."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch


def pair_accuracy(scores: Any, hi: Any, lo: Any, weight: Any) -> Any:
    """Weighted share of pairs ``(hi, lo)`` whose ``hi`` scores higher (ties count half); NaN
    with no pairs. numpy arrays give a float; torch tensors a 0-d tensor (no device sync)."""
    if len(hi) == 0:
        return float("nan")
    s_hi, s_lo = scores[hi], scores[lo]
    correct = (s_hi > s_lo) * 1.0 + (s_hi == s_lo) * 0.5
    value = (weight * correct).sum() / weight.sum()
    return value if isinstance(value, torch.Tensor) else float(value)


def ranks(
    scores: torch.Tensor, target: torch.Tensor, excluded: torch.Tensor | None = None
) -> torch.Tensor:
    """(n,) 0-based rank of each target column among (n, C) scores; ties count half."""
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    target_score = scores.gather(1, target[:, None])  # (n, 1)
    above = (scores > target_score).sum(1)
    ties = (scores == target_score).sum(1) - 1
    return above + ties // 2


def ranking_metrics(rank: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """Recall@K and NDCG@K of single-target ranks (a miss scores 0)."""
    out: dict[str, float] = {}
    for k in ks:
        hit = rank < k
        out[f"recall@{k}"] = float(hit.mean()) if len(rank) else math.nan
        gain = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
        out[f"ndcg@{k}"] = float(gain.mean()) if len(rank) else math.nan
    return out


def recall_shares(
    ranked: Iterable[np.ndarray] | np.ndarray, targets: Sequence[np.ndarray], k: int
) -> np.ndarray:
    """Each user's |top-k ∩ targets| / |targets| (NaN: no target)."""
    return np.array(
        [
            np.isin(t, r[:k]).mean() if len(t) else np.nan
            for r, t in zip(ranked, targets, strict=True)
        ],
        dtype=np.float64,
    )


def recall(
    ranked: Iterable[np.ndarray] | np.ndarray, targets: Sequence[np.ndarray], k: int
) -> float:
    """Mean over users with a target of |top-k ∩ targets| / |targets|."""
    shares = recall_shares(ranked, targets, k)
    shares = shares[~np.isnan(shares)]
    return float(shares.mean()) if len(shares) else float("nan")
