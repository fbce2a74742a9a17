"""Checkpoints: the model's config and weights plus the trainer's state, written atomically.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values, loaded with
``weights_only=True``, so reading one never unpickles arbitrary objects.
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from model.argus import Argus, ArgusConfig

FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(
    path: str | Path, model: Argus, *, weights: dict[str, Any] | None = None, **state: Any
) -> Path:
    """Write ``model`` (config and weights: ``weights`` when given, e.g. gathered from FSDP
    shards, else its state dict) and ``state`` to ``path`` via a temporary file, so a crash
    mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    weights = model.state_dict() if weights is None else weights
    payload = {"format": FORMAT, "model_config": asdict(model.cfg), "model": weights}
    torch.save({**payload, **state}, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict at ``path`` (a file, or a directory holding ``checkpoint.pt``)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from None
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    return state


# Settings added after checkpoints existed, with the value those checkpoints were trained with.
BEFORE = {"fusion": "concat", "fp_dot": False, "nip_cosine": False, "tower_taste": True}
# Buffers added after checkpoints existed; such a checkpoint keeps their initial value.
ADDED_BUFFERS = ("unseen_offset", "readout")


def model_config(state: dict[str, Any]) -> ArgusConfig:
    """The :class:`ArgusConfig` a checkpoint was trained with."""
    known = {f.name for f in fields(ArgusConfig)}
    saved = state["model_config"]
    config: dict[str, Any] = {k: v for k, v in {**BEFORE, **saved}.items() if k in known}
    return ArgusConfig(**config)


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Argus, dict[str, Any]]:
    """The model of a checkpoint in eval mode on ``device``, and the checkpoint dict."""
    state = read_checkpoint(path)
    model = Argus(model_config(state))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if unexpected or set(missing) - set(ADDED_BUFFERS):
        raise ValueError(
            f"{path}: weights do not fit the model (missing {missing}, unexpected {unexpected})"
        )
    return model.to(device).eval(), state
