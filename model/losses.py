"""Pretraining losses of ARGUS: sampled softmax with logQ correction for next-item
prediction, masked binary cross-entropies for feedback prediction, and ``L = L_nip + lambda L_fp``.

Negatives are the distinct items among the batch's N targets and U uniform samples from the
catalog of C items. ``Q(j)``, the expected number of times item j appears among these distinct
negatives, is the probability that j was drawn at least once: ``1 - (1 - p(j))^N (1 - 1/C)^U``
with ``p`` the training frequencies (:class:`ItemFrequencies`). Deduplication keeps the (N, M)
logit matrix small when popular items fill the batch.
Output embeddings are item-only (no artist), so any candidate id can be scored the same way.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from model.argus import Argus, positive_events, prior_columns
from model.contract import DAY
from model.data.events import FEEDBACK, SKIP_THRESHOLD


def sampled_softmax_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    positive_ids: torch.Tensor,
    negative: torch.Tensor,
    negative_ids: torch.Tensor,
    log_q_positive: torch.Tensor,
    log_q_negative: torch.Tensor,
    temperature: torch.Tensor | float,
    prior: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Mean cross-entropy of each positive against the shared negatives.

    query (N, E), positive (N, E) with ids (N,), negative (M, E) with ids (M,), log Q of each
    (N,) and (M,). Logits are ``(<q, o> + prior)/T - log Q``, ``prior`` a term of each positive
    (N,) and each (row, negative) (N, M) that varies with the row (none when None); a negative
    equal to the row's positive (an accidental hit) is masked out.
    """
    scaled = query / temperature  # (N, E): scale the queries, not the (N, M) logits
    pos = (scaled * positive).sum(-1) - log_q_positive  # (N,)
    neg = torch.addmm(-log_q_negative[None, :], scaled, negative.T)  # (N, M)
    if prior is not None:
        pos = pos + prior[0] / temperature
        neg = neg + prior[1] / temperature
    neg = neg.masked_fill(negative_ids[None, :] == positive_ids[:, None], float("-inf"))
    log_normalizer = torch.logaddexp(pos, torch.logsumexp(neg, dim=1))  # (N,)
    return (log_normalizer - pos).mean()


def feedback_losses(
    logits: torch.Tensor, liked: torch.Tensor, disliked: torch.Tensor, played_ratio: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Per-head BCE losses of (N, 4) FP logits against the next events' feedback (N,).

    like and dislike always have a target; skip (``played_ratio < SKIP_THRESHOLD``) and played_ratio
    (clipped to [0, 1]) only on listens (played_ratio not NaN). A head with no target gives 0 and
    no gradient.
    """
    listened = ~torch.isnan(played_ratio)
    ratio = torch.where(listened, played_ratio, torch.zeros_like(played_ratio)).clamp(0, 1)
    targets = [liked.float(), disliked.float(), (ratio < SKIP_THRESHOLD).float(), ratio]
    masks = [torch.ones_like(listened), torch.ones_like(listened), listened, listened]
    losses = {}
    for name, target, mask, column in zip(FEEDBACK, targets, masks, logits.unbind(-1), strict=True):
        per_event = F.binary_cross_entropy_with_logits(column, target, reduction="none")
        losses[name] = (per_event * mask).sum() / mask.sum().clamp(min=1)
    return losses


@dataclass
class ItemFrequencies:
    """Training-data item frequencies, for ``log Q(j)`` of the sampled softmax."""

    ids: torch.Tensor  # (C,) sorted unique item ids of the training data
    probability: torch.Tensor  # (C,) share of training events of each id

    @classmethod
    def from_item_ids(cls, item_ids: np.ndarray) -> ItemFrequencies:
        ids, counts = np.unique(item_ids, return_counts=True)
        return cls(torch.from_numpy(ids), torch.from_numpy(counts / counts.sum()).float())

    def to(self, device: str | torch.device) -> ItemFrequencies:
        return ItemFrequencies(self.ids.to(device), self.probability.to(device))

    @property
    def catalog_size(self) -> int:
        return len(self.ids)

    def log_q(self, item_ids: torch.Tensor, n_in_batch: int, n_uniform: int) -> torch.Tensor:
        """log Q(j): log of the probability that j is among the distinct negatives drawn from N
        in-batch targets and U uniform samples (its expected count in that set)."""
        where = torch.searchsorted(self.ids, item_ids).clamp(max=len(self.ids) - 1)
        known = self.ids[where] == item_ids
        p = torch.where(known, self.probability[where], 0.0)
        log_missed = n_in_batch * torch.log1p(-p) + n_uniform * math.log1p(-1 / self.catalog_size)
        return torch.log(-torch.expm1(log_missed))

    def sample_uniform(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(n,) ids drawn uniformly from the catalog."""
        index = torch.randint(len(self.ids), (n,), generator=generator, device=self.ids.device)
        return self.ids[index]


@dataclass
class ItemTrend:
    """What is trending: each item's positive events in the ``window`` seconds before the start
    of a UTC day, the count that day's bundle holds (its last retrieval column, log1p).

    Records are ``(item rank, seconds)`` packed into one sorted int64 key; a count is two
    binary searches, made once per distinct (day, item) of a batch."""

    ids: torch.Tensor  # (C,) sorted unique ids of the items with a positive event
    keys: torch.Tensor  # (P,) sorted rank * span + (time - base) of every positive event
    base: int
    span: int
    window: int  # seconds

    @classmethod
    def of(cls, item_id: np.ndarray, timestamp: np.ndarray, window: int) -> ItemTrend:
        """From the positive events' items and times."""
        ids, rank = np.unique(item_id, return_inverse=True)
        base = int(timestamp.min()) if len(timestamp) else 0
        span = (int(timestamp.max()) - base if len(timestamp) else 0) + 2
        keys = np.sort(rank.astype(np.int64) * span + (timestamp.astype(np.int64) - base))
        return cls(torch.from_numpy(ids), torch.from_numpy(keys), base, span, window)

    def to(self, device: str | torch.device) -> ItemTrend:
        return dataclasses.replace(self, ids=self.ids.to(device), keys=self.keys.to(device))

    def log_counts(
        self, item_id: torch.Tensor, at: torch.Tensor, all_time: bool = False
    ) -> torch.Tensor:
        """(N, M): log1p of the positive events of each item ``item_id`` (M,) in ``[d - window,
        d)`` (``all_time``: before ``d``), ``d`` the start of the UTC day of each time ``at``
        (N,)."""
        day = torch.div(at, DAY, rounding_mode="floor") * DAY
        days, row = torch.unique(day, return_inverse=True)
        if len(self.ids) == 0:
            return torch.zeros(len(at), len(item_id), device=item_id.device)
        where = torch.searchsorted(self.ids, item_id).clamp(max=len(self.ids) - 1)
        known = self.ids[where] == item_id  # (M,)

        def rank(time: torch.Tensor) -> torch.Tensor:  # (D, M) records of the item before time
            # clipped into [0, span - 1]: before every record of the item, or after all of them
            offset = (time[:, None] - self.base).clamp(0, self.span - 1)
            return torch.searchsorted(self.keys, where[None, :] * self.span + offset)

        since = days - self.window if not all_time else torch.full_like(days, self.base)
        counts = (rank(days) - rank(since)) * known[None, :]  # (D, M)
        return torch.log1p(counts.float())[row]


def batch_softmax_loss(
    query: torch.Tensor,
    ids: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    uniform_ids: torch.Tensor,
    frequencies: ItemFrequencies,
    temperature: torch.Tensor | float,
    prior: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """:func:`sampled_softmax_loss` of the targets ``ids`` (N,) given ``query`` (N, E), with the
    batch's targets and ``uniform_ids`` as negatives and both logQ-corrected; ``embed`` maps ids
    to the output embeddings, ``prior`` (M,) ids to each row's additive term (N, M)."""
    negative_ids = torch.unique(torch.cat([ids, uniform_ids.to(ids.device)]))  # (M,), sorted
    n, u = len(ids), len(uniform_ids)
    terms = None
    if prior is not None:  # every target is among the negatives: its term is a gather
        negative_prior = prior(negative_ids)
        column = torch.searchsorted(negative_ids, ids)
        terms = (negative_prior.gather(1, column[:, None]).squeeze(1), negative_prior)
    return sampled_softmax_loss(
        query,
        embed(ids),
        ids,
        embed(negative_ids),
        negative_ids,
        frequencies.log_q(ids, n, u),
        frequencies.log_q(negative_ids, n, u),
        temperature,
        terms,
    )


def pretraining_loss(
    model: Argus,
    batch: dict[str, torch.Tensor],
    frequencies: ItemFrequencies,
    uniform_ids: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """``L = L_nip + lambda L_fp`` over every position whose next event is a target.

    ``batch`` is :meth:`model.data.batching.Batch.to_torch` output; position t predicts event t+1
    when t+1 is a real event and ``target_mask[t + 1]``. Returns the total as ``"loss"`` and each
    part (``"nip"``, ``"like"``, ...) detached for logging.
    """
    context = model.context_embedding(batch) if model.argus else None  # (B, L, D)
    h = model(batch, context)  # (B, L, D)
    length = batch["item_id"].shape[1]
    real = torch.arange(length, device=h.device) < batch["lengths"][:, None]  # (B, L)
    valid = (real & batch["target_mask"])[:, 1:]  # (B, L-1): the next event is a target

    def next_(name: str) -> torch.Tensor:
        return batch[name][:, 1:][valid]  # (N, ...)

    h_t = h[:, :-1][valid]  # (N, D)
    next_ids = next_("item_id")  # (N,)
    next_context = context[:, 1:][valid] if context is not None else None
    query = model.nip_query(h_t, next_context)  # (N, E)
    nip = batch_softmax_loss(
        query, next_ids, model.output_embedding, uniform_ids, frequencies, model.temperature()
    )
    parts = {"nip": nip}
    total = nip
    if model.argus:
        assert next_context is not None
        next_item = model.item_embedding(next_ids, next_("artist_id"))
        logits = model.fp_logits(h_t, next_context, next_item)
        fp = feedback_losses(logits, next_("liked"), next_("disliked"), next_("played_ratio"))
        parts.update(fp)
        total = total + model.cfg.fp_weight * sum(fp.values(), torch.zeros((), device=h.device))
    return {"loss": total, **{name: value.detach() for name, value in parts.items()}}


def future_targets(
    batch: dict[str, torch.Tensor],
    horizon: int,
    window: int,
    generator: torch.Generator | None,
    asked: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every position t of a padded batch, one positive event drawn at random among the next
    ``window`` events of its row that happen within ``horizon`` seconds of t (dense all-action
    targets, as in Pinterest's PinnerFormer): ``(valid (B, L) bool, target position (B, L))``.
    ``asked`` (B, L): the time each position's query is asked, which the horizon counts from
    (default: the time of event t)."""
    b, length = batch["item_id"].shape
    device = batch["item_id"].device
    positive = positive_events(batch)
    tries = 4  # the first of a few random offsets that lands on a positive in the horizon
    offset = torch.randint(1, window + 1, (tries, b, length), device=device, generator=generator)
    position = torch.arange(length, device=device)[None, None, :] + offset
    inside = position < length
    position = position.clamp(max=length - 1)
    rows = torch.arange(b, device=device)[None, :, None].expand_as(position)
    start = batch["timestamp"] if asked is None else asked
    soon = batch["timestamp"][rows, position] - start[None] <= horizon
    ok = inside & positive[rows, position] & soon  # (tries, B, L); a real target: a real source
    first = ok.float().argmax(0)  # the first try that worked (0 when none)
    return ok.any(0), position.gather(0, first[None]).squeeze(0)


def retrieval_loss(
    model: Argus,
    batch: dict[str, torch.Tensor],
    frequencies: ItemFrequencies,
    uniform_ids: torch.Tensor,
    *,
    horizon: int,
    window: int,
    temperature: float,
    generator: torch.Generator | None = None,
    taste: torch.Tensor | None = None,
    trend: ItemTrend | None = None,
    h: torch.Tensor | None = None,
    state_dropout: float = 0.0,
) -> torch.Tensor:
    """Sampled softmax (in-batch and uniform negatives, logQ-corrected) of a future positive
    event (:func:`future_targets`) given the retrieval query at each position: what makes the
    retrieval space recall the items a user goes on to enjoy. 0 when the batch has no target.
    ``taste`` and ``h``: :meth:`Argus.taste` and the states of the batch, when the caller has
    them already. A model with
    ``retrieval_trend`` needs ``trend``: each candidate's score adds the query's trend weight
    times the candidate's :meth:`ItemTrend.log_counts` on the day the query is asked. That is
    the day of the query's event, or with ``retrieval_gap`` the moment the user's next event
    came: the query then reads how long they were away, and the horizon counts from there.
    With ``retrieval_popularity`` the score also adds the query's popularity weight times the
    candidate's positives of all time before that day (log1p), from the same ``trend``.
    ``state_dropout``: dropout on the state the query reads, while the model trains (drawn from
    the step's seeded stream)."""
    if h is None and model.reads_state:
        h = model(batch)
    if h is not None and state_dropout:
        h = F.dropout(h, state_dropout, training=model.training)
    if model.cfg.retrieval_trend and trend is None:
        raise ValueError("this model's retrieval space has a trend column: pass the ItemTrend")
    time = batch["timestamp"]
    asked = torch.cat([time[:, 1:], time[:, -1:]], dim=1) if model.cfg.retrieval_gap else time
    taste = model.taste(batch) if taste is None else taste
    query = model.retrieval_query(taste, h, asked - time)  # (B, L, R')
    valid, target = future_targets(batch, horizon, window, generator, asked)
    if not bool(valid.any()):
        return query.sum() * 0.0
    rows = torch.arange(len(target), device=target.device)[:, None].expand_as(target)
    ids = batch["item_id"][rows[valid], target[valid]]  # (N,)
    query = query[valid]
    prior = None
    if model.cfg.retrieval_trend:
        assert trend is not None
        columns, at = prior_columns(model.cfg), asked[valid]
        query, weights = query[:, :-columns], query[:, -columns:]

        def prior(item_id: torch.Tensor) -> torch.Tensor:
            score = weights[:, -1:] * trend.log_counts(item_id, at)
            if model.cfg.retrieval_popularity:
                score = score + weights[:, :1] * trend.log_counts(item_id, at, all_time=True)
            return score

    return batch_softmax_loss(
        query, ids, model.retrieval_items, uniform_ids, frequencies, temperature, prior
    )
