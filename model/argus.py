"""ARGUS: AutoRegressive Generative User Sequential modeling.

Khrylchenko et al., "Scaling Recommender Transformers to One Billion Parameters" (Yandex,
arXiv 2507.15994), in its "simplified ARGUS" form:

* one token per event: ``x_t = Norm(W [e_ctx(c_t); e_item(i_t); e_fb(f_t)])``;
* a causal pre-norm transformer; ``h_t`` is the state after event t;
* next-item prediction (NIP): ``q_t = MLP([h_t; e_ctx(c_{t+1})])`` scores items ``o_j = e_item(j)``;
* feedback prediction (FP): ``MLP([h_t; e_ctx(c_{t+1}); e_item(i_{t+1})])`` -> like, dislike, skip,
  played_ratio logits.

Deviations from the paper: the item embedding is a *unified hashed* table shared by items and
artists (different salts), used both as input and as NIP output embedding; the time gap enters the
context as a linear feature of ``log1p(gap)``. The token is *balanced* (:class:`TokenFusion`): each
part is projected and normalised on its own, and the item as its feedback signs it is a fourth
part. NIP scores cosines, ``cos(q, o_j) / T``. Each FP logit adds a dot term ``<W_k h_t, e_item>``.
(docs/backbone.md measures why each.) ``objective="sasrec"`` uses the same backbone with item-only
tokens and an MLP(h_t) query (the SASRec baseline).

``forward`` returns hidden states; the heads are separate methods so that training, evaluation and
export each call only what they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.contract import DAY, HOUR
from model.data.events import FEEDBACK, SKIP_THRESHOLD

_P = 2_147_483_647  # 2^31 - 1, the modulus of the hash family

# The modules fine-tuning adds to a pretrained backbone (they start from scratch), by part.
PARTS: dict[str, tuple[str, ...]] = {
    "towers": (
        "user_proj",
        "item_mlp",
        "item_popularity",
        "item_negatives",
        "user_taste",
        "item_taste",
        "runtime_proj",
        "runtime_taste",
        "taste_scale",
        "cold_item",
        "unseen_offset",
        "readout",
    ),
    "retrieval": ("retrieval_item", "retrieval_head", "trend_head"),
}
# The FP head's score of an item: like and played_ratio for it, skip and dislike against it
# (logits in FEEDBACK order), as the diagnostics rank by it.
FP_SCORE_SIGNS = (1.0, -1.0, -1.0, 1.0)


@dataclass(frozen=True)
class ArgusConfig:
    d_model: int = 256  # transformer width d
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4  # MLP hidden width = mlp_ratio * d
    dropout: float = 0.0
    max_len: int = 2048  # events per history chunk
    hash_rows: int = 2**19  # rows of the unified hashed embedding table
    n_hash: int = 3  # hash functions per id, summed
    item_dim: int = 0  # width of item embeddings; 0 means d_model
    n_sources: int = 16  # source ids 0..n_sources-1 (larger ones share the last row)
    use_artist: bool = True  # add the artist id through the same table (another salt)
    objective: str = "argus"  # "argus" (NIP + FP) or "sasrec" (positives only, no context/FP)
    fp_weight: float = 0.2  # lambda in L = L_nip + lambda * L_fp (at 1 the FP loss's pull on
    # the shared backbone keeps the item embeddings from forming)
    n_uniform_negatives: int = 1024  # uniform samples added to the in-batch negatives
    init_temperature: float = 0.05  # T = exp(tau), learned, clipped to [0.01, 100]
    hash_seed: int = 0
    tower_dim: int = 0  # width of the two-tower vectors u, v (fine-tuning); 0: no towers
    retrieval_dim: int = 0  # width of the retrieval space (fine-tuning); 0: none
    runtime_head: bool = False  # a second user projection, fine-tuned for the runtime lag (0)
    # the runtime head is the daily head (its weights read, not trained, by the runtime loss)
    # plus a correction of its own that starts at zero: it begins where the daily head is
    runtime_residual: bool = False
    item_prior: bool = False  # u's last coordinate is 1: v's last is an additive item prior
    taste_shortcut: bool = False  # u and v also carry (a * taste, e_r): a learned scale, no mixing
    tower_taste: bool = True  # the towers read the retrieval space's pooled taste (T_u, T_i)
    retrieval_trend: int = 0  # seconds: the retrieval score adds w(taste) * log1p(the item's
    # positive events in this window before the day); 0: none
    # with retrieval_trend: the score also adds w'(taste) * log1p(the item's positive events of
    # all time before the day), so a query can lean on what is popular as well as on what is new
    retrieval_popularity: bool = False
    # the retrieval query also reads how long the user has been away: log1p(days since their
    # last event) at the moment it is asked (the export's cut-off for stored vectors, 0 for the
    # runtime encoder's), and fine-tuning asks it when the next event came
    retrieval_gap: bool = False
    retrieval_trains_state: bool = False  # the retrieval loss reaches the backbone through h
    retrieval_query: str = "state"  # what answers /candidates: "state" (the retrieval space's
    # query of the transformer's state beside the pooled history), "pooled" (of the pooled
    # history alone; the towers' when there is no retrieval space) or "nip" (the NIP head's
    # query for the next event against the output embeddings, as in the paper)
    nip_gap: int = DAY  # "nip": the next event is taken to come this many seconds after the last
    # token fusion: "balanced" (each part projected to d and normalised, then summed, so none
    # drowns another; with the item as its feedback signs it as a fourth part) or "concat" (one
    # linear map of the concatenated parts, the earlier checkpoints' fusion)
    fusion: str = "balanced"
    fp_dot: bool = True  # the FP head adds <W_k h, e_item> per output to its MLP's logits
    nip_cosine: bool = True  # NIP scores cos(q, e_item) / T (both L2-normalised), not <q, e> / T
    # an item with no event before the day is scored by one learned prior (and its counts),
    # with no personal part (the service then scores items its catalog lacks, as fine-tuning
    # scored them); off: such items have no score
    cold_items: bool = False
    # the item tower also reads log1p of the item's events before the day that were not
    # positive (hates, skips): a record of how often it disappointed, beside its positives
    item_negatives: bool = False
    # with cold_items: an item is scored from its own embedding once it has this many events
    # before the day; below that, as a cold item with its counts (an embedding trained on one
    # or two events is noise, and the counts are what is known of the item)
    item_min_events: int = 1

    def __post_init__(self) -> None:
        if self.objective not in ("argus", "sasrec"):
            raise ValueError(f"objective must be 'argus' or 'sasrec', got {self.objective!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.taste_shortcut and not (self.tower_dim and self.retrieval_dim and self.tower_taste):
            raise ValueError(
                "taste_shortcut needs the towers, a retrieval space and tower_taste (tower_dim, "
                f"retrieval_dim > 0), got {self.tower_dim}, {self.retrieval_dim}, "
                f"{self.tower_taste}"
            )
        if self.retrieval_query not in ("state", "pooled", "nip"):
            raise ValueError(
                f"retrieval_query must be 'state', 'pooled' or 'nip', got {self.retrieval_query!r}"
            )
        if self.retrieval_query == "nip" and (self.objective != "argus" or self.nip_gap < 0):
            raise ValueError(
                "retrieval_query='nip' needs the argus objective (its query reads the next "
                f"event's context) and nip_gap >= 0, got {self.objective!r}, {self.nip_gap}"
            )
        if self.cold_items and not (self.tower_dim and self.item_prior):
            raise ValueError(
                "cold_items needs the towers and item_prior (the cold level is a prior), got "
                f"tower_dim={self.tower_dim}, item_prior={self.item_prior}"
            )
        if self.item_min_events < 1:
            raise ValueError(f"item_min_events must be >= 1, got {self.item_min_events}")
        if self.fusion not in ("balanced", "concat"):
            raise ValueError(f"fusion must be 'balanced' or 'concat', got {self.fusion!r}")
        if self.retrieval_trend < 0 or (self.retrieval_trend and not self.retrieval_dim):
            raise ValueError(
                "retrieval_trend needs a retrieval space (retrieval_dim > 0) and a window >= 0, "
                f"got retrieval_dim={self.retrieval_dim}, retrieval_trend={self.retrieval_trend}"
            )
        if self.retrieval_popularity and not self.retrieval_trend:
            raise ValueError(
                "retrieval_popularity needs retrieval_trend (the trend head weighs both columns), "
                f"got retrieval_trend={self.retrieval_trend}"
            )
        if self.retrieval_gap and (not self.retrieval_dim or self.retrieval_query == "nip"):
            raise ValueError(
                "retrieval_gap needs a retrieval space's own query (retrieval_dim > 0, "
                f"retrieval_query 'state' or 'pooled'), got retrieval_dim={self.retrieval_dim}, "
                f"retrieval_query={self.retrieval_query!r}"
            )

    @property
    def embedding_dim(self) -> int:
        return self.item_dim or self.d_model

    @property
    def ranking_dim(self) -> int:
        """Width of the ranking vectors u and v: the towers' own, and with ``taste_shortcut``
        the retrieval space's beside them."""
        return self.tower_dim + (self.retrieval_dim if self.taste_shortcut else 0)


# The paper's presets share the seed's item embedding: a unified hashed table of 2^19 rows x 256
# (three hashes per item, 134M parameters), fixed while the encoder grows. Where d_model is wider,
# the token projection W maps the 256-wide item embedding into d_model, and the NIP head's MLP
# compresses h_t back to 256: queries and output embeddings live in the table's width.
SEED_EMBEDDING = {"hash_rows": 2**19, "item_dim": 256}

PRESETS: dict[str, dict[str, int]] = {
    "argus-tiny": {"d_model": 32, "n_layers": 2, "n_heads": 2, "hash_rows": 4096, "max_len": 64},
    "argus-3m": {"d_model": 256, "n_layers": 4, "n_heads": 4, **SEED_EMBEDDING},
    "argus-30m": {"d_model": 512, "n_layers": 10, "n_heads": 8, **SEED_EMBEDDING},
    "argus-130m": {"d_model": 1024, "n_layers": 10, "n_heads": 16, **SEED_EMBEDDING},
    "argus-1b": {"d_model": 2048, "n_layers": 20, "n_heads": 16, **SEED_EMBEDDING},
}


def preset(name: str, **overrides: object) -> ArgusConfig:
    """The named preset with ``overrides`` applied; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return ArgusConfig(**{**PRESETS[name], **overrides})  # type: ignore[arg-type]


class HashedEmbedding(nn.Module):
    """One table looked up with ``n_hash`` hash functions per id; the rows are summed.

    ``h_k(x) = ((a_k * lo + b_k * hi + c_k) mod P) mod rows`` with ``x = hi * 2^31 + lo``: exact
    in int64 (no overflow) for any int64 id, so unseen ids embed like any other. Each salt (item,
    artist) has its own hash functions, so the same number names different rows.
    """

    coefficients: torch.Tensor  # (n_salts, n_hash, 3) int64 hash coefficients

    def __init__(self, rows: int, dim: int, n_hash: int, n_salts: int, seed: int) -> None:
        super().__init__()
        self.rows = rows
        self.table = nn.Embedding(rows, dim)
        nn.init.normal_(self.table.weight, std=1.0 / math.sqrt(n_hash * dim))
        generator = torch.Generator().manual_seed(seed)
        coefficients = torch.randint(1, _P, (n_salts, n_hash, 3), generator=generator)
        self.register_buffer("coefficients", coefficients, persistent=True)

    def rows_of(self, ids: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """(..., n_hash) int64 table rows of each id."""
        hi = torch.div(ids, 2**31, rounding_mode="floor")
        lo = ids - hi * 2**31
        a, b, c = self.coefficients[salt].unbind(-1)  # (n_hash,) each
        hashed = (lo.unsqueeze(-1) * a + torch.remainder(hi, _P).unsqueeze(-1) * b + c) % _P
        return hashed % self.rows

    def forward(self, ids: torch.Tensor, salt: int = 0) -> torch.Tensor:
        """(...) int64 ids -> (..., dim) embeddings."""
        return self.table(self.rows_of(ids, salt)).sum(-2)


class ContextEmbedding(nn.Module):
    """e_ctx: source + hour of day + day of week + log time gap to the previous event."""

    def __init__(self, n_sources: int, dim: int) -> None:
        super().__init__()
        self.n_sources = n_sources
        self.source = nn.Embedding(n_sources, dim)
        self.hour = nn.Embedding(24, dim)
        self.weekday = nn.Embedding(7, dim)
        self.gap = nn.Linear(1, dim)

    def forward(
        self, source: torch.Tensor, timestamp: torch.Tensor, before: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) source and timestamp (seconds) -> (B, L, dim). ``before`` (B,): the time of
        the event before each row's first (a cached history's last); without it the first
        event's gap is 0, as at the start of a window."""
        first = timestamp[:, :1] if before is None else before[:, None]
        previous = torch.cat([first, timestamp[:, :-1]], dim=1)  # (ONNX has no diff)
        gap = (timestamp - previous).clamp(min=0)  # (B, L)
        hour = torch.remainder(timestamp, DAY) // HOUR
        weekday = torch.remainder(timestamp // DAY + 3, 7)  # 0 = Monday
        return (
            self.source(source.clamp(0, self.n_sources - 1))
            + self.hour(hour)
            + self.weekday(weekday)
            + self.gap(torch.log1p(gap.float()).unsqueeze(-1))
        )


class FeedbackEmbedding(nn.Module):
    """e_fb: like, dislike and skip flags plus a projection of played_ratio (0 when unknown)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.flags = nn.Embedding(2 * 4, dim)  # (flag, value) for like, dislike, skip, listened
        self.ratio = nn.Linear(1, dim)

    def forward(
        self, liked: torch.Tensor, disliked: torch.Tensor, played_ratio: torch.Tensor
    ) -> torch.Tensor:
        """(B, L) feedback -> (B, L, dim)."""
        listened = ~torch.isnan(played_ratio)
        ratio = torch.where(listened, played_ratio, torch.zeros_like(played_ratio))
        skipped = listened & (ratio < SKIP_THRESHOLD)
        flags = torch.stack([liked, disliked, skipped, listened], -1).long()  # (B, L, 4)
        rows = flags + 2 * torch.arange(4, device=flags.device)
        return self.flags(rows).sum(-2) + self.ratio(ratio.clamp(0, 1).unsqueeze(-1))


class TokenFusion(nn.Module):
    """The balanced token: each part projected to d and normalised on its own, then summed, so
    that no part drowns another whatever the scale of its embedding. Beside the context, the
    item and the feedback, a fourth part is the item as its feedback signs it,
    ``e_item * S e_fb`` (one gain per item coordinate and feedback state): preference is the
    product of the two, and a sum of parts cannot carry a product into attention's pooling."""

    PARTS = ("context", "item", "feedback", "signed_item")

    def __init__(self, d: int, e: int) -> None:
        super().__init__()
        self.context = nn.Linear(d, d)
        self.item = nn.Linear(e, d)
        self.feedback = nn.Linear(d, d)
        self.sign = nn.Linear(d, e)  # S: the feedback's gain on each item coordinate
        self.signed_item = nn.Linear(e, d)
        self.norms = nn.ModuleDict({name: nn.LayerNorm(d) for name in self.PARTS})

    def forward(
        self, context: torch.Tensor, item: torch.Tensor, fb: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """(B, L, D), (B, L, E), (B, L, D) -> each part's normalised (B, L, D)."""
        parts = {
            "context": self.context(context),
            "item": self.item(item),
            "feedback": self.feedback(fb),
            "signed_item": self.signed_item(item * self.sign(fb)),
        }
        return {name: self.norms[name](x) for name, x in parts.items()}


class Block(nn.Module):
    """Pre-norm causal self-attention and MLP."""

    def __init__(self, cfg: ArgusConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v, each (B, H, T, D / H)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        shape = (b, t, self.n_heads, d // self.n_heads)
        return (
            q.view(shape).transpose(1, 2),
            k.view(shape).transpose(1, 2),
            v.view(shape).transpose(1, 2),
        )

    def finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The residual around attention's output ``y`` (B, H, T, Dh), then the MLP's."""
        b, t, d = x.shape
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.mlp(self.norm2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(x)[0]

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The block's output (B, T, D) and its keys and values (B, H, T, Dh)."""
        q, k, v = self.heads(x)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, H, T, Dh)
        return self.finish(x, y), k, v

    def step(
        self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` (B, S, D): S new tokens after P cached ones (``past_k``/``past_v``, (B, H, P,
        Dh)) -> their outputs and the present keys and values (B, H, P + S, Dh). New token s
        attends to every cached token and to new tokens up to itself, as in :meth:`forward`."""
        q, k, v = self.heads(x)
        keys, values = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        new, total = x.shape[1], keys.shape[2]
        position = torch.arange(new, device=x.device) + (total - new)  # of each new token
        allowed = torch.arange(total, device=x.device)[None, :] <= position[:, None]  # (S, P+S)
        y = F.scaled_dot_product_attention(q, keys, values, attn_mask=allowed)
        return self.finish(x, y), keys, values


def positive_events(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L) bool: real (not padding) positive events, as :attr:`Events.positive` defines them
    (not disliked, and liked or played past the skip threshold)."""
    item = batch["item_id"]
    real = torch.arange(item.shape[1], device=item.device) < batch["lengths"][:, None]
    ratio = batch["played_ratio"]
    listened = ~torch.isnan(ratio) & (torch.nan_to_num(ratio) >= SKIP_THRESHOLD)
    return real & ~batch["disliked"] & (batch["liked"] | listened)


def away(gap: torch.Tensor) -> torch.Tensor:
    """(...) seconds since a user's last event -> (...) log1p(days): what the retrieval query
    reads of it (0 within a session, about 0.7 after a day, 3 after three weeks)."""
    return torch.log1p(gap.clamp(min=0).float() / DAY)


def prior_columns(cfg: ArgusConfig) -> int:
    """The columns that end the retrieval space's vectors after its ``retrieval_dim``: log1p of
    the item's positives in the trend window (last) and, with ``retrieval_popularity``, of all
    its positives (before it), each met by the query's weight for it."""
    return bool(cfg.retrieval_trend) + cfg.retrieval_popularity


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class Argus(nn.Module):
    """The ARGUS backbone with its NIP and FP heads. See the module docstring."""

    unseen_offset: torch.Tensor  # a buffer, with cold_items
    readout: torch.Tensor  # a buffer, with towers: (slope, ridge) of model.readout

    def __init__(self, cfg: ArgusConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, e = cfg.d_model, cfg.embedding_dim
        self.item = HashedEmbedding(cfg.hash_rows, e, cfg.n_hash, n_salts=2, seed=cfg.hash_seed)
        self.argus = cfg.objective == "argus"
        if self.argus:
            self.context = ContextEmbedding(cfg.n_sources, d)
            self.feedback = FeedbackEmbedding(d)
            if cfg.fusion == "balanced":
                self.fusion = TokenFusion(d, e)
            else:
                self.token = nn.Linear(d + e + d, d)
            self.nip_head = _mlp(d + d, d, e)
            self.fp_head = _mlp(d + d + e, d, len(FEEDBACK))  # one logit per FEEDBACK name
            if cfg.fp_dot:  # <W_k h, e_item>: an MLP of a concatenation learns a product poorly
                self.fp_dot = nn.Linear(d, len(FEEDBACK) * e, bias=False)
        else:
            self.token = nn.Linear(e, d)
            self.nip_head = _mlp(d, d, e)
        self.token_norm = nn.LayerNorm(d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.final_norm = nn.LayerNorm(d)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))
        if cfg.tower_dim:  # u = P_u h, v = MLP(e_item)
            self.user_proj = nn.Linear(d, cfg.tower_dim, bias=False)
            self.item_mlp = _mlp(e, d, cfg.tower_dim)
            self.item_popularity = nn.Linear(1, cfg.tower_dim, bias=False)  # of log1p(positives)
            # the feedback readout's slope and ridge (model.readout): fitted after fine-tuning
            # on held-out days, off (ridge inf) until then
            self.register_buffer("readout", torch.tensor([0.0, math.inf]))
            if cfg.item_negatives:  # of log1p(events that were not positive)
                self.item_negatives = nn.Linear(1, cfg.tower_dim, bias=False)
            if cfg.cold_items:  # the prior of any item the catalog has not seen yet
                self.cold_item = nn.Parameter(torch.zeros(1))
                # added to it for an item with no event at all, apart from those with a few:
                # not trained, placed after fine-tuning (model.calibration); 0 until then
                self.register_buffer("unseen_offset", torch.zeros(1))
        if cfg.retrieval_dim:  # the retrieval space: its own item table, a pooled-history query
            r = cfg.retrieval_dim
            self.retrieval_item = HashedEmbedding(
                cfg.hash_rows, r, cfg.n_hash, n_salts=1, seed=cfg.hash_seed + 1
            )
            reads_state = cfg.retrieval_query == "state"
            away = 1 if cfg.retrieval_gap else 0  # the time since the last event, one column
            self.retrieval_head = _mlp(r + (d if reads_state else 0) + away, d, r)
            if cfg.retrieval_trend:  # w(taste): how much this user follows what is trending
                # (and, with retrieval_popularity, w'(taste) before it: what is popular)
                self.trend_head = nn.Linear(r + away, 1 + cfg.retrieval_popularity)
                nn.init.zeros_(self.trend_head.weight)
                nn.init.zeros_(self.trend_head.bias)
            if cfg.tower_dim and cfg.tower_taste:  # the towers read its taste (never train it)
                self.user_taste = nn.Linear(r, cfg.tower_dim, bias=False)
                self.item_taste = nn.Linear(r, cfg.tower_dim, bias=False)
                if cfg.taste_shortcut:  # <a * taste, e_r(i)>: one scale per coordinate
                    self.taste_scale = nn.Parameter(torch.ones(r))
        if cfg.tower_dim and cfg.runtime_head:  # u0 = P_0 h (+ T_0 taste): the lag-0 user tower
            self.runtime_proj = nn.Linear(d, cfg.tower_dim, bias=False)
            if cfg.retrieval_dim and cfg.tower_taste:
                self.runtime_taste = nn.Linear(cfg.retrieval_dim, cfg.tower_dim, bias=False)
            if cfg.runtime_residual:
                for head in (self.runtime_proj, getattr(self, "runtime_taste", None)):
                    if head is not None:
                        nn.init.zeros_(head.weight)

    @property
    def has_towers(self) -> bool:
        return self.cfg.tower_dim > 0

    # -- embeddings ------------------------------------------------------------------------------

    def item_embedding(
        self, item_id: torch.Tensor, artist_id: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(...) ids -> (..., E) e_item; artist ids < 0 (unknown) add nothing."""
        emb = self.item(item_id, salt=0)
        if artist_id is not None and self.cfg.use_artist:
            known = (artist_id >= 0).unsqueeze(-1)
            emb = emb + torch.where(known, self.item(artist_id.clamp(min=0), salt=1), 0.0)
        return emb

    @torch.no_grad()
    def warm_start_items(
        self,
        item_id: torch.Tensor,
        artist_id: torch.Tensor,
        targets: torch.Tensor,
        *,
        steps: int = 50,
        retrieval: bool = False,
    ) -> float:
        """Move the hashed table's rows so that ``e_item`` of these (N,) items (with their
        artists) approaches the (N, E) ``targets``: least squares over the rows they use, by
        averaged residual steps (each row takes the mean of its items' residuals, split over
        the rows each item sums). Rows no item uses keep their values. Returns the relative
        residual ``|targets - e_item| / |targets|`` at the end. ``retrieval``: the retrieval
        space's table instead (its items' ``e_r``, no artist)."""
        space = self.retrieval_item if retrieval else self.item

        def embed(item_id: torch.Tensor, artist_id: torch.Tensor) -> torch.Tensor:
            if retrieval:
                return self.retrieval_items(item_id)
            return self.item_embedding(item_id, artist_id)

        table = space.table.weight
        rows = [space.rows_of(item_id, salt=0)]
        if self.cfg.use_artist and not retrieval:
            known = artist_id >= 0
            artist_rows = self.item.rows_of(artist_id.clamp(min=0), salt=1)
            rows.append(torch.where(known[:, None], artist_rows, -1))
        slots = torch.cat(rows, dim=1)  # (N, S); -1: no row (an unknown artist)
        used = slots >= 0
        share = 1.0 / used.sum(1, keepdim=True)  # each item's residual, split over its rows
        flat = slots[used]
        hits = torch.bincount(flat, minlength=len(table)).clamp(min=1).unsqueeze(1).float()
        for _ in range(steps):
            residual = targets - embed(item_id, artist_id)
            spread = (residual.unsqueeze(1) * share.unsqueeze(2)).expand(-1, slots.shape[1], -1)
            delta = torch.zeros_like(table).index_add_(0, flat, spread[used])
            table.add_(delta / hits)
        residual = targets - embed(item_id, artist_id)
        return float(residual.norm() / targets.norm())

    def context_embedding(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, D) e_ctx of every event (argus objective only)."""
        return self.context(batch["source"], batch["timestamp"])

    # -- backbone --------------------------------------------------------------------------------

    def forward(
        self, batch: dict[str, torch.Tensor], context: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden states ``h`` (B, L, D) of padded event features (B, L); causal over L.

        ``context`` is :meth:`context_embedding` of the batch when the caller already has it.
        """
        x = self.tokens(batch, context)
        for block in self.blocks:
            x = block(x)
        return self.final_norm(x)

    def tokens(
        self,
        batch: dict[str, torch.Tensor],
        context: torch.Tensor | None = None,
        before: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L, D) normalised event tokens ``x_t``; ``before`` (B,): the time of the event
        before each row (a cached history's last), for the first event's gap."""
        parts = self.token_parts(batch, context, before)
        bias = self.token.bias if hasattr(self, "token") else 0.0
        return self.token_norm(sum(parts.values(), bias))

    def token_parts(
        self,
        batch: dict[str, torch.Tensor],
        context: torch.Tensor | None = None,
        before: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Each part's (B, L, D) contribution to the token before its norm: ``context``,
        ``item``, ``feedback`` and with the balanced fusion ``signed_item`` (the item alone for
        SASRec); their sum (plus the concatenating fusion's bias) is the token."""
        item = self.item_embedding(batch["item_id"], batch.get("artist_id"))  # (B, L, E)
        if not self.argus:
            return {"item": F.linear(item, self.token.weight)}
        if context is None:
            context = self.context(batch["source"], batch["timestamp"], before)  # (B, L, D)
        fb = self.feedback(batch["liked"], batch["disliked"], batch["played_ratio"])
        if self.cfg.fusion == "balanced":
            return self.fusion(context, item, fb)
        d, e = self.cfg.d_model, self.cfg.embedding_dim
        w_ctx, w_item, w_fb = self.token.weight.split([d, e, d], dim=1)
        return {
            "context": F.linear(context, w_ctx),
            "item": F.linear(item, w_item),
            "feedback": F.linear(fb, w_fb),
        }

    # -- incremental encoding (the service's key/value cache) -------------------------------------

    def encode_cached(
        self,
        batch: dict[str, torch.Tensor],
        past_keys: torch.Tensor | None = None,
        past_values: torch.Tensor | None = None,
        before: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` that also returns every layer's keys and values, each
        (n_layers, B, H, L, D / H): the cache a later call continues from. With ``past_keys``
        and ``past_values`` (n_layers, B, H, P, D / H) of P cached events and ``before`` (B,),
        the last cached event's time, the batch's events come after them: their states
        (B, S, D) and the present keys and values (.., P + S, ..), equal to one call over the
        whole history (up to rounding)."""
        x, keys, values = self.tokens(batch, before=before), [], []
        blocks: list[Block] = list(self.blocks)  # type: ignore[arg-type]
        for layer, block in enumerate(blocks):
            if past_keys is None or past_values is None:
                x, k, v = block.attend(x)
            else:
                x, k, v = block.step(x, past_keys[layer], past_values[layer])
            keys.append(k)
            values.append(v)
        return self.final_norm(x), torch.stack(keys), torch.stack(values)

    # -- heads -----------------------------------------------------------------------------------

    def nip_query(self, h: torch.Tensor, next_context: torch.Tensor | None) -> torch.Tensor:
        """(N, D) states (+ (N, D) context of the next event) -> (N, E) queries ``q``, unit
        length with ``nip_cosine``; an item's NIP logit is ``<q, output_embedding> / T``."""
        if self.argus:
            assert next_context is not None, "the argus objective conditions on the next context"
            q = self.nip_head(torch.cat([h, next_context], dim=-1))
        else:
            q = self.nip_head(h)
        return F.normalize(q, dim=-1) if self.cfg.nip_cosine else q

    def output_embedding(self, item_id: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., E) the NIP head's output embeddings: ``e_item`` of the item alone
        (no artist, so any candidate id is scored the same way), unit length with
        ``nip_cosine``."""
        e = self.item(item_id, salt=0)
        return F.normalize(e, dim=-1) if self.cfg.nip_cosine else e

    def next_query(
        self,
        h: torch.Tensor,
        source: torch.Tensor,
        timestamp: torch.Tensor,
        at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, D) states after each history's last event, (N,) that event's source and time ->
        (N, E) the NIP query for the next event, taken to come from the same source at ``at``
        (N,) seconds, or without it ``nip_gap`` seconds after the last event. The context is
        embedded with its real gap to the last event (``before``): a one-column call would see
        a gap of 0, which training never shows at a query position."""
        after = timestamp + self.cfg.nip_gap if at is None else torch.maximum(at, timestamp)
        context = self.context(source[:, None], after[:, None], before=timestamp)[:, 0]
        return self.nip_query(h, context)

    def fp_logits(
        self, h: torch.Tensor, next_context: torch.Tensor, next_item: torch.Tensor
    ) -> torch.Tensor:
        """(N, D), (N, D), (N, E) -> (N, 4) logits of like, dislike, skip, played_ratio: the
        MLP of ``[h; e_ctx; e_item]``, plus ``<W_k h, e_item>`` for each output k (``fp_dot``)."""
        logits = self.fp_head(torch.cat([h, next_context, next_item], dim=-1))
        if self.cfg.fp_dot:
            q = self.fp_dot(h).unflatten(-1, (len(FEEDBACK), next_item.shape[-1]))  # (N, 4, E)
            logits = logits + (q * next_item.unsqueeze(-2)).sum(-1)
        return logits

    def pretraining_heads(self) -> list[nn.Module]:
        """The NIP and FP heads (fine-tuning freezes them)."""
        names = ("nip_head", "fp_head", "fp_dot")
        return [getattr(self, name) for name in names if hasattr(self, name)]

    @property
    def has_runtime_head(self) -> bool:
        return hasattr(self, "runtime_proj")

    def user_vector(
        self, h: torch.Tensor, taste: torch.Tensor | None = None, *, runtime: bool = False
    ) -> torch.Tensor:
        """(..., D) states (and (..., R) :meth:`taste` there, for a model with a retrieval
        space) -> (..., ranking_dim) user vectors ``u = P_u h (+ T_u taste)``; ``runtime``:
        the lag-0 head's (``P_0``, ``T_0``) when the model has one; with ``runtime_residual``
        that is ``P_u + P_0`` (``P_u`` read, not trained, there). With ``taste_shortcut``
        ``a * taste`` comes first (against the item's ``e_r``: the pooled history's own retrieval
        score, scaled per coordinate by the learned ``a``; a bilinear ``T_u``/``T_i`` pair
        learns it too slowly from scratch). With ``item_prior`` the last coordinate is 1, so the
        item vector's last coordinate adds the same prior for every user (popularity and
        quality, learned), apart from the personal part."""
        runtime = runtime and self.has_runtime_head
        residual = runtime and self.cfg.runtime_residual
        u = (self.runtime_proj if runtime else self.user_proj)(h)
        if residual:  # the daily head's weights are read, not trained, by the runtime loss
            u = u + F.linear(h, self.user_proj.weight.detach())
        if taste is not None and hasattr(self, "user_taste"):
            u = u + (self.runtime_taste if runtime else self.user_taste)(taste.detach())
            if residual:
                u = u + F.linear(taste.detach(), self.user_taste.weight.detach())
        if self.cfg.taste_shortcut:
            if taste is None:
                raise ValueError("this model's user vector has a taste shortcut: pass the taste")
            u = torch.cat([self.taste_scale * taste.detach(), u], dim=-1)
        if self.cfg.item_prior:  # <u, v> = personal part + v's last coordinate, the item prior
            u = torch.cat([u[..., :-1], torch.ones_like(u[..., -1:])], dim=-1)
        return u

    def item_vector(
        self,
        item_id: torch.Tensor,
        artist_id: torch.Tensor | None = None,
        log_popularity: torch.Tensor | None = None,
        cold: torch.Tensor | None = None,
        log_negatives: torch.Tensor | None = None,
        unseen: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(...) ids (their artists, log1p of their positive events) -> (..., ranking_dim) item
        vectors ``v = MLP(e_item) + p log_popularity (+ n log_negatives) (+ T_i e_r)`` (after
        ``e_r`` with ``taste_shortcut``); score = <u, v>. ``cold``: a (...) bool mask of items
        with no event yet (:meth:`is_cold`), whose ``MLP(e_item)`` and ``e_r`` give way to the
        learned cold prior alone, when the model has one: nothing personal is known of such an
        item, only its counts. ``log_negatives``: log1p of the items' events that were not
        positive, read when the model has ``item_negatives``. ``unseen``: a (...) bool mask of
        the cold items with no event at all, whose prior also gets the placed
        ``unseen_offset``."""
        v = self.item_mlp(self.item_embedding(item_id, artist_id))
        cold = cold if cold is not None and hasattr(self, "cold_item") else None
        if cold is not None:  # no personal part: the learned cold prior in the last coordinate
            level = F.pad(self.cold_item.to(v.dtype), (v.shape[-1] - 1, 0))
            v = torch.where(cold.unsqueeze(-1), level, v)
            if unseen is not None:
                offset = F.pad(self.unseen_offset.to(v.dtype), (v.shape[-1] - 1, 0))
                v = v + unseen.unsqueeze(-1) * offset
        if log_popularity is not None:
            v = v + self.item_popularity(log_popularity.unsqueeze(-1))
        if log_negatives is not None and hasattr(self, "item_negatives"):
            v = v + self.item_negatives(log_negatives.unsqueeze(-1))
        if hasattr(self, "item_taste"):
            e_r = self.retrieval_item(item_id).detach()
            if cold is not None:
                e_r = torch.where(cold.unsqueeze(-1), 0.0, e_r)
            v = v + self.item_taste(e_r)
            if self.cfg.taste_shortcut:
                v = torch.cat([e_r, v], dim=-1)
        return v

    def is_cold(self, events: torch.Tensor) -> torch.Tensor:
        """(...) bool: items with these numbers of events before the day that are scored from
        the cold embedding (fewer than ``item_min_events``)."""
        return events < self.cfg.item_min_events

    def cold_item_vector(self) -> torch.Tensor | None:
        """(ranking_dim,) the item vector of an item with no event (what the service scores an
        item its catalog lacks with); None for a model without the cold embedding."""
        if not hasattr(self, "cold_item"):
            return None
        device = self.cold_item.device
        none = torch.zeros(1, dtype=torch.int64, device=device)
        zero = torch.zeros(1, device=device)
        cold = torch.ones(1, dtype=torch.bool, device=device)
        vector = self.item_vector(none, none - 1, zero, cold, log_negatives=zero, unseen=cold)
        return vector.squeeze(0)

    @property
    def has_retrieval(self) -> bool:
        return self.cfg.retrieval_dim > 0

    def retrieval_queries(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, R') retrieval query after each event (:meth:`retrieval_query` of the taste
        and the state there). Padding (beyond ``lengths``) never reaches a real position."""
        h = self(batch) if self.reads_state else None
        return self.retrieval_query(self.taste(batch), h)

    @property
    def reads_state(self) -> bool:
        """Whether the retrieval query reads the transformer's state (``"state"``)."""
        return self.has_retrieval and self.cfg.retrieval_query == "state"

    def retrieval_query(
        self, taste: torch.Tensor, h: torch.Tensor | None = None, gap: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(..., R) tastes (and (..., D) states, when the query reads them) -> (..., R')
        retrieval queries: an MLP of ``[taste; h]`` (a history with no positive yet has a taste
        of zeros; the state is read, not trained, by the retrieval loss unless
        ``retrieval_trains_state``) and, with
        ``retrieval_trend``, its trend weight ``w(taste)`` last, which meets
        the item's log1p(positives in the trend window) (:meth:`retrieval_items` leaves that
        column to its caller: it depends on the day), and with ``retrieval_popularity`` the
        popularity weight before it, which meets log1p(all the item's positives before the
        day). With ``retrieval_gap`` all also read
        :func:`away` of ``gap`` (...) seconds since the user's last event (default 0)."""
        parts = [taste]
        if self.reads_state:
            if h is None:
                raise ValueError("this model's retrieval query reads the state: pass h")
            parts.append(h if self.cfg.retrieval_trains_state else h.detach())
        if self.cfg.retrieval_gap:
            gap = torch.zeros(taste.shape[:-1], device=taste.device) if gap is None else gap
            parts.append(away(gap).unsqueeze(-1))
        query = self.retrieval_head(torch.cat(parts, dim=-1))
        if self.cfg.retrieval_trend:
            trend_input = torch.cat([taste, parts[-1]], -1) if self.cfg.retrieval_gap else taste
            query = torch.cat([query, self.trend_head(trend_input)], dim=-1)
        return query

    def taste(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, L, R) mean retrieval embedding of the row's positive events so far (zeros before
        the first): the pooled history the retrieval query reads."""
        total, count = self.taste_sums(batch)
        return total / count.clamp(min=1.0)[..., None]

    def taste_sums(
        self,
        batch: dict[str, torch.Tensor],
        past_sum: torch.Tensor | None = None,
        past_count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, R) sum of the retrieval embeddings of the row's positive events so far and
        (B, L) their number, after a cached history's ``past_sum`` (B, R) and ``past_count``
        (B,): :meth:`taste` is their ratio."""
        item = batch["item_id"]
        positive = positive_events(batch).float()
        total = torch.cumsum(self.retrieval_item(item) * positive[..., None], dim=1)
        count = torch.cumsum(positive, dim=1)
        if past_sum is not None and past_count is not None:
            total, count = total + past_sum[:, None, :], count + past_count[:, None]
        return total, count

    def retrieval_items(self, item_id: torch.Tensor) -> torch.Tensor:
        """(...) ids -> (..., R) item vectors of the retrieval space; score = <query, item>."""
        return self.retrieval_item(item_id)

    def temperature(self) -> torch.Tensor:
        """T = exp(tau), clipped to [0.01, 100]."""
        return self.log_temperature.exp().clamp(0.01, 100.0)


def count_parameters(model: nn.Module, *, transformer_only: bool = False) -> int:
    """Number of parameters; ``transformer_only`` counts the blocks alone (embeddings excluded)."""
    modules = model.blocks if transformer_only and isinstance(model, Argus) else model
    return sum(p.numel() for p in modules.parameters())


def count_embedding_parameters(model: Argus) -> int:
    """Parameters of the hashed item tables (the unified item/artist table, and the retrieval
    space's when there is one)."""
    tables = [model.item] + ([model.retrieval_item] if hasattr(model, "retrieval_item") else [])
    return sum(t.table.weight.numel() for t in tables)
