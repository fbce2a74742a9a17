"""The trained model, run: user and item vectors of both spaces, the tower scores of impressions,
and the encoder modules the export turns into ONNX graphs. What export, evaluation, diagnostics and
the distributed export share; it trains nothing and writes nothing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.argus import Argus, prior_columns
from model.contract import (
    ENCODER_INPUTS,
)
from model.data.batching import Spans, bucket_batches, covering_spans, iter_batches, make_batch
from model.data.events import Catalog, Events
from model.impressions import Impressions
from model.progress import bar as tqdm
from model.readout import Readout, padded_history, within_slope


def retrieval_dim(model: Argus) -> int:
    """Width of the retrieval vectors: the NIP head's (``retrieval_query="nip"``), the
    space's own (and its trend and popularity columns), or the towers' when the model has
    none."""
    if nip_retrieval(model):
        return model.cfg.embedding_dim
    if not model.cfg.retrieval_dim:
        return model.cfg.ranking_dim
    return model.cfg.retrieval_dim + prior_columns(model.cfg)


def nip_retrieval(model: Argus) -> bool:
    """Whether ``/candidates`` is answered by the NIP head's query against the output
    embeddings rather than by the retrieval space."""
    return model.cfg.retrieval_query == "nip"


def user_vector_dim(model: Argus) -> int:
    """Floats per user vector: the ranking part, then the retrieval part."""
    return model.cfg.ranking_dim + retrieval_dim(model)


def _batch(inputs: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
    """Encoder inputs (in :data:`ENCODER_INPUTS` order) as a model batch."""
    return dict(zip(ENCODER_INPUTS, inputs, strict=True))


class UserEncoder(nn.Module):
    """The user towers over padded histories, at each row's last real event: the ranking vector
    ``u`` and the retrieval query side by side (``[B, tower_dim + retrieval_dim]``).

    ``runtime``: the lag-0 user head (the service's encoder) when the model has one, else the
    offline one. ``cache``: also return the state after each row (:data:`CACHE_OUTPUTS`), which
    :class:`StepEncoder` continues from. ``as_of`` (seconds): when every row's retrieval query
    is asked (the stored vectors: the export's cut-off), the next event's time of a NIP query
    and the end of the time away of a ``retrieval_gap`` one; without it, ``nip_gap`` after each
    row's last event and no time away (the runtime graphs).
    """

    def __init__(
        self,
        model: Argus,
        *,
        runtime: bool = False,
        cache: bool = False,
        as_of: int | None = None,
    ) -> None:
        super().__init__()
        if not model.has_towers:
            raise ValueError("the checkpoint has no towers; export a model from `argus finetune`")
        self.model, self.runtime, self.cache, self.as_of = model, runtime, cache, as_of

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        batch = _batch(inputs)
        if not self.cache:  # causal: right padding never reaches a real state
            at = None if self.as_of is None else torch.full_like(batch["lengths"], self.as_of)
            return at_last(self.model, self.model(batch), batch, self.runtime, at=at)[0]
        h, keys, values = self.model.encode_cached(batch)
        vector, total, count = at_last(self.model, h, batch, self.runtime)
        return vector, keys, values, total, count

    def encode(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Vectors of a :meth:`model.data.batching.Batch.to_torch` batch."""
        vector = self(*(batch[name] for name in ENCODER_INPUTS))
        return vector if isinstance(vector, torch.Tensor) else vector[0]


class StepEncoder(nn.Module):
    """The runtime encoder continued from a cached state (:data:`STEP_INPUTS`): S new events
    cost S tokens per layer; the outputs are :class:`UserEncoder`'s with ``cache=True``."""

    def __init__(self, model: Argus) -> None:
        super().__init__()
        if not model.has_towers:
            raise ValueError("the checkpoint has no towers; export a model from `argus finetune`")
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(ENCODER_INPUTS)
        batch = _batch(inputs[:n])
        past_keys, past_values, before, past_sum, past_count = inputs[n:]
        h, keys, values = self.model.encode_cached(batch, past_keys, past_values, before)
        vector, total, count = at_last(self.model, h, batch, True, past_sum, past_count)
        return vector, keys, values, total, count


def at_last(
    model: Argus,
    h: torch.Tensor,
    batch: dict[str, torch.Tensor],
    runtime: bool,
    past_sum: torch.Tensor | None = None,
    past_count: torch.Tensor | None = None,
    at: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """At each row's last real event of states ``h`` (B, L, D): the user vector (the ranking
    vector, then the retrieval query), the sum of the retrieval embeddings of the positive
    events so far (after a cached ``past_sum``/``past_count``) and their number. A model
    without a retrieval space carries zeros (B, 1) and (B,) as its taste, and its towers answer
    retrieval too; with ``retrieval_query="nip"`` the NIP head's query for a next event at
    ``at`` (B,) seconds (default: ``nip_gap`` after the last) does. With ``retrieval_gap`` the
    query is asked at ``at`` (default: at the last event, as the runtime encoder asks it)."""
    last = (torch.arange(h.shape[0], device=h.device), batch["lengths"] - 1)
    if model.has_retrieval:
        total, count = model.taste_sums(batch, past_sum, past_count)
        total, count = total[last], count[last]
        taste: torch.Tensor | None = total / count.clamp(min=1.0)[..., None]
    else:
        count = torch.zeros_like(batch["lengths"], dtype=torch.float32)
        total, taste = count[:, None], None
    ranking = model.user_vector(h[last], taste, runtime=runtime)
    if nip_retrieval(model):
        query = model.next_query(h[last], batch["source"][last], batch["timestamp"][last], at)
    else:
        gap = None if at is None else at - batch["timestamp"][last]
        query = ranking if taste is None else model.retrieval_query(taste, h[last], gap)
    return torch.cat([ranking, query], dim=-1), total, count


def last_spans(events: Events, max_len: int) -> Spans:
    """One span per user: their last ``max_len`` events (all of them when fewer)."""
    _, offsets = events.user_offsets()
    end = offsets[1:]
    start = np.maximum(end - max_len, offsets[:-1])
    return Spans(start, end, start.copy())


@torch.no_grad()
def encode_spans(
    model: Argus,
    events: Events,
    spans: Spans,
    *,
    batch_size: int = 64,
    max_tokens: int = 1 << 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
    as_of: int | None = None,
) -> np.ndarray:
    """(S, tower_dim + retrieval_dim) user vectors of ``spans`` (one history each), in order;
    ``as_of``: the time of the next event a NIP query asks about (:class:`UserEncoder`)."""
    vectors = np.empty((len(spans), user_vector_dim(model)), dtype=np.float32)
    encoder = UserEncoder(model, as_of=as_of)
    bar = tqdm(total=len(spans), desc="user vectors", unit="user", disable=not progress)
    for index in bucket_batches(spans, batch_size=batch_size, max_tokens=max_tokens):
        batch = make_batch(events, spans.take(index)).to_torch(device)
        vectors[index] = encoder.encode(batch).float().cpu().numpy()
        bar.update(len(index))
    bar.close()
    return vectors


def user_vectors(
    model: Argus,
    events: Events,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    as_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_ids, vectors)``: each user's vector from their last ``max_len`` events (a NIP
    query for a next event at ``as_of``, see :class:`UserEncoder`)."""
    spans = last_spans(events, model.cfg.max_len)
    vectors = encode_spans(
        model, events, spans, batch_size=batch_size, device=device, progress=progress, as_of=as_of
    )
    return events.user_id[spans.start], vectors


@torch.no_grad()
def item_vectors(
    model: Argus,
    events: Events,
    *,
    catalog: Catalog | None = None,
    batch_size: int = 8192,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(item_ids, ranking, retrieval)``: every item in ``events`` (sorted ids, each with its
    artist: ``catalog``, built from ``events`` unless given) and its vectors in both spaces.
    With ``retrieval_trend``, the retrieval vectors end with log1p of :func:`trend_counts`
    (after log1p of all the item's positives, with ``retrieval_popularity``);
    with ``retrieval_query="nip"`` they are the NIP head's output embeddings ``e_item``."""
    catalog = Catalog.from_events(events) if catalog is None else catalog
    ids, artists = catalog.ids, catalog.artist_id
    popularity = ItemPopularity.of(events, device)
    ranking = np.empty((len(ids), model.cfg.ranking_dim), dtype=np.float32)
    retrieval = np.empty((len(ids), retrieval_dim(model)), dtype=np.float32)
    for begin in range(0, len(ids), batch_size):
        part = slice(begin, begin + batch_size)
        item = torch.from_numpy(ids[part]).to(device)
        artist = torch.from_numpy(artists[part]).to(device)
        ranking[part] = popularity.item_vectors(model, item, artist).float().cpu().numpy()
        if nip_retrieval(model):
            retrieval[part] = model.output_embedding(item).float().cpu().numpy()
        elif model.has_retrieval:
            width = model.cfg.retrieval_dim  # the trend and popularity columns: below
            retrieval[part, :width] = model.retrieval_items(item).float().cpu().numpy()
        else:
            retrieval[part] = ranking[part]
    if model.cfg.retrieval_trend and not nip_retrieval(model):
        retrieval[:, -1] = np.log1p(trend_counts(events, ids, model.cfg.retrieval_trend))
        if model.cfg.retrieval_popularity:
            retrieval[:, -2] = np.log1p(trend_counts(events, ids, None))
    return ids, ranking, retrieval


def tower_scores(
    model: Argus,
    h: torch.Tensor,
    item_id: torch.Tensor,
    artist_id: torch.Tensor,
    taste: torch.Tensor | None = None,
    log_popularity: torch.Tensor | None = None,
    runtime: torch.Tensor | bool = False,
    cold: torch.Tensor | None = None,
    log_negatives: torch.Tensor | None = None,
    unseen: torch.Tensor | None = None,
) -> torch.Tensor:
    """(M, D) states (and (M, R) tastes) and (M,) impressed items -> (M,) scores ``<u, v>``;
    ``runtime``: the lag-0 user head's, for all or (an (M,) bool mask) some impressions;
    ``cold``, ``log_negatives`` and ``unseen``: (M,) the items scored as cold, log1p of their
    events that were not positive, the items with no event at all (:meth:`Argus.item_vector`)."""
    v = model.item_vector(item_id, artist_id, log_popularity, cold, log_negatives, unseen)
    if isinstance(runtime, torch.Tensor):
        u = torch.where(
            runtime[:, None],
            model.user_vector(h, taste, runtime=True),
            model.user_vector(h, taste),
        )
    else:
        u = model.user_vector(h, taste, runtime=runtime)
    return (u * v).sum(-1)


@dataclass(frozen=True)
class ItemPopularity:
    """log1p(positive events) of each item of a training set: the ranking towers' popularity
    input (0 for an item it never saw); which items it has any event of (the catalog a bundle
    exported from it holds: the rest are cold), and how many of those were not positive."""

    ids: torch.Tensor  # (C,) sorted
    counts: torch.Tensor  # (C,) float32
    catalog: torch.Tensor  # (K,) sorted ids of every item with an event
    seen: torch.Tensor  # (K,) float32 events of each catalog item
    negatives: torch.Tensor  # (K,) float32 of them, those that were not positive

    @classmethod
    def of(cls, events: Events, device: str | torch.device = "cpu") -> ItemPopularity:
        ids, counts = events.positive_counts()
        catalog, seen = np.unique(events.item_id, return_counts=True)
        positives = np.zeros(len(catalog), np.int64)
        positives[np.searchsorted(catalog, ids)] = counts
        return cls(
            torch.from_numpy(ids).to(device),
            torch.from_numpy(counts).float().to(device),
            torch.from_numpy(catalog).to(device),
            torch.from_numpy(seen).float().to(device),
            torch.from_numpy(seen - positives).float().to(device),
        )

    def cold(self, item_id: torch.Tensor, model: Argus | None = None) -> torch.Tensor:
        """(...) bool: the items with no event in the training set (``model``: those it scores
        as cold, :meth:`Argus.is_cold`)."""
        seen = _lookup(self.catalog, self.seen, item_id)
        return model.is_cold(seen) if model is not None else seen == 0

    def unseen(self, item_id: torch.Tensor) -> torch.Tensor:
        """(...) bool: the items with no event at all in the training set."""
        return _lookup(self.catalog, self.seen, item_id) == 0

    def item_vectors(
        self, model: Argus, item_id: torch.Tensor, artist_id: torch.Tensor
    ) -> torch.Tensor:
        """(..., ranking_dim) ``model``'s item vectors of these items with the counts of this
        training set (:meth:`Argus.item_vector`): what a bundle exported from it serves."""
        return model.item_vector(
            item_id,
            artist_id,
            self.log_counts(item_id),
            self.cold(item_id, model),
            self.log_negatives(item_id),
            self.unseen(item_id),
        )

    def log_counts(self, item_id: torch.Tensor) -> torch.Tensor:
        """(...) log1p of the items' positive events (0 for an item never seen)."""
        return torch.log1p(_lookup(self.ids, self.counts, item_id))

    def log_negatives(self, item_id: torch.Tensor) -> torch.Tensor:
        """(...) log1p of the items' events that were not positive (0 for an item never seen)."""
        return torch.log1p(_lookup(self.catalog, self.negatives, item_id))


def _lookup(ids: torch.Tensor, counts: torch.Tensor, item_id: torch.Tensor) -> torch.Tensor:
    """(...) ``counts`` at each of ``item_id`` in the sorted ``ids`` (0 where absent)."""
    if len(ids) == 0:
        return torch.zeros(item_id.shape, device=item_id.device)
    where = torch.searchsorted(ids, item_id).clamp(max=len(ids) - 1)
    found = ids[where] == item_id
    return torch.where(found, counts[where], 0.0)


def trend_counts(events: Events, item_id: np.ndarray, window: int | None) -> np.ndarray:
    """(M,) each item's positive events in the last ``window`` seconds of ``events`` (all of
    them: None), those before its last second + 1: what is trending (popular) as the export
    sees it."""
    end = int(events.timestamp.max()) + 1 if len(events) else 0
    return events.positives_before(item_id, np.full(len(item_id), end, np.int64), window)


@dataclass(frozen=True)
class States:
    """The model's view at a set of event rows (sorted, unique): the hidden state after each
    and, for a model with a retrieval space, the pooled-history taste there."""

    rows: np.ndarray  # (N,) rows of the events table
    h: torch.Tensor  # (N, D)
    taste: torch.Tensor | None  # (N, R)

    def at(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The states of ``rows`` (each one of :attr:`rows`)."""
        index = torch.from_numpy(np.searchsorted(self.rows, rows))
        return self.h[index], (self.taste[index] if self.taste is not None else None)


@torch.no_grad()
def states_at(model: Argus, events: Events, rows: np.ndarray, *, batch_size: int = 64) -> States:
    """:class:`States` after each of ``rows``, each computed with as much of its user's history
    as ``max_len`` allows (one pass per user, more where the rows span further)."""
    needed = np.unique(rows)
    device = next(model.parameters()).device
    h = torch.zeros(len(needed), model.cfg.d_model)
    taste = torch.zeros(len(needed), model.cfg.retrieval_dim) if model.has_retrieval else None
    if len(needed):
        _, offsets = events.user_offsets()
        user = np.searchsorted(offsets, needed, side="right") - 1
        first = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
        a = np.minimum.reduceat(needed, first)
        b = np.maximum.reduceat(needed, first) + 1
        spans = covering_spans(offsets[user[first]], a, b, model.cfg.max_len)
        for batch in iter_batches(events, spans, batch_size=batch_size):
            wanted = batch.target_mask & np.isin(batch.row_index, needed)
            tensors = batch.to_torch(device)
            at = torch.from_numpy(np.searchsorted(needed, batch.row_index[wanted]))
            mask = torch.from_numpy(wanted).to(device)
            h[at] = model(tensors)[mask].float().cpu()
            if taste is not None:
                taste[at] = model.taste(tensors)[mask].float().cpu()
    return States(needed, h, taste)


@torch.no_grad()
def catalog_vectors(
    model: Argus, events: Events, popularity: ItemPopularity, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, ranking vectors)`` of every item in ``events``, with ``popularity``'s
    counts (on the model's device)."""
    device = next(model.parameters()).device
    catalog = Catalog.from_events(events)
    vectors = np.empty((len(catalog.ids), model.cfg.ranking_dim), dtype=np.float32)
    for begin in range(0, len(catalog.ids), batch_size):
        part = slice(begin, begin + batch_size)
        item = torch.from_numpy(catalog.ids[part]).to(device)
        artist = torch.from_numpy(catalog.artist_id[part]).to(device)
        vectors[part] = popularity.item_vectors(model, item, artist).float().cpu().numpy()
    return catalog.ids, vectors


@dataclass(frozen=True)
class ReadoutInputs:
    """What a readout reads for a set of impressions: the towers' vector ``u`` (S, D) at each of
    their states, those states' histories (``vectors`` (S, L, D), ``grades`` (S, L)), and each
    impression's state (``at`` (M,)) and item vector ``v`` (M, D)."""

    u: np.ndarray
    vectors: np.ndarray
    grades: np.ndarray
    at: np.ndarray
    v: np.ndarray

    def scores(self, readout: Readout) -> np.ndarray:
        """(M,) each impression's ``<u', v>``, ``u'`` its state's vector with ``readout``."""
        moved = readout.apply(self.u, self.vectors, self.grades)
        return np.einsum("md,md->m", moved[self.at], self.v)

    def slope(self) -> float:
        """:func:`model.readout.within_slope` of the histories' grades on the towers' score."""
        return within_slope(np.einsum("uld,ud->ul", self.vectors, self.u), self.grades)


@torch.no_grad()
def readout_inputs(
    model: Argus,
    events: Events,
    impressions: Impressions | None,
    counts_until: Events,
    states: np.ndarray | None = None,
) -> ReadoutInputs:
    """:class:`ReadoutInputs` of ``impressions`` (rows of ``events``, which holds their
    histories), or of the state rows ``states`` alone (no impression then), the items' vectors
    as a bundle cut with the events ``counts_until`` has them."""
    was_training = model.training
    model.eval()
    rows = impressions.state if impressions is not None else states
    assert rows is not None
    held = states_at(model, events, rows)
    states = np.unique(rows)
    h, taste = held.at(states)
    device = next(model.parameters()).device
    taste = taste.to(device) if taste is not None else None
    u = model.user_vector(h.to(device), taste).float().cpu().numpy()
    item_ids, item_vecs = catalog_vectors(model, events, ItemPopularity.of(counts_until, device))
    _, offsets = events.user_offsets()
    first = offsets[np.searchsorted(offsets, states, side="right") - 1]
    starts = np.maximum(first, states + 1 - model.cfg.max_len)
    vectors, grades = padded_history(events, starts, states + 1, item_ids, item_vecs)
    model.train(was_training)
    if impressions is None:
        return ReadoutInputs(u, vectors, grades, np.zeros(0, np.int64), np.zeros((0, u.shape[1])))
    return ReadoutInputs(
        u=u,
        vectors=vectors,
        grades=grades,
        at=np.searchsorted(states, impressions.state),
        v=item_vecs[np.searchsorted(item_ids, events.item_id[impressions.row])],
    )
