"""``argus export``: a fine-tuned checkpoint and an event log -> the files the daily job ships.

* ``encoder.onnx`` — the user tower as an ONNX graph: padded event features ``[B, L]`` (right
  padding) and ``lengths [B]`` in, the user vector ``u = P_u h`` of each row's last real event out
  (``[B, dim]``); B and L are dynamic. The service's real-time path runs it with ONNX Runtime.
* ``item_ids.npy`` / ``item_vectors.npy`` — every item of the log and its vector
  ``v = MLP(e_item)``.
* ``user_ids.npy`` / ``user_vectors.npy`` — every user and the vector of their last ``max_len``
  events, computed in length-bucketed batches.
* ``popular.npy`` — item ids by number of positive events, most popular first (the fallback).
* ``export.json`` — model config, dim, counts, sources and timings.

The directory is written under a temporary name and renamed when complete, so a reader never sees
a half-written export. ``index/`` turns it into a bundle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from model.argus import Argus
from model.checkpoint import load_model
from model.contract import (
    CACHE_OUTPUTS,
    DEFAULT_LAG,
    ENCODER_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    EXPORT_MANIFEST,
    OPSET,
    STEP_FILE,
    STEP_INPUTS,
)
from model.data.events import Catalog, Events, read_events
from model.impressions import popularity_counts
from model.inference import (
    StepEncoder,
    UserEncoder,
    item_vectors,
    last_spans,
    retrieval_dim,
    trend_counts,
    user_vectors,
)
from model.readout import Readout, read_into
from model.runtime import pick_device


def _example_events(b: int, length: int, start: int = 0) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: (B, length) events in :data:`ENCODER_INPUTS` order."""
    return (
        torch.zeros(b, length, dtype=torch.int64),
        torch.full((b, length), -1, dtype=torch.int64),
        torch.arange(b * length, dtype=torch.int64).view(b, length) + start,
        torch.zeros(b, length, dtype=torch.int64),
        torch.full((b, length), 0.5),
        torch.zeros(b, length, dtype=torch.bool),
        torch.zeros(b, length, dtype=torch.bool),
        torch.tensor([length] + [1] * (b - 1)),
    )


def _to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> Path:
    import warnings

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and handles int64 hashing
        )
    return path


def _cache_axes(length: str) -> dict[str, dict[int, str]]:
    """Dynamic axes of the state outputs (:data:`CACHE_OUTPUTS`)."""
    return {
        "keys": {1: "batch", 3: length},
        "values": {1: "batch", 3: length},
        "taste_sum": {0: "batch"},
        "positives": {0: "batch"},
    }


def export_onnx(model: Argus, path: str | Path, *, runtime: bool = True) -> Path:
    """Write the user encoder of ``model`` as ONNX with dynamic batch and length (traced on the
    CPU in float32: the model is moved there): the user vector, then the state
    (:data:`CACHE_OUTPUTS`). ``runtime``: the lag-0 head when the model has one."""
    encoder = UserEncoder(model.to("cpu").float().eval(), runtime=runtime, cache=True)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "length"} for name in ENCODER_INPUTS}
    axes["lengths"] = {0: "batch"}
    axes[ENCODER_OUTPUT] = {0: "batch"}
    axes.update(_cache_axes("length"))
    outputs = [ENCODER_OUTPUT, *CACHE_OUTPUTS]
    return _to_onnx(encoder, _example_events(2, 3), Path(path), list(ENCODER_INPUTS), outputs, axes)


def export_step_onnx(model: Argus, path: str | Path) -> Path:
    """Write the runtime encoder's step graph (:data:`STEP_INPUTS` -> the user vector and the
    state after the new events) as ONNX; batch, new events and cached events are dynamic."""
    model = model.to("cpu").float().eval()
    cfg = model.cfg
    b, past = 2, 4
    head = cfg.d_model // cfg.n_heads
    taste = cfg.retrieval_dim or 1
    example = (
        *_example_events(b, 3, start=past),
        torch.randn(cfg.n_layers, b, cfg.n_heads, past, head),
        torch.randn(cfg.n_layers, b, cfg.n_heads, past, head),
        torch.full((b,), past - 1, dtype=torch.int64),
        torch.zeros(b, taste),
        torch.zeros(b),
    )
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "new"} for name in ENCODER_INPUTS}
    axes["lengths"] = {0: "batch"}
    axes.update(
        {
            "past_keys": {1: "batch", 3: "past"},
            "past_values": {1: "batch", 3: "past"},
            "last_timestamp": {0: "batch"},
            "past_taste_sum": {0: "batch"},
            "past_positives": {0: "batch"},
            ENCODER_OUTPUT: {0: "batch"},
        }
    )
    axes.update(_cache_axes("present"))
    outputs = [ENCODER_OUTPUT, *CACHE_OUTPUTS]
    return _to_onnx(StepEncoder(model), example, Path(path), list(STEP_INPUTS), outputs, axes)


@dataclass
class ExportSummary:
    out: str
    dim: int
    items: int
    users: int
    user_events: int
    elapsed_s: float
    users_per_s: float

    def line(self) -> str:
        return (
            f"exported {self.users:,} user vectors ({self.user_events:,} events) and "
            f"{self.items:,} item vectors of dim {self.dim} + {ENCODER_FILE} in "
            f"{self.elapsed_s:.1f} s ({self.users_per_s:,.0f} users/s) -> {self.out}"
        )


def user_encoders(model: Argus, state: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Which user head made what, and the lag of the state it was fine-tuned on: ``stored`` (the
    published vectors) and ``runtime`` (``encoder.onnx``: the service's realtime and history
    sources)."""
    config = state.get("train_config", {})
    lag = str(config.get("lag", DEFAULT_LAG))
    runtime_lag = str(config.get("runtime_lag", "")) if model.has_runtime_head else ""
    return {
        "stored": {"head": "user_proj", "lag": lag},
        "runtime": {
            "head": "runtime_proj" if runtime_lag else "user_proj",
            "lag": runtime_lag or lag,
            "file": ENCODER_FILE,
            "step_file": STEP_FILE,
        },
    }


def popular_items(events: Events, catalog: Catalog | None = None, trend: int = 0) -> np.ndarray:
    """Item ids by number of positive events, most popular first (ties: smaller id first);
    with a ``trend`` window (seconds), by those in the last ``trend`` seconds first (ties: all
    of them, then the id): what is popular now, the fallback of a user with no vector."""
    catalog = Catalog.from_events(events) if catalog is None else catalog
    counts = popularity_counts(events, None, catalog)
    recent = trend_counts(events, catalog.ids, trend) if trend else np.zeros_like(counts)
    return catalog.ids[np.lexsort((catalog.ids, -counts, -recent))]


def write_files(directory: Path, arrays: dict[str, np.ndarray], manifest: dict[str, Any]) -> None:
    """``arrays`` as ``<name>.npy`` (never pickled) and ``manifest`` plus the encoder's signature
    as ``export.json``: every file of an export but ``encoder.onnx``."""
    for name, array in arrays.items():
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
    signature = {
        "inputs": list(ENCODER_INPUTS),
        "output": ENCODER_OUTPUT,
        "state": list(CACHE_OUTPUTS),
        "step": {"file": STEP_FILE, "inputs": list(STEP_INPUTS)},
        "opset": OPSET,
    }
    text = json.dumps({**manifest, "encoder": signature}, indent=2)
    (directory / EXPORT_MANIFEST).write_text(text + "\n")


def write_shared_space(
    directory: Path,
    *,
    item_ids: np.ndarray,
    item_vectors: np.ndarray,
    user_ids: np.ndarray,
    user_vectors: np.ndarray,
    popular: np.ndarray,
    manifest: dict[str, Any],
    item_artist_ids: np.ndarray | None = None,
) -> None:
    """:func:`write_files` for vectors of one space that answers retrieval and ranking alike (a
    model without a retrieval space; synthetic bundles in tests and benchmarks). Artists
    unknown (-1) unless ``item_artist_ids`` gives them."""
    if item_artist_ids is None:
        item_artist_ids = np.full(len(item_ids), -1, dtype=np.int64)
    arrays = {
        "item_ids": item_ids,
        "item_artist_ids": item_artist_ids.astype(np.int64),
        "item_vectors": item_vectors,
        "retrieval_item_vectors": item_vectors,
        "user_ids": user_ids,
        "user_vectors": np.hstack([user_vectors, user_vectors]),
        "popular": popular,
    }
    dim = item_vectors.shape[1]
    write_files(directory, arrays, {**manifest, "dim": dim, "retrieval_dim": dim})


def all_user_vectors(
    checkpoint: str | Path,
    model: Argus,
    events: Events,
    device: torch.device,
    ray_address: str | None,
    batch_size: int,
    progress: bool,
    as_of: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Every user's vectors, here or (``ray_address``) with the same spans and encoder mapped
    over a Ray cluster's actors."""
    if ray_address is None:
        return user_vectors(
            model, events, batch_size=batch_size, device=device, progress=progress, as_of=as_of
        )
    from model.distributed_export import ray_user_vectors

    return ray_user_vectors(
        checkpoint,
        model,
        events,
        address=ray_address,
        batch_size=batch_size,
        progress=progress,
        as_of=as_of,
    )


def counts_of(
    model: Argus, state: dict[str, Any], items: np.ndarray, users: np.ndarray
) -> dict[str, Any]:
    """The export manifest's description of the model and what it encoded."""
    cold = model.cold_item_vector()
    return {
        "model_config": asdict(model.cfg),
        "cold_item_vector": None if cold is None else cold.detach().float().cpu().tolist(),
        "dim": model.cfg.ranking_dim,
        "retrieval_dim": retrieval_dim(model),
        "n_items": len(items),
        "n_users": len(users),
        "trained_until": state["train_until"],
        "user_encoders": user_encoders(model, state),
    }


def read_feedback(
    model: Argus,
    events: Events,
    users: np.ndarray,
    user_vecs: np.ndarray,
    items: np.ndarray,
    item_vecs: np.ndarray,
) -> Readout:
    """Each user's own feedback on their last ``max_len`` events read into the ranking part of
    their vector (``user_vecs``, in place) by the model's readout (:mod:`model.readout`), which
    is returned for the manifest; nothing when it is off."""
    readout = Readout.of(model)
    if readout.on:
        spans = last_spans(events, model.cfg.max_len)
        assert np.array_equal(users, events.user_id[spans.start])
        dim = model.cfg.ranking_dim
        user_vecs[:, :dim] = read_into(
            readout, user_vecs[:, :dim], events, spans.start, spans.end, items, item_vecs
        )
    return readout


def cutoff_of(until: str, state: dict[str, Any]) -> int | None:
    """The export's cut-off in Unix seconds (None: every event counts) from ``--until``."""
    if until == "all":
        return None
    if until == "trained":
        return int(state["train_until"])
    if until.isdigit():
        return int(until)
    raise ValueError(f"until must be 'all', 'trained' or Unix seconds, got {until!r}")


def export(
    checkpoint: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batch_size: int = 64,
    until: str = "all",
    device: str = "auto",
    progress: bool = True,
    ray_address: str | None = None,
) -> ExportSummary:
    """Write the export directory ``out`` (see the module docstring); refuses to overwrite one.
    ``until``: only events before it count — ``"all"``, ``"trained"`` (the checkpoint's training
    cut-off) or Unix seconds. ``ray_address``: encode the users on a Ray cluster at that address
    (``"local"``: a local instance) with Ray Data; the files are the same."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"{out} already exists; export into a new directory")
    chosen = pick_device(device)
    model, state = load_model(checkpoint, "cpu")  # the ONNX graph is traced on the CPU
    if not model.has_towers:
        raise ValueError(f"{checkpoint}: no towers in this checkpoint; run `argus finetune` first")
    began = time.perf_counter()
    cutoff = cutoff_of(until, state)
    events = read_events(data)
    if cutoff is not None:
        events = events.take(events.timestamp < cutoff)
    if len(events) == 0:
        raise ValueError(f"{data}: no events to export")
    # the stored vectors are as of the cut-off: a NIP query asks about an event then
    as_of = cutoff if cutoff is not None else int(events.timestamp.max()) + 1
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    export_onnx(model, tmp / ENCODER_FILE)
    export_step_onnx(model, tmp / STEP_FILE)
    model.to(chosen)
    catalog = Catalog.from_events(events)
    items, item_vecs, retrieval_vecs = item_vectors(model, events, catalog=catalog, device=chosen)
    users, user_vecs = all_user_vectors(
        checkpoint, model, events, chosen, ray_address, batch_size, progress, as_of
    )
    readout = read_feedback(model, events, users, user_vecs, items, item_vecs)
    arrays = {
        "item_ids": items,
        "item_artist_ids": catalog.artist_id,
        "item_vectors": item_vecs,
        "retrieval_item_vectors": retrieval_vecs,
        "user_ids": users,
        "user_vectors": user_vecs,
        "popular": popular_items(events, catalog, model.cfg.retrieval_trend),
    }
    elapsed = time.perf_counter() - began
    manifest = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        **counts_of(model, state, items, users),
        "events_until": int(events.timestamp.max()) + 1,
        "readout": readout.manifest(),
        "as_of": as_of,
        "elapsed_s": elapsed,
    }
    write_files(tmp, arrays, manifest)
    os.replace(tmp, out)
    user_events = int(np.minimum(np.diff(events.user_offsets()[1]), model.cfg.max_len).sum())
    return ExportSummary(
        out=str(out),
        dim=model.cfg.ranking_dim,
        items=len(items),
        users=len(users),
        user_events=user_events,
        elapsed_s=elapsed,
        users_per_s=len(users) / max(elapsed, 1e-9),
    )
