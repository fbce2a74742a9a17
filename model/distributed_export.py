"""The daily export's user vectors on a Ray cluster (``argus export --ray ADDRESS``).

The driver reads the events and cuts one span per user (their last ``max_len`` events), exactly
as the local export does; Ray Data then maps the spans, a shard of users per batch, through a
pool of actors that each load the checkpoint once (on a GPU each when the cluster has GPUs, else
one CPU each) and run the same encoder. The vectors come back keyed by span row, so the files
are those of a local export. The events travel once through Ray's object store; the checkpoint
path must be readable on every node (shared storage, as the bundle volume already is).

    argus export --checkpoint runs/finetuned --data data/sim --out exports/x --ray local
    argus export ... --ray auto                 # the cluster this machine belongs to
    argus export ... --ray ray://head:10001     # a remote cluster (Ray Client)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from model.argus import Argus
from model.data.batching import Spans
from model.data.events import Events
from model.progress import bar as tqdm

SHARD_USERS = 512  # users per Ray Data batch: one actor call


class ShardEncoder:
    """A Ray Data actor: the checkpoint's model, and the events (fetched once per actor)."""

    def __init__(
        self,
        checkpoint: str,
        events: list[Any],
        batch_size: int,
        gpu: bool,
        as_of: int | None = None,
    ) -> None:
        import ray

        from model.checkpoint import load_model

        torch.set_num_threads(1)  # one CPU per actor: the pool is the parallelism
        self.device = "cuda" if gpu else "cpu"
        self.model, _ = load_model(checkpoint, self.device)
        self.events: Events = ray.get(events[0])
        self.batch_size = batch_size
        self.as_of = as_of

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from model.inference import encode_spans

        start = batch["start"].astype(np.int64)
        spans = Spans(start, batch["end"].astype(np.int64), start.copy())
        vectors = encode_spans(
            self.model,
            self.events,
            spans,
            batch_size=self.batch_size,
            device=self.device,
            as_of=self.as_of,
        )
        return {"row": batch["row"], "vector": vectors}


def connect(address: str) -> None:
    """``ray.init`` for ``address``: ``"local"`` starts an instance on this machine."""
    import ray

    if ray.is_initialized():
        return
    if address == "local":
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def ray_user_vectors(
    checkpoint: str | Path,
    model: Argus,
    events: Events,
    *,
    address: str,
    batch_size: int = 64,
    progress: bool = False,
    as_of: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_ids, vectors)`` as :func:`model.inference.user_vectors` computes them, on Ray."""
    import ray
    import ray.data

    from model.inference import last_spans, user_vector_dim

    connect(address)
    began = time.perf_counter()
    spans = last_spans(events, model.cfg.max_len)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    actors = gpus or max(1, int(resources.get("CPU", 1)))
    table = pa.table({"row": np.arange(len(spans)), "start": spans.start, "end": spans.end})
    encoded = ray.data.from_arrow(table).map_batches(
        ShardEncoder,
        batch_size=SHARD_USERS,
        batch_format="numpy",
        fn_constructor_kwargs={
            "checkpoint": str(checkpoint),
            "events": [ray.put(events)],  # in a list: Ray hands the actor the reference
            "batch_size": batch_size,
            "gpu": gpus > 0,
            "as_of": as_of,
        },
        concurrency=actors,
        num_gpus=1 if gpus else 0,
        num_cpus=0 if gpus else 1,
    )
    vectors = np.empty((len(spans), user_vector_dim(model)), dtype=np.float32)
    bar = tqdm(total=len(spans), desc=f"user vectors (Ray, {actors} actors)", disable=not progress)
    for out in encoded.iter_batches(batch_size=None, batch_format="numpy"):
        vectors[out["row"]] = out["vector"]
        bar.update(len(out["row"]))
    bar.close()
    if progress:
        elapsed = time.perf_counter() - began
        print(f"Ray: {len(spans):,} users on {actors} actors in {elapsed:.1f} s", flush=True)
    return events.user_id[spans.start], vectors
