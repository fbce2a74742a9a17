"""The feedback readout: what each user's own feedback on the items of their history says that
the towers' vector does not, read into that vector.

The towers score an item ``<u, v>``. A user's history holds their feedback on items whose
vectors ``v_j`` the bundle has, graded dislike 0 … like 4. Per user, a ridge regression of what
the towers leave unexplained, ``g_j - slope <u, v_j>``, on ``[1, v_j]`` finds the direction
``c`` in which this user's feedback departs from their vector (the intercept takes their mean
grade, which orders nothing). The served vector is ``u + c / slope``: the score stays one dot
product in the same space, for ``/score``, the ranking score of ``/candidates`` and every
vector the runtime encoder makes (applied there to the live history).

``slope`` is the grade per unit of the towers' score, pooled within users; the ridge ``λ`` sets
how much a history must show before the vector moves. Both are fitted after fine-tuning on
impressions held out of it (:func:`model.calibration.calibrate_readout`); λ is the value of
:data:`RIDGES` that ranks those impressions best, or the readout stays off (λ = inf) when none
beats the towers alone. This module is numpy alone: the service applies it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.data.events import Events
from model.impressions import feedback_grades, grades_of

RIDGES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
CHUNK = 1024  # users per batched solve


@dataclass(frozen=True)
class Readout:
    """``slope`` (grade per unit of ``<u, v>``) and ``ridge`` (λ; inf: off)."""

    slope: float = 0.0
    ridge: float = math.inf

    @property
    def on(self) -> bool:
        return self.slope > 0 and math.isfinite(self.ridge)

    @classmethod
    def of(cls, model: Any) -> Readout:
        """The readout a fine-tuned ``model.argus.Argus`` carries (off without towers)."""
        buffer = getattr(model, "readout", None)
        if buffer is None:
            return cls()
        slope, ridge = (float(x) for x in buffer.detach().cpu())
        return cls(slope, ridge)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any]) -> Readout:
        """The readout a bundle's manifest names (off when it names none); a ValueError names
        a value out of range."""
        found = manifest.get("readout") or {}
        slope, ridge = found.get("slope", 0.0), found.get("ridge")
        if not isinstance(slope, int | float) or not math.isfinite(slope) or slope < 0:
            raise ValueError(f"readout slope must be a finite number >= 0, got {slope!r}")
        if ridge is not None and (
            not isinstance(ridge, int | float) or not math.isfinite(ridge) or ridge <= 0
        ):
            raise ValueError(f"readout ridge must be a finite number > 0 or null, got {ridge!r}")
        return cls(float(slope), math.inf if ridge is None else float(ridge))

    def manifest(self) -> dict[str, float | None]:
        """For a manifest: JSON has no inf, so an off readout's ridge is null."""
        return {"slope": self.slope, "ridge": self.ridge if self.on else None}

    def apply(self, users: np.ndarray, vectors: np.ndarray, grades: np.ndarray) -> np.ndarray:
        """(U, D) ranking vectors ``users`` moved by their histories: ``vectors`` (U, L, D) the
        history items' ranking vectors, ``grades`` (U, L) their grades (NaN: no event or no
        feedback there). Returns ``users`` itself when the readout is off."""
        if not self.on:
            return users
        out = np.array(users, dtype=np.float32, copy=True)
        for begin in range(0, len(users), CHUNK):
            part = slice(begin, begin + CHUNK)
            shift = corrections(users[part], vectors[part], grades[part], self.slope, self.ridge)
            out[part] += (shift / self.slope).astype(np.float32)
        return out


def corrections(
    users: np.ndarray, vectors: np.ndarray, grades: np.ndarray, slope: float, ridge: float
) -> np.ndarray:
    """(U, D) each user's ridge coefficients ``c`` of ``g - slope <u, v> ~ b + <c, v>`` over
    their graded events (0 for a user with none), in float64."""
    u = np.asarray(users, np.float64)
    v = np.asarray(vectors, np.float64)
    graded = np.isfinite(grades)
    scores = np.matmul(v, u[..., None])[..., 0]  # batched BLAS: a live history is one call
    residual = np.where(graded, np.nan_to_num(grades) - slope * scores, 0.0)
    design = np.concatenate([np.ones((*v.shape[:2], 1)), v], axis=-1) * graded[..., None]
    flipped = design.transpose(0, 2, 1)
    gram = np.matmul(flipped, design)
    k = gram.shape[-1]
    penalty = np.full(k, ridge)
    penalty[0] = 0.0
    gram += np.diag(penalty)
    gram[:, 0, 0] += ~graded.any(axis=1)  # a user with nothing graded: solvable, c = 0
    coef = np.linalg.solve(gram, np.matmul(flipped, residual[..., None]))[..., 0]
    return coef[:, 1:]


def within_slope(scores: np.ndarray, grades: np.ndarray) -> float:
    """The pooled within-user least-squares slope of ``grades`` on ``scores`` (both (U, L),
    NaN grades left out): each user's means taken out, one slope for all."""
    graded = np.isfinite(grades)
    count = np.maximum(graded.sum(1, keepdims=True), 1)
    s = np.where(graded, scores, 0.0)
    g = np.where(graded, grades, 0.0)
    s_c = np.where(graded, s - s.sum(1, keepdims=True) / count, 0.0)
    g_c = np.where(graded, g - g.sum(1, keepdims=True) / count, 0.0)
    spread = float((s_c * s_c).sum())
    return float((s_c * g_c).sum()) / spread if spread > 0 else 0.0


def padded_history(
    events: Events,
    starts: np.ndarray,
    ends: np.ndarray,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, grades)`` (U, L, D) and (U, L) of the event rows ``[start, end)`` of each
    history, right-padded to the longest; events without feedback, or of items not in
    ``item_ids`` (sorted), get NaN grades."""
    length = int((ends - starts).max()) if len(starts) else 0
    rows = starts[:, None] + np.arange(length)
    real = rows < ends[:, None]
    rows = np.where(real, rows, 0)
    ids = events.item_id[rows]
    at = np.clip(np.searchsorted(item_ids, ids), 0, max(len(item_ids) - 1, 0))
    known = real & (item_ids[at] == ids)
    grade = feedback_grades(events)[rows].astype(np.float64)
    grades = np.where(known & (grade >= 0), grade, np.nan)
    vectors = np.where(known[..., None], item_vectors[at], 0.0).astype(np.float32)
    return vectors, grades


def read_into(
    readout: Readout,
    users: np.ndarray,
    events: Events,
    starts: np.ndarray,
    ends: np.ndarray,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
) -> np.ndarray:
    """:meth:`Readout.apply` to ``users`` (U, D) with the histories ``[start, end)`` of
    ``events``, a chunk of users at a time (``users`` itself when the readout is off)."""
    if not readout.on:
        return users
    out = np.empty_like(users)
    for begin in range(0, len(users), CHUNK):
        part = slice(begin, begin + CHUNK)
        vectors, grades = padded_history(events, starts[part], ends[part], item_ids, item_vectors)
        out[part] = readout.apply(users[part], vectors, grades)
    return out


def history_grades(history: np.ndarray) -> np.ndarray:
    """(L,) float grades of a live history (``model.contract.HISTORY_EVENT``); NaN where an
    event has no feedback."""
    grade = grades_of(history["played_ratio"], history["liked"], history["disliked"])
    return np.where(grade >= 0, grade, np.nan)
