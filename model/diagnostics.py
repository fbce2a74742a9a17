"""What the backbone carries, measured from the outside on a simulated world.

Each figure asks one question of a trained model against the simulator's truth
(:class:`model.data.simulate.Truth`), on the held-out impression pairs of ``argus evaluate``
(daily-snapshot states, pairs within a user-day, weighted by grade distance):

* **token shares** — of the token before its norm, the variance each part brings (context, item,
  feedback): a part with a tiny share is drowned, whatever it carries; and each input's **total
  effect**, the share of that variance which goes when the event's item, or its feedback, alone
  is redrawn (through every part it reaches);
* **linear probes** (ridge regression, 2-fold over users or items, R² over every output
  dimension): the state after a user's last event before the window → their true taste (the genre
  mixture's point) and, apart, their personal offset; the backbone's item embedding → the item's
  true latent. Beside the taste probe, its reference: the same probe of the mean *true* latent
  of the items the state reads (the user's last ``max_len`` events), what those items show of
  the taste to a linear reader that knew each of them exactly;
* **PairAccuracy** of every score the model can give a held-out pair: the FP head's (target-aware)
  with the user's own state and with another user's, the fine-tuned towers' whole score, their
  personal part read from the state alone and the pooled-history shortcut's part alone, and
  the towers with the feedback readout (:mod:`model.readout`, what ``/score`` serves when
  fine-tuning turned it on) and the readout's personal part on its own (read into the mean
  user's vector, without the state); beside MostPop and the oracle.

:func:`diagnose` computes them all; ``benchmarks/backbone.py`` trains the models and prints them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from model.argus import FP_SCORE_SIGNS, Argus
from model.data.batching import Spans, TemporalSplit, iter_batches, sample_users
from model.data.events import Events
from model.data.simulate import Truth
from model.future import history_latents
from model.impressions import (
    SESSION_GAP,
    Impressions,
    find_impressions,
    group_pairs,
    pair_weight_table,
    session_ids,
)
from model.inference import ItemPopularity, readout_inputs, states_at
from model.metrics import pair_accuracy
from model.readout import Readout

RIDGES = (0.1, 1.0, 10.0, 100.0, 1000.0)  # penalties tried by :func:`ridge_r2`


def last_rows_before(events: Events, users: np.ndarray, before: int) -> np.ndarray:
    """(U,) each user's last row before ``before`` (-1 where there is none); ``users``
    ascending."""
    keep = events.timestamp < before
    rows = np.flatnonzero(keep)
    ids = events.user_id[rows]
    end = np.searchsorted(ids, users, side="right")
    start = np.searchsorted(ids, users, side="left")
    return np.where(end > start, rows[np.maximum(end - 1, 0)], -1)


def held_out_fits(x: np.ndarray, y: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """For each of :data:`RIDGES`, the held-out predictions (N, k) of a ridge regression of ``y``
    (N, k) on ``x`` (N, d), 2-fold: fit on one half, predict the other, both ways (penalties on
    standardised inputs, scaled by the sample size)."""
    x = np.asarray(x, np.float64)
    order = np.random.default_rng(seed).permutation(len(x))
    folds = (order[: len(x) // 2], order[len(x) // 2 :])
    for ridge in RIDGES:
        predicted = np.zeros_like(y)
        for train, test in (folds, folds[::-1]):
            mean, std = x[train].mean(0), x[train].std(0) + 1e-9
            a = (x[train] - mean) / std
            gram = a.T @ a + ridge * len(train) / 100 * np.eye(a.shape[1])
            y_mean = y[train].mean(0)
            coef = np.linalg.solve(gram, a.T @ (y[train] - y_mean))
            predicted[test] = (x[test] - mean) / std @ coef + y_mean
        yield predicted


def ridge_r2(x: np.ndarray, y: np.ndarray, *, seed: int = 0) -> float:
    """Held-out R² (over all of ``y``'s columns) of a ridge regression of ``y`` (N, k) on ``x``
    (N, d): the best of :func:`held_out_fits` (each half scored against its own mean)."""
    y = np.asarray(y, np.float64)
    if y.ndim == 1:
        y = y[:, None]
    order = np.random.default_rng(seed).permutation(len(y))
    folds = (order[: len(y) // 2], order[len(y) // 2 :])
    total = sum(float(((y[f] - y[f].mean(0)) ** 2).sum()) for f in folds)
    return max(
        1.0 - float(((predicted - y) ** 2).sum()) / total for predicted in held_out_fits(x, y, seed)
    )


def ridge_accuracy(x: np.ndarray, labels: np.ndarray, *, seed: int = 0) -> float:
    """Held-out accuracy of a ridge regression of ``labels``' one-hot codes on ``x``, read by
    its largest output (2-fold, the best of :data:`RIDGES`)."""
    classes, codes = np.unique(labels, return_inverse=True)
    y = np.eye(len(classes))[codes]
    return max(float((p.argmax(1) == codes).mean()) for p in held_out_fits(x, y, seed))


def token_batches(
    model: Argus, events: Events, rows: int, seed: int
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Batches of whole-history chunks (each of a random user's last chunk) holding about
    ``rows`` events, with each batch's (B, L) mask of real events."""
    _, offsets = events.user_offsets()
    users = np.random.default_rng(seed).permutation(len(offsets) - 1)
    end = offsets[1:][users]
    start = np.maximum(offsets[:-1][users], end - model.cfg.max_len)  # each user's last chunk
    enough = int(np.searchsorted(np.cumsum(end - start), rows)) + 1
    spans = Spans(start[:enough], end[:enough], start[:enough].copy())
    device = next(model.parameters()).device
    for batch in iter_batches(events, spans, batch_size=32):
        yield batch.to_torch(device), torch.from_numpy(batch.padding_mask).to(device)


@torch.no_grad()
def token_shares(
    model: Argus, events: Events, *, rows: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """Each token part's share of the variance of the token before its norm (summed over
    dimensions), over ``rows`` events drawn at random from whole-history chunks."""
    sums: dict[str, list[torch.Tensor]] = {}
    for tensors, real in token_batches(model, events, rows, seed):
        for name, part in model.token_parts(tensors).items():
            sums.setdefault(name, []).append(part[real].float().cpu())
    variance = {name: float(torch.cat(parts).var(0).sum()) for name, parts in sums.items()}
    whole = sum(variance.values())
    return {name: v / whole for name, v in variance.items()}


# The inputs each total effect redraws, together: the event's item, or its feedback.
EFFECT_INPUTS = {
    "item": ("item_id", "artist_id"),
    "feedback": ("liked", "disliked", "played_ratio"),
}


@torch.no_grad()
def token_effects(
    model: Argus, events: Events, *, rows: int = 20_000, seed: int = 0
) -> dict[str, float]:
    """Each input's total effect on the token before its norm: the share of the token's
    variance that goes when the input alone is redrawn, ``E|t(x) - t(x')|^2 / (2 Var t)`` with
    ``x'`` the input of another event of the batch (the rest of the event kept). Unlike
    :func:`token_shares` it counts every part the input reaches: the feedback's own part and
    the item as the feedback signs it. Shares of one token can sum past 1 where inputs
    interact."""
    generator = torch.Generator().manual_seed(seed)
    tokens: list[torch.Tensor] = []
    moved: dict[str, list[torch.Tensor]] = {name: [] for name in EFFECT_INPUTS}
    for tensors, real in token_batches(model, events, rows, seed):
        token = torch.stack(list(model.token_parts(tensors).values())).sum(0)
        tokens.append(token[real].float().cpu())
        order = torch.randperm(int(real.sum()), generator=generator).to(real.device)
        for name, keys in EFFECT_INPUTS.items():
            redrawn = dict(tensors)
            for key in keys:
                redrawn[key] = tensors[key].clone()
                redrawn[key][real] = tensors[key][real][order]
            other = torch.stack(list(model.token_parts(redrawn).values())).sum(0)
            moved[name].append(((token - other)[real].float() ** 2).sum(-1).cpu())
    variance = float(torch.cat(tokens).var(0).sum())
    return {name: float(torch.cat(d).mean()) / (2 * variance) for name, d in moved.items()}


@dataclass(frozen=True)
class HeldOutPairs:
    """The test window's impressions of a sample of users and their pairs (``argus evaluate``'s
    protocol)."""

    events: Events  # the sampled users' events up to the end of the window
    impressions: Impressions
    hi: np.ndarray
    lo: np.ndarray
    weight: np.ndarray

    @classmethod
    def of(
        cls, events: Events, split: TemporalSplit, *, users: int = 1_000, seed: int = 0
    ) -> HeldOutPairs:
        sample = split.until_end(events)
        if users:
            sample = sample_users(sample, split, users, seed)
        found = find_impressions(sample, lag=86_400)
        test = found.take(np.flatnonzero(split.in_test(sample.timestamp[found.row])))
        hi, lo, w = group_pairs(test.group, test.grade, pair_weight_table())
        return cls(sample, test, hi, lo, w)

    def accuracy(self, scores: np.ndarray | torch.Tensor) -> float:
        values = scores.numpy() if isinstance(scores, torch.Tensor) else scores
        return pair_accuracy(np.asarray(values, np.float64), self.hi, self.lo, self.weight)

    @property
    def item_id(self) -> np.ndarray:
        return self.events.item_id[self.impressions.row]


@torch.no_grad()
def fp_scores(
    model: Argus, pairs: HeldOutPairs, h: torch.Tensor, state_rows: np.ndarray
) -> torch.Tensor:
    """(M,) the FP head's score of each impression from the states ``h`` (M, D), its context
    embedded with its real gap to the state's event (``state_rows``): the like, full-listen
    (played_ratio) logits minus the skip and dislike ones."""
    ev, rows = pairs.events, pairs.impressions.row

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values))

    context = model.context(
        column(ev.source[rows].astype(np.int64))[:, None],
        column(ev.timestamp[rows])[:, None],
        before=column(ev.timestamp[state_rows]),
    )[:, 0]
    item = model.item_embedding(column(ev.item_id[rows]), column(ev.artist_id[rows]))
    signs = torch.tensor(FP_SCORE_SIGNS)
    return (model.fp_logits(h, context, item) * signs).sum(-1)


@torch.no_grad()
def tower_parts(
    model: Argus,
    pairs: HeldOutPairs,
    h: torch.Tensor,
    taste: torch.Tensor | None,
    popularity: ItemPopularity,
) -> dict[str, torch.Tensor]:
    """(M,) scores of the fine-tuned towers: ``towers`` (the served ``<u, v>``),
    ``towers_state_only`` (the personal part read from the state alone, ``<P_u h - mean, v>``:
    no taste, and the mean user's vector, an item prior, taken out) and ``shortcut_only`` (the
    pooled-history taste's personal part alone)."""
    ev, rows = pairs.events, pairs.impressions.row
    item = torch.from_numpy(ev.item_id[rows])
    artist = torch.from_numpy(ev.artist_id[rows])
    v = popularity.item_vectors(model, item, artist)
    u = model.user_vector(h, taste)
    parts = {"towers": (u * v).sum(-1)}
    zero_h = torch.zeros_like(h)
    # The user vector is linear in h and in the taste (no bias), so each part is its own call
    # with the other set to zero; the item prior's coordinate (1 in every u) is left out.
    # A part is personal when it differs between users: the mean user's vector (the same for
    # everyone, an item prior) is taken out of each.
    state = model.user_vector(h, torch.zeros_like(taste) if taste is not None else None)
    parts["towers_state_only"] = ((state - state.mean(0)) * v).sum(-1)
    if taste is not None:
        shortcut = model.user_vector(zero_h, taste)
        parts["shortcut_only"] = ((shortcut - shortcut.mean(0)) * v).sum(-1)
    return parts


@torch.no_grad()
def diagnose(
    model: Argus,
    events: Events,
    truth: Truth | None,
    split: TemporalSplit,
    *,
    users: int = 1_000,
    seed: int = 0,
    min_item_events: int = 20,
) -> dict[str, float]:
    """Every figure of the module docstring for ``model`` (pretrained, or fine-tuned with
    towers) on ``events``' held-out window; keys as ``benchmarks.backbone`` writes them. Without
    a ``truth`` (real data) the probes and the oracle are left out."""
    model.eval()
    out: dict[str, float] = {}
    train = split.train(events)
    out.update({f"token_share_{k}": v for k, v in token_shares(model, train, seed=seed).items()})
    out.update({f"token_effect_{k}": v for k, v in token_effects(model, train, seed=seed).items()})
    if truth is not None:
        out.update(probes(model, train, truth, split, min_item_events, seed))
        if truth.has_moods:
            out.update(mood_probes(model, train, truth, seed=seed))
    out.update(pair_accuracies(model, events, truth, split, train, users, seed))
    return out


def probes(
    model: Argus,
    train: Events,
    truth: Truth,
    split: TemporalSplit,
    min_item_events: int,
    seed: int,
) -> dict[str, float]:
    """Ridge probes: the state at the cut-off → the user's true taste and personal offset, the
    item embedding → the item's true latent."""
    out: dict[str, float] = {}
    # Probes of the state at the cut-off, over every user with a history before it.
    all_users = np.unique(train.user_id)
    last = last_rows_before(train, all_users, split.split_time)
    states = states_at(model, train, last)
    h_cut = states.at(last)[0].numpy()
    at_cut = np.full(len(all_users), split.split_time - 1)
    taste = truth.user_latent(all_users, at_cut, offset=False)
    offset = truth.user_latent(all_users, at_cut) - taste
    out["probe_taste_r2"] = ridge_r2(h_cut, taste, seed=seed)
    seen = history_latents(truth, train, all_users, split.split_time, model.cfg.max_len)
    out["probe_taste_history_r2"] = ridge_r2(seen, taste, seed=seed)
    out["probe_offset_r2"] = ridge_r2(h_cut, offset, seed=seed)

    # Probe of the item embedding over items with enough training events.
    ids, counts = np.unique(train.item_id, return_counts=True)
    for floor, key in (
        (min_item_events, "probe_item_r2"),
        (10 * min_item_events, "probe_item_r2_frequent"),
    ):
        chosen = ids[counts >= floor]
        if len(chosen) >= 20:
            emb = model.item_embedding(torch.from_numpy(chosen)).float().numpy()
            out[key] = ridge_r2(emb, truth.item_latent(truth.item_rows(chosen)), seed=seed)
    return out


@torch.no_grad()
def mood_probes(
    model: Argus,
    train: Events,
    truth: Truth,
    *,
    revealed: int = 3,
    sessions: int = 4_000,
    seed: int = 0,
) -> dict[str, float]:
    """In a world with moods: how well does each view tell a session's mood genre once its first
    ``revealed`` events are known? Ridge probes (one-hot, 2-fold) over a sample of sessions
    with more events than that: the state after them (what the realtime path reads), the state
    before the session (the stored vector's view), and the mean of those events' item
    embeddings and of their true latents (the information there is to read)."""
    session = session_ids(train, SESSION_GAP)
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    ends = np.r_[starts[1:], len(session)]
    _, offsets = train.user_offsets()
    user_start = offsets[np.searchsorted(offsets, starts, side="right") - 1]
    keep = (ends - starts > revealed) & (starts > user_start)  # a history before it, and a rest
    mood = truth.moods(train.user_id[starts], train.timestamp[starts])
    chosen = np.flatnonzero(keep & (mood >= 0))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(chosen, min(sessions, len(chosen)), replace=False))
    first, labels = starts[chosen], mood[chosen]
    after, before = first + revealed - 1, first - 1
    states = states_at(model, train, np.concatenate([after, before]))
    shown = first[:, None] + np.arange(revealed)  # (S, revealed) rows
    items = train.item_id[shown]
    embedded = model.item_embedding(torch.from_numpy(items.reshape(-1))).float().numpy()
    latent = truth.item_latent(truth.item_rows(items.reshape(-1)))
    views = {
        "state_after": states.at(after)[0].numpy(),
        "state_before": states.at(before)[0].numpy(),
        "items_embedded": embedded.reshape(len(first), revealed, -1).mean(1),
        "items_true": latent.reshape(len(first), revealed, -1).mean(1),
    }
    out = {f"probe_mood_{k}": ridge_accuracy(x, labels, seed=seed) for k, x in views.items()}
    out["probe_mood_chance"] = float(np.bincount(labels).max() / len(labels))
    out["probe_mood_sessions"] = float(len(labels))
    return out


def pair_accuracies(
    model: Argus,
    events: Events,
    truth: Truth | None,
    split: TemporalSplit,
    train: Events,
    users: int,
    seed: int,
) -> dict[str, float]:
    """PairAccuracy of every score on the held-out pairs (the oracle's only with a ``truth``)."""
    out: dict[str, float] = {}
    pairs = HeldOutPairs.of(events, split, users=users, seed=seed)
    out["pairs"] = float(len(pairs.hi))
    state_rows = pairs.impressions.state
    held = states_at(model, pairs.events, state_rows)
    h, taste_at = held.at(state_rows)
    if model.argus:
        out["fp_pair_accuracy"] = pairs.accuracy(fp_scores(model, pairs, h, state_rows))
        # another user's state: each impression's state from the next sampled user's snapshot
        user = pairs.events.user_id[state_rows]
        ids_u, first = np.unique(user, return_index=True)
        other = np.roll(np.arange(len(ids_u)), 1)[np.searchsorted(ids_u, user)]
        # that user's state on their own latest snapshot before the impression's day
        swapped_rows = state_rows[first[other]]
        h_other, _ = held.at(swapped_rows)
        out["fp_pair_accuracy_other_user"] = pairs.accuracy(
            fp_scores(model, pairs, h_other, state_rows)
        )
    if model.has_towers:
        popularity = ItemPopularity.of(train)
        parts = tower_parts(model, pairs, h, taste_at, popularity)
        for name, scores in parts.items():
            out[f"{name}_pair_accuracy"] = pairs.accuracy(scores)
        readout = Readout.of(model)
        if readout.on:  # what /score serves: the towers with each user's feedback read in
            inputs = readout_inputs(model, pairs.events, pairs.impressions, train)
            out["towers_readout_pair_accuracy"] = pairs.accuracy(inputs.scores(readout))
            # the personal part the readout finds on its own: read into the mean user's vector
            # (no state), that vector's own score (an item prior) taken out
            mean = np.broadcast_to(inputs.u.mean(0), inputs.u.shape)
            alone = dataclasses.replace(inputs, u=mean)
            prior = alone.scores(Readout())
            out["readout_only_pair_accuracy"] = pairs.accuracy(alone.scores(readout) - prior)
    ids_p, counts_p = train.positive_counts()
    where = np.clip(np.searchsorted(ids_p, pairs.item_id), 0, max(len(ids_p) - 1, 0))
    found = ids_p[where] == pairs.item_id if len(ids_p) else np.zeros(len(pairs.item_id), bool)
    out["mostpop_pair_accuracy"] = pairs.accuracy(np.where(found, counts_p[where], 0).astype(float))
    rows = pairs.impressions.row
    if truth is not None:
        user, time = pairs.events.user_id[rows], pairs.events.timestamp[rows]
        out["oracle_pair_accuracy"] = pairs.accuracy(truth.affinity(user, pairs.item_id, time))
    return out
