"""``argus evaluate``: test-window losses and full-catalog ranking metrics.

Global temporal split: the model sees every event before the end of the test window as context,
and only test-window events are counted.

* **Losses** (ARGUS and SASRec alike): NIP cross-entropy of the next event's item under a full
  softmax over the catalog; for ARGUS also the FP losses (like, dislike, skip, played_ratio).
* **Ranking**: targets are the positive test-window events (:attr:`Events.positive`) of users with
  an earlier positive event, so that ARGUS (which conditions on every event) and SASRec (positives
  only) are scored on exactly the same targets. Each target is ranked against the whole catalog
  (every item in the data up to the end of the test window) by the model's score for the state just
  before it; Recall@K and NDCG@K for K in ``ks``. Ties count half (the expected rank under random
  tie-breaking), which matters only for MostPop. With ``exclude_seen`` the items a user met before
  are removed from the ranking and targets that repeat one are dropped (MovieLens-style).
* **MostPop** ranks by the number of positive training events of each item.
* **ARGUS + like**: the top ``rerank_depth`` NIP candidates reordered by
  ``log P_nip(j) + log P(like | j)``, the FP head's like probability for that candidate: the
  probability of "the next item is j and it is liked".
* **PairAccuracy** (fine-tuned models): the weighted share of correctly ordered pairs
  of test-window impressions, each scored ``<u, v>`` with the state the serving path would have
  used (as fine-tuned: the daily snapshot at lag 1d, the state before the session at lag 0);
  MostPop scores by popularity, and on simulated data the oracle by the true affinity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from model.argus import Argus
from model.checkpoint import load_model
from model.contract import DEFAULT_SESSION_GAP
from model.data.batching import (
    Batch,
    TemporalSplit,
    covering_spans,
    eval_spans,
    iter_batches,
    sample_users,
)
from model.data.events import FEEDBACK, Catalog, Events, parse_duration, read_events
from model.data.simulate import TRUTH_FILE, Truth
from model.impressions import (
    Impressions,
    find_impressions,
    group_pairs,
    pair_weight_table,
    popularity_counts,
)
from model.inference import ItemPopularity, readout_inputs, tower_scores
from model.losses import feedback_losses
from model.metrics import pair_accuracy, ranking_metrics, ranks
from model.progress import bar as tqdm
from model.readout import Readout
from model.runtime import pick_device
from model.trainer import choose_split, training_events


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10, 100)
    exclude_seen: bool = False  # remove each user's earlier items from the ranking
    rerank_depth: int = 100  # NIP candidates re-ordered by the like probability
    batch_size: int = 64  # spans per forward pass
    max_users: int = 0  # evaluate a seeded random sample of this many test users (0: all)
    score_chunk: int = 1 << 24  # max query x catalog scores held at once
    # PairAccuracy of fine-tuned models; None: as the first fine-tuned checkpoint was trained
    lag: str | None = None
    group: str | None = None
    pair_weights: str | None = None


def ranking_targets(events: Events, split: TemporalSplit, exclude_seen: bool) -> np.ndarray:
    """Rows of ``events`` that the ranking metrics score (see the module docstring)."""
    positive = events.positive
    _, offsets = events.user_offsets()
    user_start = np.repeat(offsets[:-1], np.diff(offsets))
    positives_before = np.cumsum(positive) - positive  # positives in rows [0, r)
    earlier_positive = positives_before > positives_before[user_start]
    keep = positive & split.in_test(events.timestamp) & earlier_positive
    if exclude_seen:
        keep &= first_occurrence(events)
    return np.flatnonzero(keep)


def first_occurrence(events: Events) -> np.ndarray:
    """(N,) bool: the row is the user's first event with that item."""
    order = np.lexsort((np.arange(len(events)), events.item_id, events.user_id))
    user, item = events.user_id[order], events.item_id[order]
    new = np.ones(len(events), dtype=bool)
    new[1:] = (user[1:] != user[:-1]) | (item[1:] != item[:-1])
    first = np.empty(len(events), dtype=bool)
    first[order] = new
    return first


class _SeenItems:
    """The catalog columns each user met before a row, as a boolean mask per query."""

    def __init__(self, events: Events, catalog: Catalog) -> None:
        _, offsets = events.user_offsets()
        self.user_start = np.repeat(offsets[:-1], np.diff(offsets))
        self.columns = catalog.column(events.item_id)
        self.size = len(catalog)

    def mask(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(n, C) bool: True for items of the user in rows before each of ``rows``."""
        start = self.user_start[rows]
        lengths = rows - start
        query = np.repeat(np.arange(len(rows)), lengths)
        position = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask = torch.zeros((len(rows), self.size), dtype=torch.bool, device=device)
        columns = self.columns[np.repeat(start, lengths) + position]
        mask[torch.from_numpy(query).to(device), torch.from_numpy(columns).to(device)] = True
        return mask


@dataclass
class ModelResult:
    losses: dict[str, float]
    ranks: dict[str, dict[int, int]]  # method -> {row of the full events table: rank}


@dataclass
class NextEvents:
    """The counted positions of one batch: each state ``h_t`` with the event ``t+1`` it predicts."""

    rows: np.ndarray  # (N,) rows of the full events table of the next events
    h: torch.Tensor  # (N, D) the states before them
    context: torch.Tensor | None  # (N, C) their context embedding (ARGUS only)
    item_id: torch.Tensor  # (N,)
    artist_id: torch.Tensor  # (N,)
    liked: torch.Tensor  # (N,)
    disliked: torch.Tensor  # (N,)
    played_ratio: torch.Tensor  # (N,)

    @classmethod
    def of(
        cls, model: Argus, batch: Batch, rows_of_model: np.ndarray, device: torch.device
    ) -> NextEvents:
        tensors = batch.to_torch(device)
        context = model.context_embedding(tensors) if model.argus else None
        h = model(tensors, context)  # (B, L, D)
        real = torch.from_numpy(batch.padding_mask).to(device)
        valid = (real & tensors["target_mask"])[:, 1:]  # (B, L-1): the next event is counted

        def following(name: str) -> torch.Tensor:
            return tensors[name][:, 1:][valid]

        return cls(
            rows=rows_of_model[batch.row_index[:, 1:][valid.cpu().numpy()]],
            h=h[:, :-1][valid],
            context=context[:, 1:][valid] if context is not None else None,
            item_id=following("item_id"),
            artist_id=following("artist_id"),
            liked=following("liked"),
            disliked=following("disliked"),
            played_ratio=following("played_ratio"),
        )


class NipRanking:
    """Next-item prediction: cross-entropy of the next item under a full softmax over the catalog,
    and the rank of each ranking target (for ARGUS also after re-ranking by the like head)."""

    def __init__(
        self,
        model: Argus,
        catalog: Catalog,
        is_target: np.ndarray,
        seen: _SeenItems | None,
        cfg: EvalConfig,
        device: torch.device,
    ) -> None:
        self.model, self.catalog, self.cfg, self.device = model, catalog, cfg, device
        self.is_target = is_target  # (events,) bool: the rows whose rank is recorded
        self.seen = seen  # each user's earlier items, removed from the ranking (or None)
        self.catalog_ids = torch.from_numpy(catalog.ids).to(device)
        self.catalog_artists = torch.from_numpy(catalog.artist_id).to(device)
        self.output = model.output_embedding(self.catalog_ids)  # (C, E)
        self.temperature = model.temperature()
        self.loss_sum, self.count = 0.0, 0
        self.ranks: dict[str, dict[int, int]] = {"nip": {}}
        if model.argus:
            self.ranks["nip+like"] = {}

    def add(self, nxt: NextEvents) -> None:
        model, cfg = self.model, self.cfg
        column = torch.from_numpy(self.catalog.column(nxt.item_id.cpu().numpy())).to(self.device)
        query = model.nip_query(nxt.h, nxt.context)  # (N, E)
        chunk = max(1, cfg.score_chunk // len(self.catalog))
        for begin in range(0, len(query), chunk):
            part = slice(begin, begin + chunk)
            logits = query[part] @ self.output.T / self.temperature  # (n, C)
            self.loss_sum += float(F.cross_entropy(logits, column[part], reduction="sum"))
            self.count += len(logits)
            scored = self.is_target[nxt.rows[part]]
            if not scored.any():
                continue
            rows = nxt.rows[part][scored]
            pick = torch.from_numpy(scored).to(self.device)
            log_p = torch.log_softmax(logits[pick], dim=-1)  # (m, C)
            excluded = self.seen.mask(rows, self.device) if self.seen is not None else None
            target = column[part][pick]
            found = ranks(log_p, target, excluded)
            self.ranks["nip"].update(zip(rows.tolist(), found.tolist(), strict=True))
            if nxt.context is not None:
                reranked = _rerank_with_like(
                    model,
                    nxt.h[part][pick],
                    nxt.context[part][pick],
                    log_p,
                    target,
                    excluded,
                    self.catalog_ids,
                    self.catalog_artists,
                    cfg.rerank_depth,
                )
                self.ranks["nip+like"].update(zip(rows.tolist(), reranked.tolist(), strict=True))

    def losses(self) -> dict[str, float]:
        return {"nip_loss": self.loss_sum / self.count} if self.count else {}


class FeedbackLosses:
    """Feedback prediction: the FP head's losses on the next events (ARGUS only); skip and
    played_ratio count listens only."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(FEEDBACK, 0.0)
        self.counts = dict.fromkeys(FEEDBACK, 0)

    def add(self, model: Argus, nxt: NextEvents) -> None:
        assert nxt.context is not None
        next_item = model.item_embedding(nxt.item_id, nxt.artist_id)
        fp = feedback_losses(
            model.fp_logits(nxt.h, nxt.context, next_item),
            nxt.liked,
            nxt.disliked,
            nxt.played_ratio,
        )
        everyone, listened = len(nxt.h), int((~torch.isnan(nxt.played_ratio)).sum())
        for name, n in zip(FEEDBACK, (everyone, everyone, listened, listened), strict=True):
            self.sums[name] += float(fp[name]) * n
            self.counts[name] += n

    def losses(self) -> dict[str, float]:
        return {f"{n}_loss": self.sums[n] / self.counts[n] for n in FEEDBACK if self.counts[n]}


@torch.no_grad()
def evaluate_model(
    model: Argus,
    events: Events,
    split: TemporalSplit,
    catalog: Catalog,
    targets: np.ndarray,
    cfg: EvalConfig,
    device: torch.device,
    progress: bool = True,
) -> ModelResult:
    """Test-window losses and target ranks of one model. ``events`` ends at ``split.end_time``."""
    rows_of_model = np.arange(len(events)) if model.argus else np.flatnonzero(events.positive)
    seen = _SeenItems(events, catalog) if cfg.exclude_seen else None
    model_events = training_events(events, model.cfg.objective)
    spans = eval_spans(model_events, split, model.cfg.max_len)
    is_target = np.zeros(len(events), dtype=bool)
    is_target[targets] = True
    nip = NipRanking(model, catalog, is_target, seen, cfg, device)
    feedback = FeedbackLosses() if model.argus else None
    batches = iter_batches(model_events, spans, batch_size=cfg.batch_size)
    n_batches = -(-len(spans) // cfg.batch_size)
    for batch in tqdm(batches, total=n_batches, desc="evaluate", disable=not progress, leave=False):
        nxt = NextEvents.of(model, batch, rows_of_model, device)
        nip.add(nxt)
        if feedback is not None:
            feedback.add(model, nxt)
    losses = {**nip.losses(), **(feedback.losses() if feedback is not None else {})}
    return ModelResult(losses, nip.ranks)


def _rerank_with_like(
    model: Argus,
    h: torch.Tensor,
    context: torch.Tensor,
    log_p: torch.Tensor,
    target: torch.Tensor,
    excluded: torch.Tensor | None,
    catalog_ids: torch.Tensor,
    catalog_artists: torch.Tensor,
    depth: int,
) -> torch.Tensor:
    """(m,) ranks after re-ordering the top ``depth`` NIP candidates by log P_nip + log P(like).

    A target outside the top ``depth`` keeps its NIP rank (which is >= depth).
    """
    scores = log_p.masked_fill(excluded, float("-inf")) if excluded is not None else log_p
    nip_rank = ranks(scores, target)
    depth = min(depth, scores.shape[1])
    top_scores, top = scores.topk(depth, dim=1)  # (m, R)
    m = len(top)
    candidates = model.item_embedding(catalog_ids[top], catalog_artists[top])  # (m, R, E)
    like_logit = model.fp_logits(
        h[:, None].expand(m, depth, h.shape[-1]),
        context[:, None].expand(m, depth, context.shape[-1]),
        candidates,
    )[..., 0]  # (m, R)
    combined = top_scores + F.logsigmoid(like_logit)
    in_top = top == target[:, None]  # (m, R)
    combined_target = torch.where(in_top, combined, float("-inf")).max(1).values
    new_rank = (combined > combined_target[:, None]).sum(1)
    return torch.where(in_top.any(1), new_rank, nip_rank)


def most_popular_ranks(
    events: Events,
    split: TemporalSplit,
    catalog: Catalog,
    targets: np.ndarray,
    cfg: EvalConfig,
    popularity: Events | None = None,
) -> dict[int, int]:
    """Ranks of ``targets`` (rows of ``events``) by the number of positive training events of each
    item in ``popularity`` (default: ``events``)."""
    scores = torch.from_numpy(
        popularity_counts(popularity if popularity is not None else events, split, catalog)
    )
    seen = _SeenItems(events, catalog) if cfg.exclude_seen else None
    column = torch.from_numpy(catalog.column(events.item_id[targets]))
    found: dict[int, int] = {}
    chunk = max(1, cfg.score_chunk // len(catalog))
    for begin in range(0, len(targets), chunk):
        rows = targets[begin : begin + chunk]
        excluded = seen.mask(rows, torch.device("cpu")) if seen is not None else None
        part = ranks(scores.expand(len(rows), -1), column[begin : begin + chunk], excluded)
        found.update(zip(rows.tolist(), part.tolist(), strict=True))
    return found


@torch.no_grad()
def impression_scores(
    model: Argus,
    events: Events,
    impressions: Impressions,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
    popularity: ItemPopularity | None = None,
    runtime: bool = False,
) -> np.ndarray:
    """(M,) two-tower scores ``<u, v>`` of impressions, each from its state row's hidden state
    (and taste) computed with as much history as ``max_len`` allows (one pass per user, more if
    needed); ``popularity``: the items' log1p positive events before the test window."""
    if len(impressions) == 0:
        return np.zeros(0, dtype=np.float32)
    _, offsets = events.user_offsets()
    user = np.searchsorted(offsets, impressions.state, side="right") - 1
    first_of_user = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])  # states ascend per user
    a = np.minimum.reduceat(impressions.state, first_of_user)
    b = np.maximum.reduceat(impressions.state, first_of_user) + 1
    spans = covering_spans(offsets[user[first_of_user]], a, b, model.cfg.max_len)
    needed = np.unique(impressions.state)
    h = torch.empty(len(needed), model.cfg.d_model, device=device)
    taste = torch.empty(len(needed), model.cfg.retrieval_dim, device=device)
    batches = iter_batches(events, spans, batch_size=batch_size)
    n_batches = -(-len(spans) // batch_size)
    for batch in tqdm(batches, total=n_batches, desc="score", disable=not progress, leave=False):
        rows = batch.row_index
        wanted = batch.target_mask & np.isin(rows, needed)
        tensors = batch.to_torch(device)
        at = torch.from_numpy(np.searchsorted(needed, rows[wanted])).to(device)
        mask = torch.from_numpy(wanted).to(device)
        h[at] = model(tensors)[mask]
        if model.has_retrieval:
            taste[at] = model.taste(tensors)[mask]
    item = torch.from_numpy(events.item_id[impressions.row]).to(device)
    artist = torch.from_numpy(events.artist_id[impressions.row]).to(device)
    at = torch.from_numpy(np.searchsorted(needed, impressions.state)).to(device)
    tastes = taste[at] if model.has_retrieval else None
    log_popularity = popularity.log_counts(item) if popularity is not None else None
    cold = popularity.cold(item, model) if popularity is not None else None
    negatives = popularity.log_negatives(item) if popularity is not None else None
    unseen = popularity.unseen(item) if popularity is not None else None
    scores = tower_scores(
        model, h[at], item, artist, tastes, log_popularity, runtime, cold, negatives, unseen
    )
    return scores.cpu().numpy()


def name_of(checkpoint: str | Path, state: dict[str, Any]) -> str:
    """A short label: ``ARGUS``, ``ARGUS fine-tuned`` or ``SASRec`` and the run directory."""
    config = state["model_config"]
    label = "ARGUS" if config["objective"] == "argus" else "SASRec"
    if config.get("tower_dim"):
        label += " fine-tuned"
    path = Path(checkpoint)
    return f"{label} ({(path if path.is_dir() else path.parent).name})"


def evaluate(
    checkpoints: Sequence[str | Path],
    data: str | Path,
    out: str | Path | None,
    *,
    test_days: float | None = None,
    test_fraction: float | None = None,
    cfg: EvalConfig = EvalConfig(),
    device: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate checkpoints and MostPop on one split; write ``eval.json`` and ``eval.md``.

    The split defaults to the one the (first) checkpoint held out. A checkpoint trained on events
    after the split is refused (its metrics would be leaked).
    """
    chosen = pick_device(device)
    models = [load_model(path, chosen) for path in checkpoints]
    events = read_events(data)
    if test_days is None and test_fraction is None:
        if not models:
            raise ValueError("give --test-days or --test-fraction when evaluating MostPop alone")
        held_out = models[0][1]["train_config"]
        test_days, test_fraction = held_out["test_days"], held_out["test_fraction"]
    split = unleaked_split(events, checkpoints, models, test_days, test_fraction)
    events = split.until_end(events)
    catalog = Catalog.from_events(events)  # the whole catalog, even when users are sampled
    all_users = events
    if cfg.max_users:
        events = sample_users(events, split, cfg.max_users)
    targets = ranking_targets(events, split, cfg.exclude_seen)
    found: dict[str, dict[int, int]] = {}
    losses: dict[str, dict[str, float]] = {}
    for path, (model, state) in zip(checkpoints, models, strict=True):
        name = name_of(path, state)
        result = evaluate_model(model, events, split, catalog, targets, cfg, chosen, progress)
        losses[name] = result.losses
        found[name] = result.ranks["nip"]
        if "nip+like" in result.ranks:
            found[f"{name} + like"] = result.ranks["nip+like"]
    common = np.array(
        sorted(set(targets.tolist()).intersection(*(set(r) for r in found.values()))),
        dtype=np.int64,
    )
    found["MostPop"] = most_popular_ranks(events, split, catalog, common, cfg, all_users)
    rows: dict[str, dict[str, float]] = {}
    for name, by_row in found.items():
        rank = np.array([by_row[r] for r in common.tolist()], dtype=np.int64)
        base = name.removesuffix(" + like")
        rows[name] = {
            **(losses.get(base, {}) if name == base else {}),
            **ranking_metrics(rank, cfg.ks),
        }
    towers = [(p, m, st) for p, (m, st) in zip(checkpoints, models, strict=True) if m.has_towers]
    pair_report = None
    if towers:
        pair_report = _pair_accuracies(towers, events, all_users, split, catalog, data, cfg, rows)
    report = {
        "data": str(data),
        "split": {
            "split_time": split.split_time,
            "end_time": split.end_time,
            "test_days": test_days,
            "test_fraction": test_fraction,
        },
        "catalog_size": len(catalog),
        "test_events": int(split.in_test(events.timestamp).sum()),
        "ranking_targets": len(common),
        "exclude_seen": cfg.exclude_seen,
        "users_sampled": cfg.max_users or None,
        "models": rows,
        "pairs": pair_report,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "eval.md").write_text(markdown_table(report))
    return report


def unleaked_split(
    events: Events,
    checkpoints: Sequence[str | Path],
    models: Sequence[tuple[Any, dict[str, Any]]],
    test_days: float | None,
    test_fraction: float | None,
) -> TemporalSplit:
    """The test window, refused when missing or when a checkpoint trained on events after its
    start (its metrics there would be leaked)."""
    split = choose_split(events, test_days or 0.0, test_fraction or 0.0)
    if split is None:
        raise ValueError("the evaluation needs a test window: --test-days or --test-fraction > 0")
    for path, (_, state) in zip(checkpoints, models, strict=True):
        if state["train_until"] > split.split_time:
            raise ValueError(
                f"{path}: trained on events up to t={state['train_until']}, after the test window "
                f"starts (t={split.split_time}); evaluating it there would leak"
            )
    return split


ORACLE = "Oracle (simulator truth)"


def _pair_accuracies(
    towers: list[tuple[str | Path, Argus, dict[str, Any]]],
    events: Events,
    all_users: Events,
    split: TemporalSplit,
    catalog: Catalog,
    data: str | Path,
    cfg: EvalConfig,
    rows: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Weighted PairAccuracy on the test window's impressions, added to ``rows``: each fine-tuned
    model, MostPop, and (simulated data) the oracle that scores by the true affinity."""
    trained = towers[0][2]["train_config"]  # a FinetuneConfig: towers come from `argus finetune`
    lag = cfg.lag if cfg.lag is not None else trained["lag"]
    group = cfg.group if cfg.group is not None else trained["group"]
    weights = cfg.pair_weights if cfg.pair_weights is not None else trained["pair_weights"]
    table = pair_weight_table(weights)
    found = find_impressions(
        events,
        parse_duration(lag),
        group,
        snapshot_delay=parse_duration(trained.get("snapshot_delay", "0")),
        session_gap=parse_duration(trained.get("session_gap", DEFAULT_SESSION_GAP)),
    )
    test = found.take(np.flatnonzero(split.in_test(events.timestamp[found.row])))
    hi, lo, w = group_pairs(test.group, test.grade, table)
    for path, model, state in towers:
        device = next(model.parameters()).device
        seen = ItemPopularity.of(split.train(all_users), device)  # the cut-off bundle's counts
        runtime_lag = state["train_config"].get("runtime_lag", "")
        scores = impression_scores(
            model,
            events,
            test,
            batch_size=cfg.batch_size,
            device=device,
            popularity=seen,
            # the runtime head answers at its own lag (the service's realtime source)
            runtime=bool(runtime_lag) and parse_duration(runtime_lag) == parse_duration(lag),
        )
        row = rows[name_of(path, state)]
        row["pair_accuracy"] = pair_accuracy(scores, hi, lo, w)
        readout = Readout.of(model)
        if readout.on and parse_duration(lag) > 0:  # the daily bundle's vectors: with it
            row["pair_accuracy_without_readout"] = row["pair_accuracy"]
            inputs = readout_inputs(model, events, test, split.train(all_users))
            row["pair_accuracy"] = pair_accuracy(inputs.scores(readout), hi, lo, w)
    popularity = popularity_counts(all_users, split, catalog)
    rows["MostPop"]["pair_accuracy"] = pair_accuracy(
        popularity[catalog.column(events.item_id[test.row])], hi, lo, w
    )
    data = Path(data)
    truth_path = data / TRUTH_FILE if data.is_dir() else data.with_name(TRUTH_FILE)
    if truth_path.exists():
        affinity = Truth(truth_path).affinity(
            events.user_id[test.row], events.item_id[test.row], events.timestamp[test.row]
        )
        rows[ORACLE] = {"pair_accuracy": pair_accuracy(affinity, hi, lo, w)}
    return {
        "lag": lag,
        "group": group,
        "pair_weights": weights,
        "impressions": len(test),
        "pairs": len(hi),
        "pair_weight_sum": float(w.sum()),
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The report's models as a Markdown table (losses and ranking metrics)."""
    columns: list[str] = []
    for metrics in report["models"].values():
        columns += [c for c in metrics if c not in columns]
    lines = [
        f"{report['ranking_targets']:,} ranking targets over a catalog of "
        f"{report['catalog_size']:,} items; {report['test_events']:,} test-window events.",
        *(
            [
                f"PairAccuracy: {p['pairs']:,} pairs of {p['impressions']:,} test impressions "
                f"(lag {p['lag']}, groups {p['group']})."
            ]
            if (p := report.get("pairs"))
            else []
        ),
        "",
        "| model | " + " | ".join(columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for name, metrics in report["models"].items():
        cells = [f"{metrics[c]:.4f}" if c in metrics else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
