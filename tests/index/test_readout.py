"""The feedback readout as a bundle serves it: a live history read into a runtime vector as the
export reads the same history into the stored one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from index.bundle import MANIFEST, Bundle, BundleError, HnswParams, build, write_manifest
from model.checkpoint import CHECKPOINT_FILE, read_checkpoint
from model.contract import HISTORY_EVENT
from model.data.events import Events, read_events
from model.export import export
from model.readout import Readout


def history_of(events: Events, begin: int, end: int) -> np.ndarray:
    """Rows ``[begin, end)`` of ``events`` as a live history (HISTORY_EVENT records)."""
    out = np.zeros(end - begin, dtype=HISTORY_EVENT)
    for name in HISTORY_EVENT.names or ():
        out[name] = getattr(events, name)[begin:end]
    return out


def bundle_with(readout: torch.Tensor, finetuned: Path, data: Path, work: Path) -> Bundle:
    """The tiny fine-tuned model with its readout buffer set to ``readout``, exported and built."""
    state = read_checkpoint(finetuned)
    state["model"]["readout"] = readout
    (work / "checkpoint").mkdir(parents=True)
    torch.save(state, work / "checkpoint" / CHECKPOINT_FILE)
    export(work / "checkpoint", data, work / "export", progress=False)
    summary = build(
        work / "export",
        work / "bundles",
        HnswParams(k=20, sample=100, search="hnsw"),
        progress=False,
    )
    return Bundle.open(Path(summary.path))


def test_the_service_reads_a_history_as_the_export_does(
    finetuned: Path, sim_data: Path, tmp_path: Path
) -> None:
    on = bundle_with(torch.tensor([0.25, 0.125]), finetuned, sim_data, tmp_path / "on")
    off = bundle_with(torch.tensor([0.25, float("inf")]), finetuned, sim_data, tmp_path / "off")
    assert on.readout == Readout(0.25, 0.125) and not off.readout.on
    events = read_events(sim_data)
    users, offsets = events.user_offsets()
    max_len, dim = int(on.manifest["model_config"]["max_len"]), on.dim
    longer = moved = 0
    for row, user in enumerate(off.user_ids[:20].tolist()):
        at = int(np.searchsorted(users, user))
        history = history_of(events, offsets[at], offsets[at + 1])
        stored = off.user_vectors[row]
        read = on.read_feedback(stored, history)
        # the stored vector the export read the same history into, in the ranking part only
        np.testing.assert_allclose(read, on.user_vectors[row], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(read[dim:], stored[dim:])
        moved += not np.allclose(read[:dim], stored[:dim])  # (one event moves nothing)
        # the newest max_len events, as the encoder reads them
        np.testing.assert_array_equal(read, on.read_feedback(stored, history[-max_len:]))
        longer += len(history) > max_len
    assert longer > 0 and moved >= 15  # some histories were cut, most users moved
    np.testing.assert_array_equal(off.read_feedback(stored, history), stored)  # off: as stored


def test_a_bundle_with_a_readout_out_of_range_is_refused(bundle_dir: Path) -> None:
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    for bad in ({"slope": -1.0, "ridge": 10.0}, {"slope": 0.3, "ridge": 0}, {"slope": "x"}):
        write_manifest(bundle_dir, {**manifest, "readout": bad})
        with pytest.raises(BundleError, match="readout"):
            Bundle.open(bundle_dir)
    write_manifest(bundle_dir, {**manifest, "readout": {"slope": 0.3, "ridge": 30}})
    assert Bundle.open(bundle_dir).readout == Readout(0.3, 30.0)
