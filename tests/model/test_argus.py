from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from model.argus import (
    Argus,
    ArgusConfig,
    away,
    count_embedding_parameters,
    count_parameters,
    preset,
)
from model.contract import DAY
from model.data.batching import chunk_spans, make_batch
from model.data.events import Events
from model.inference import ItemPopularity
from model.losses import ItemFrequencies, feedback_losses, pretraining_loss, sampled_softmax_loss
from tests.model.data.helpers import make_events


def tiny(**overrides: object) -> Argus:
    torch.manual_seed(0)
    return Argus(preset("argus-tiny", **overrides)).eval()


def batch_of(n_users: int = 3, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, n_users + 1), length)
    times = np.tile(np.cumsum(rng.integers(1, 5000, length)), n_users)
    events = make_events(users, times)
    events = type(events).from_arrays(
        **{
            **vars(events),
            "item_id": rng.integers(1, 50, len(users)),
            "source": rng.integers(0, 4, len(users)),
        }
    )
    return make_batch(events, chunk_spans(events.user_offsets()[1], max_len=length)).to_torch()


@pytest.mark.parametrize("objective", ["argus", "sasrec"])
def test_changing_a_future_event_never_changes_an_earlier_output(objective: str) -> None:
    model = tiny(objective=objective)
    batch = batch_of()
    h = model(batch)
    t = 5
    changed = {k: v.clone() for k, v in batch.items()}
    changed["item_id"][:, t + 1 :] += 17
    changed["liked"][:, t + 1 :] = ~changed["liked"][:, t + 1 :]
    changed["played_ratio"][:, t + 1 :] = 0.05
    changed["source"][:, t + 1 :] = 3
    changed["timestamp"][:, t + 1 :] += 123_456
    h2 = model(changed)
    assert torch.allclose(h[:, : t + 1], h2[:, : t + 1], atol=1e-6)
    assert not torch.allclose(h[:, t + 1 :], h2[:, t + 1 :], atol=1e-4)  # the change is seen later


def test_unseen_and_extreme_item_ids_embed() -> None:
    model = tiny()
    ids = torch.tensor([0, 1, 10**12, 2**62, -5, 9_223_372_036_854_775_807])
    emb = model.item_embedding(ids)
    assert emb.shape == (6, model.cfg.embedding_dim) and torch.isfinite(emb).all()
    rows = model.item.rows_of(ids)
    assert (rows >= 0).all() and (rows < model.cfg.hash_rows).all()
    assert not torch.equal(model.item.rows_of(ids, salt=0), model.item.rows_of(ids, salt=1))


def test_a_warm_start_moves_the_table_to_the_targets_and_leaves_other_rows() -> None:
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", hash_rows=8192))
    items = torch.arange(1, 1_001) * 7_919
    artists = torch.where(items % 5 == 0, -1, items % 97)  # some unknown, many shared
    targets = torch.randn(len(items), model.item.table.weight.shape[1])
    before = model.item.table.weight.detach().clone()
    used = torch.cat([model.item.rows_of(items), model.item.rows_of(artists.clamp(min=0), 1)])
    assert model.warm_start_items(items, artists, targets) < 0.05
    with torch.no_grad():
        got = model.item_embedding(items, artists)
    assert torch.nn.functional.cosine_similarity(got, targets).min() > 0.99
    untouched = torch.ones(8192, dtype=torch.bool)
    untouched[used.unique()] = False
    assert torch.equal(model.item.table.weight[untouched], before[untouched])


def test_logq_loss_on_a_hand_computed_three_item_case() -> None:
    o = {1: [1.0, 0.0], 2: [0.0, 1.0], 3: [1.0, 1.0]}
    q = torch.tensor([[1.0, 0.0]])
    loss = sampled_softmax_loss(
        q,
        torch.tensor([o[1]]),
        torch.tensor([1]),
        torch.tensor([o[1], o[2], o[3]]),
        torch.tensor([1, 2, 3]),
        log_q_positive=torch.tensor([math.log(1.0)]),
        log_q_negative=torch.tensor([math.log(1.0), math.log(0.5), math.log(2.0)]),
        temperature=0.5,
    )
    # logits: positive 1/0.5 - 0 = 2; item 1 as a negative is an accidental hit (masked);
    # item 2: 0/0.5 - log 0.5 = 0.693; item 3: 1/0.5 - log 2 = 1.307.
    expected = -math.log(
        math.exp(2) / (math.exp(2) + math.exp(math.log(2)) + math.exp(2 - math.log(2)))
    )
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_whole_catalog_as_negatives_equals_full_softmax() -> None:
    torch.manual_seed(1)
    catalog, query = torch.randn(20, 8), torch.randn(5, 8)
    target = torch.tensor([0, 3, 3, 19, 7])
    ids = torch.arange(20)
    sampled = sampled_softmax_loss(
        query,
        catalog[target],
        target,
        catalog,
        ids,
        torch.zeros(5),
        torch.zeros(20),
        temperature=0.7,
    )
    full = torch.nn.functional.cross_entropy(query @ catalog.T / 0.7, target)
    assert sampled.item() == pytest.approx(full.item(), rel=1e-6)


def test_item_frequencies_give_inclusion_probabilities() -> None:
    freq = ItemFrequencies.from_item_ids(np.array([5, 5, 5, 9]))  # p = 0.75, 0.25; C = 2
    log_q = freq.log_q(torch.tensor([5, 9, 1234]), n_in_batch=3, n_uniform=2)
    # P(j among the distinct negatives) = 1 - (1 - p)^3 (1 - 1/2)^2
    expected = [1 - 0.25**3 * 0.25, 1 - 0.75**3 * 0.25, 1 - 1.0 * 0.25]
    assert torch.allclose(log_q.exp(), torch.tensor(expected))


def test_masked_feedback_targets_get_no_gradient() -> None:
    logits = torch.zeros(4, 4, requires_grad=True)
    ratio = torch.tensor([0.1, float("nan"), 1.0, float("nan")])
    losses = feedback_losses(
        logits, torch.tensor([True, False, False, True]), torch.zeros(4, dtype=torch.bool), ratio
    )
    sum(losses.values()).backward()  # type: ignore[union-attr]
    grad = logits.grad
    assert grad is not None
    assert (grad[[1, 3], 2:] == 0).all()  # no listen: skip and played_ratio heads get nothing
    assert (grad[[0, 2], 2:] != 0).all() and (grad[:, :2] != 0).all()
    no_listens = feedback_losses(
        logits[:2],
        torch.zeros(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bool),
        torch.full((2,), float("nan")),
    )
    assert no_listens["skip"].item() == 0.0 and no_listens["played_ratio"].item() == 0.0


def nip_over_training(
    model: Argus, batch: dict[str, torch.Tensor], steps: int
) -> tuple[float, float]:
    """The NIP loss at the first and the last of ``steps`` AdamW steps on ``batch`` alone."""
    freq = ItemFrequencies.from_item_ids(batch["item_id"][batch["target_mask"]].numpy())
    uniform = freq.sample_uniform(16, torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    nip = []
    for _ in range(steps):
        losses = pretraining_loss(model, batch, freq, uniform)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        nip.append(losses["nip"].item())
    return nip[0], nip[-1]


@pytest.mark.parametrize("objective", ["argus", "sasrec"])
def test_a_tiny_model_overfits_one_batch(objective: str) -> None:
    model = tiny(objective=objective).train()
    batch = batch_of(n_users=4, length=16, seed=2)
    first, last = nip_over_training(model, batch, steps=150)
    assert last < 0.2 * first


TRANSFORMER = {  # the blocks' parameters of each paper preset (the seed's 3.2M ... 1.007B)
    "argus-3m": 3_159_040,
    "argus-30m": 31_523_840,
    "argus-130m": 125_962_240,
    "argus-1b": 1_007_165_440,
}


@pytest.mark.parametrize("name", list(TRANSFORMER))
def test_paper_presets_share_the_seeds_fixed_embedding_while_the_encoder_grows(name: str) -> None:
    with torch.device("meta"):  # no memory, even for argus-1b
        model = Argus(preset(name))
    assert count_parameters(model, transformer_only=True) == TRANSFORMER[name]
    # the unified hashed table: 2^19 rows x 256 (134M parameters), three hashes per id
    assert tuple(model.item.table.weight.shape) == (2**19, 256)
    assert model.item.coefficients.shape[1] == 3
    assert count_embedding_parameters(model) == 2**19 * 256
    d = model.cfg.d_model  # the token projection maps the 256-wide item embedding into d_model
    assert model.fusion.item.in_features == 256 and model.fusion.item.out_features == d
    assert model.nip_head[-1].out_features == 256  # the NIP head compresses to the table width
    total = count_parameters(model)
    assert total - TRANSFORMER[name] - 2**19 * 256 < 0.2 * TRANSFORMER[name] + 2e6


def test_an_item_table_narrower_than_the_model_trains_and_scores_in_its_width() -> None:
    model = tiny(d_model=64, n_heads=2, item_dim=16).train()  # as argus-1b: 2048 over 256
    batch = batch_of(n_users=4, length=16, seed=3)
    h = model(batch)
    assert h.shape[-1] == 64
    context = model.context_embedding(batch)
    queries = model.nip_query(h[:, :-1].reshape(-1, 64), context[:, 1:].reshape(-1, 64))
    outputs = model.output_embedding(batch["item_id"])
    assert queries.shape[-1] == outputs.shape[-1] == 16  # <q, o> in the table's width
    first, last = nip_over_training(model, batch, steps=100)
    assert last < 0.3 * first


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown preset 'argus-2m'"):
        preset("argus-2m")
    with pytest.raises(ValueError, match="objective"):
        ArgusConfig(objective="bert4rec")
    with pytest.raises(ValueError, match="not divisible"):
        ArgusConfig(d_model=30, n_heads=4)


def test_the_item_prior_is_the_same_for_every_user() -> None:
    """With ``item_prior`` the user vector's last coordinate is 1, so the item vector's last
    coordinate adds one prior to every user's score and the rest is the personal part."""
    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=8, item_prior=True))
    h, taste = torch.randn(5, model.cfg.d_model), torch.randn(5, 8)
    u = model.user_vector(h, taste)
    item = torch.tensor([3, 7, 11])
    v = model.item_vector(item, torch.tensor([1, 1, 2]), torch.tensor([0.0, 2.0, 5.0]))
    assert torch.equal(u[:, -1], torch.ones(5))
    scores = u @ v.T  # (users, items)
    torch.testing.assert_close(scores - u[:, :-1] @ v[:, :-1].T, v[:, -1].expand(5, 3))
    plain = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=8))
    plain.load_state_dict(model.state_dict())
    assert not torch.equal(plain.user_vector(h, taste)[:, -1], torch.ones(5))


def test_a_cold_item_gets_the_cold_prior_and_nothing_personal_whatever_its_id() -> None:
    """An item with no event yet (``cold``) is scored by the learned cold prior alone, with no
    embedding, artist or retrieval embedding: every cold item gets one vector, zero but its
    prior coordinate, the one the service scores unknown items with; the others keep their
    own. ``cold_items`` needs ``item_prior``."""
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=6, item_prior=True, cold_items=True)
    model = Argus(cfg)
    with torch.no_grad():
        model.cold_item.normal_()
    item, artist = torch.tensor([3, 7, 11, 3]), torch.tensor([1, 2, 2, 1])
    popularity = torch.zeros(4)
    cold = torch.tensor([True, True, False, False])
    with torch.no_grad():
        v = model.item_vector(item, artist, popularity, cold)
        warm = model.item_vector(item, artist, popularity)
        alone = model.cold_item_vector()
    assert alone is not None
    torch.testing.assert_close(v[0], alone)
    torch.testing.assert_close(v[1], alone)
    torch.testing.assert_close(v[2:], warm[2:])
    assert not torch.allclose(v[0], warm[0])
    assert torch.count_nonzero(alone[:-1]) == 0 and alone[-1] == model.cold_item[0]
    assert Argus(preset("argus-tiny", tower_dim=8)).cold_item_vector() is None
    with pytest.raises(ValueError, match="item_prior"):
        preset("argus-tiny", tower_dim=8, cold_items=True)


def test_the_item_tower_reads_how_often_an_item_was_not_positive() -> None:
    """With ``item_negatives`` an item's vector moves with log1p of its events that were not
    positive (and only then), and :class:`ItemPopularity` counts them per item: every event of
    the item but its positives, 0 for an item it never saw."""
    events = Events.from_arrays(
        user_id=np.array([1, 1, 2, 2]),
        item_id=np.array([5, 5, 5, 9]),
        timestamp=np.array([10, 11, 12, 13]),
        source=np.ones(4, np.int64),
        artist_id=np.full(4, -1),
        played_ratio=np.full(4, np.nan),
        liked=np.array([True, False, False, True]),
        disliked=np.array([False, True, True, False]),
    )
    popularity = ItemPopularity.of(events)
    item = torch.tensor([5, 9, 4])
    torch.testing.assert_close(popularity.log_counts(item), torch.log1p(torch.tensor([1.0, 1, 0])))
    torch.testing.assert_close(
        popularity.log_negatives(item), torch.log1p(torch.tensor([2.0, 0, 0]))
    )
    cfg = preset("argus-tiny", tower_dim=8, item_prior=True, item_negatives=True)
    model = Argus(cfg)
    artist, positives = torch.tensor([1, 1, 1]), torch.zeros(3)
    with torch.no_grad():
        none = model.item_vector(item, artist, positives, log_negatives=torch.zeros(3))
        some = model.item_vector(item, artist, positives, log_negatives=torch.ones(3))
        plain = Argus(preset("argus-tiny", tower_dim=8, item_prior=True))
        plain.load_state_dict(model.state_dict(), strict=False)
        ignored = plain.item_vector(item, artist, positives, log_negatives=torch.ones(3))
    torch.testing.assert_close(some - none, model.item_negatives.weight[:, 0].expand(3, 8))
    assert model.item_negatives.weight.abs().sum() > 0
    torch.testing.assert_close(ignored, none)


def test_items_with_too_few_events_are_scored_from_their_record() -> None:
    """With ``item_min_events`` an item seen fewer times is scored as an item never seen is,
    by the cold prior, but keeps its own counts: its vector is the record's, not its
    embedding's."""
    events = Events.from_arrays(
        user_id=np.array([1, 1, 2]),
        item_id=np.array([5, 5, 9]),
        timestamp=np.array([10, 11, 12]),
        source=np.ones(3, np.int64),
        artist_id=np.full(3, -1),
        played_ratio=np.full(3, np.nan),
        liked=np.array([True, False, True]),
        disliked=np.array([False, True, False]),
    )
    popularity = ItemPopularity.of(events)
    cfg = preset("argus-tiny", tower_dim=8, item_prior=True, cold_items=True, item_negatives=True)
    model = Argus(dataclasses.replace(cfg, item_min_events=2))
    item = torch.tensor([5, 9, 4])
    assert popularity.cold(item).tolist() == [False, False, True]
    assert popularity.cold(item, Argus(cfg)).tolist() == [False, False, True]
    assert popularity.cold(item, model).tolist() == [False, True, True]
    with torch.no_grad():
        model.cold_item.normal_()
        counts = popularity.log_counts(item), popularity.log_negatives(item)
        v = model.item_vector(item, torch.full((3,), -1), counts[0], popularity.cold(item, model))
        alone = model.cold_item_vector()
    assert alone is not None
    torch.testing.assert_close(v[2], alone)
    record = model.item_popularity.weight[:, 0] * math.log(2)  # one positive, no negative
    torch.testing.assert_close(v[1], alone + record)
    # the placed offset for items never seen moves item 4 and what the service scores an unknown
    # id with, not item 9, which has one event
    assert popularity.unseen(item).tolist() == [False, False, True]
    with torch.no_grad():
        model.unseen_offset.fill_(0.7)
        moved = popularity.item_vectors(model, item, torch.full((3,), -1))
        moved_alone = model.cold_item_vector()
    assert moved_alone is not None
    torch.testing.assert_close(moved_alone[-1], alone[-1] + 0.7)
    torch.testing.assert_close(moved[2], moved_alone)
    torch.testing.assert_close(moved[1], alone + record)
    with pytest.raises(ValueError, match="item_min_events"):
        dataclasses.replace(cfg, item_min_events=0)


def test_the_taste_shortcut_adds_the_taste_s_retrieval_score_scaled_per_coordinate() -> None:
    """With ``taste_shortcut`` u and v carry ``a * taste`` and ``e_r(i)`` beside the towers' own
    coordinates: the score gains ``sum_k a_k taste_k e_r(i)_k`` (the pooled history's own
    retrieval score, scaled), which the pairwise loss reaches through ``a`` alone."""
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=6, item_prior=True, taste_shortcut=True)
    model = Argus(cfg)
    assert cfg.ranking_dim == 14
    h, taste = torch.randn(5, cfg.d_model), torch.randn(5, 6, requires_grad=True)
    item, artist = torch.tensor([3, 7, 11]), torch.tensor([1, 1, 2])
    popularity = torch.tensor([0.0, 2.0, 5.0])
    u, v = model.user_vector(h, taste), model.item_vector(item, artist, popularity)
    assert u.shape == (5, 14) and v.shape == (3, 14)
    with torch.no_grad():
        model.taste_scale.copy_(torch.arange(6.0))
    u2 = model.user_vector(h, taste)
    e_r = model.retrieval_items(item)
    shortcut = (taste * torch.arange(6.0)) @ e_r.T
    torch.testing.assert_close(u2 @ v.T - u @ v.T, shortcut - (taste @ e_r.T))  # a: 1 -> 0..5
    (u2 @ v.T).sum().backward()
    assert taste.grad is None  # read, never trained: the retrieval space keeps its own loss
    assert model.retrieval_item.table.weight.grad is None
    assert model.taste_scale.grad is not None and float(model.taste_scale.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="pass the taste"):
        model.user_vector(h)
    with pytest.raises(ValueError, match="taste_shortcut needs the towers, a retrieval space"):
        preset("argus-tiny", tower_dim=8, taste_shortcut=True)
    with pytest.raises(ValueError, match="retrieval_trend needs a retrieval space"):
        preset("argus-tiny", tower_dim=8, retrieval_trend=7 * 86_400)


def test_the_retrieval_query_ends_with_the_trend_weight_which_starts_at_zero() -> None:
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=6, retrieval_trend=7 * 86_400)
    model = Argus(cfg)
    taste, h = torch.randn(3, 5, 6), torch.randn(3, 5, cfg.d_model)
    query = model.retrieval_query(taste, h)
    assert query.shape == (3, 5, 7)
    torch.testing.assert_close(query[..., :6], model.retrieval_head(torch.cat([taste, h], -1)))
    assert not query[..., 6].any()  # zero-initialised: trends count for nothing at first
    plain = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=6, retrieval_query="pooled"))
    assert plain.retrieval_query(taste).shape == (3, 5, 6) and not hasattr(plain, "trend_head")
    with pytest.raises(ValueError, match="reads the state: pass h"):
        model.retrieval_query(taste)


def test_with_retrieval_gap_the_query_and_its_trend_weight_read_the_time_away() -> None:
    cfg = preset(
        "argus-tiny", tower_dim=8, retrieval_dim=6, retrieval_trend=7 * DAY, retrieval_gap=True
    )
    model = Argus(cfg)
    taste, h = torch.randn(3, 5, 6), torch.randn(3, 5, cfg.d_model)
    gap = torch.tensor([0, 3600, DAY, 20 * DAY, 400 * DAY]).expand(3, 5)
    with torch.no_grad():
        model.trend_head.weight.zero_()
        model.trend_head.weight[0, -1] = 1.0  # the weight is the time away alone
        query = model.retrieval_query(taste, h, gap)
    days = gap.float() / DAY
    torch.testing.assert_close(query[..., -1], torch.log1p(days))
    torch.testing.assert_close(away(gap), torch.log1p(days))
    read = torch.cat([taste, h, torch.log1p(days)[..., None]], -1)
    torch.testing.assert_close(query[..., :6], model.retrieval_head(read))
    # unasked, the query is asked at the last event: no time away
    unasked = model.retrieval_query(taste, h)
    torch.testing.assert_close(unasked, model.retrieval_query(taste, h, 0 * gap))
    assert not torch.allclose(query[..., :6], unasked[..., :6])
    for bad in ({}, {"retrieval_dim": 6, "retrieval_query": "nip"}):
        with pytest.raises(ValueError, match="retrieval_gap needs a retrieval space's own query"):
            preset("argus-tiny", tower_dim=8, retrieval_gap=True, **bad)


def test_the_balanced_token_normalises_each_part_and_the_signed_item_follows_the_feedback() -> None:
    model = tiny()
    batch = batch_of()
    parts = model.token_parts(batch)
    assert set(parts) == {"context", "item", "feedback", "signed_item"}
    for name, part in parts.items():  # each part's own norm: unit RMS per token at init
        rms = part.pow(2).mean(-1).sqrt()
        assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3), name
    sum_of_parts = sum(parts.values(), torch.zeros(()))
    torch.testing.assert_close(model.tokens(batch), model.token_norm(sum_of_parts))
    liked = {**batch, "liked": ~batch["liked"]}  # the same items with other feedback
    changed = model.token_parts(liked)
    assert torch.equal(changed["item"], parts["item"])
    assert not torch.allclose(changed["signed_item"], parts["signed_item"])


def test_nip_scores_cosines_and_the_fp_head_adds_a_dot_term() -> None:
    model = tiny()
    h, ctx = torch.randn(5, 32), torch.randn(5, 32)
    q = model.nip_query(h, ctx)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(5))
    out = model.output_embedding(torch.arange(1, 8))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(7))
    item = torch.randn(5, 32)
    with torch.no_grad():
        mlp = model.fp_head(torch.cat([h, ctx, item], -1))
        dot = (model.fp_dot(h).view(5, 4, 32) * item[:, None]).sum(-1)
        torch.testing.assert_close(model.fp_logits(h, ctx, item), mlp + dot)
    plain = tiny(fp_dot=False, nip_cosine=False)
    assert not hasattr(plain, "fp_dot")
    assert not torch.allclose(plain.nip_query(h, ctx).norm(dim=-1), torch.ones(5))


def test_a_checkpoint_from_before_the_balanced_token_loads_as_it_was_trained(
    tmp_path: Path,
) -> None:
    from model.checkpoint import load_model, save_checkpoint

    legacy = tiny(fusion="concat", fp_dot=False, nip_cosine=False, fp_weight=1.0)
    path = save_checkpoint(tmp_path / "checkpoint.pt", legacy)
    state = torch.load(path, weights_only=True)
    for name in ("fusion", "fp_dot", "nip_cosine", "tower_taste"):  # not written back then
        del state["model_config"][name]
    torch.save(state, path)
    loaded, _ = load_model(path)
    assert loaded.cfg == legacy.cfg
    batch = batch_of()
    torch.testing.assert_close(loaded(batch), legacy(batch))


def test_towers_without_the_taste_read_the_state_alone() -> None:
    model = tiny(tower_dim=8, retrieval_dim=6, tower_taste=False, item_prior=True)
    assert not hasattr(model, "user_taste") and model.cfg.ranking_dim == 8
    h = torch.randn(4, 32)
    u = model.user_vector(h, torch.randn(4, 6))
    torch.testing.assert_close(u, model.user_vector(h, torch.randn(4, 6)))  # taste ignored
    assert (u[:, -1] == 1).all()  # the item prior's coordinate
    with pytest.raises(ValueError, match="taste_shortcut needs"):
        preset("argus-tiny", tower_dim=8, retrieval_dim=6, tower_taste=False, taste_shortcut=True)


def test_a_residual_runtime_head_starts_as_the_daily_head_and_then_adds_its_own_part() -> None:
    """With ``runtime_residual`` the runtime user vector is the daily head's plus a correction
    that starts at zero: the same vector at first, and a different one once the correction
    has learned something. The runtime loss trains the correction, never the daily head."""
    cfg = preset("argus-tiny", tower_dim=8, retrieval_dim=6, runtime_head=True, item_prior=True)
    model = Argus(dataclasses.replace(cfg, runtime_residual=True, tower_taste=True))
    h, taste = torch.randn(4, model.cfg.d_model), torch.randn(4, 6)
    with torch.no_grad():
        torch.testing.assert_close(
            model.user_vector(h, taste, runtime=True), model.user_vector(h, taste)
        )
        model.runtime_proj.weight.normal_()
        changed = model.user_vector(h, taste, runtime=True) - model.user_vector(h, taste)
        torch.testing.assert_close(changed[:, :-1], model.runtime_proj(h)[:, :-1])
    model.user_vector(h, taste, runtime=True).sum().backward()  # the runtime loss's path
    assert model.user_proj.weight.grad is None and model.user_taste.weight.grad is None
    assert model.runtime_proj.weight.grad is not None
    plain = Argus(cfg)  # without it the runtime head is a head of its own
    assert plain.runtime_proj.weight.abs().sum() > 0
