"""``retrieval_query="nip"``: /candidates answered by the NIP head's query for the next event
against the output embeddings (the paper's candidate selection), through export, ONNX, the
bundle and the service."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from index.bundle import HnswParams, build
from model.argus import ArgusConfig
from model.checkpoint import load_model
from model.contract import DAY
from model.data.batching import make_batch
from model.data.events import Catalog, read_events
from model.export import ENCODER_FILE, ENCODER_INPUTS, ENCODER_OUTPUT, export
from model.inference import last_spans
from service.settings import EncoderSettings, RequestSettings, Settings, StoreSettings
from tests.conftest import tiny_finetune
from tests.service.conftest import client_for


@pytest.fixture(scope="module")
def nip_run(sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny fine-tuned model whose /candidates query is the NIP head's (a 2-day gap)."""
    out = tmp_path_factory.mktemp("nip-finetuned")
    return tiny_finetune(sim_data, out, "retrieval_query=nip", f"nip_gap={2 * DAY}")


@pytest.fixture(scope="module")
def nip_export(nip_run: Path, sim_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nip-export") / "export"
    export(nip_run, sim_data, out, batch_size=16, progress=False)
    return out


def test_a_bad_retrieval_query_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="retrieval_query must be 'state', 'pooled' or 'nip'"):
        ArgusConfig(retrieval_query="ann")
    with pytest.raises(ValueError, match="needs the argus objective"):
        ArgusConfig(retrieval_query="nip", objective="sasrec")
    with pytest.raises(ValueError, match="nip_gap >= 0"):
        ArgusConfig(retrieval_query="nip", nip_gap=-1)


def test_the_stored_query_asks_about_the_cut_off_and_the_runtime_one_nip_gap_later(
    nip_run: Path, nip_export: Path, sim_data: Path
) -> None:
    """The retrieval part of every stored user vector is ``MLP([h_last; e_ctx(next)])`` for a
    next event at the export's cut-off, the runtime ONNX encoder's for one ``nip_gap`` after the
    last event; each context is embedded with its real gap to the last event (not the 0 of a
    one-column call); the retrieval item vectors are the output embeddings ``e_item``."""
    model, _ = load_model(nip_run)
    assert model.cfg.retrieval_query == "nip" and model.cfg.nip_gap == 2 * DAY
    manifest = json.loads((nip_export / "export.json").read_text())
    width = model.cfg.embedding_dim
    assert manifest["retrieval_dim"] == width and manifest["dim"] == model.cfg.ranking_dim
    events = read_events(sim_data)
    as_of = int(events.timestamp.max()) + 1  # an export of every event
    assert manifest["as_of"] == as_of
    catalog = Catalog.from_events(events)
    with torch.no_grad():
        e_item = model.output_embedding(torch.from_numpy(catalog.ids)).numpy()
    items = np.load(nip_export / "retrieval_item_vectors.npy")
    np.testing.assert_allclose(items, e_item, rtol=0, atol=1e-6)

    users = np.load(nip_export / "user_vectors.npy")
    assert users.shape[1] == model.cfg.ranking_dim + width
    spans = last_spans(events, model.cfg.max_len)
    session = ort.InferenceSession(
        str(nip_export / ENCODER_FILE), providers=["CPUExecutionProvider"]
    )

    def query(h: torch.Tensor, source: torch.Tensor, last: torch.Tensor, at: int) -> np.ndarray:
        """The NIP query with the next event as a second column of one context call."""
        pair = model.context(source.repeat(1, 2), torch.stack([last, last * 0 + at], dim=1))
        return model.nip_query(h, pair[:, 1]).numpy()[0]

    gaps, apart = [], []
    for k in np.random.default_rng(1).choice(len(spans), 6, replace=False).tolist():
        batch = make_batch(events, spans.take(np.array([k])), pad_to_multiple=1)
        tensors = batch.to_torch()
        n = int(tensors["lengths"][0])
        with torch.no_grad():
            h = model(tensors)[0, n - 1 : n]
            source, last = tensors["source"][:, [n - 1]], tensors["timestamp"][:, n - 1]
            stored = query(h, source, last, as_of)
            runtime = query(h, source, last, int(last[0]) + 2 * DAY)
            # the pitfall: the same next context alone in its call has a gap of 0
            single = model.context(source, (last + 2 * DAY)[:, None])
            alone = model.nip_query(h, single[:, 0]).numpy()[0]
        gaps.append(as_of - int(last[0]))
        apart.append(float(np.abs(stored - runtime).max()))
        np.testing.assert_allclose(users[k, model.cfg.ranking_dim :], stored, rtol=0, atol=1e-5)
        assert np.abs(alone - runtime).max() > 1e-3
        inputs = {name: getattr(batch, name) for name in ENCODER_INPUTS}
        (onnx_out,) = session.run([ENCODER_OUTPUT], inputs)
        np.testing.assert_allclose(onnx_out[0, model.cfg.ranking_dim :], runtime, atol=1e-4)
    assert len(set(gaps)) > 1  # the stored queries saw different gaps ...
    assert max(apart) > 1e-3  # ... and the time of the next event matters to the query


def test_the_service_answers_candidates_with_the_nip_query(
    nip_export: Path, tmp_path: Path
) -> None:
    """Through the bundle and /candidates: the service's list is the exact top of the user's
    NIP query against the output embeddings (HNSW at this size finds it), with the retrieval
    score beside every item."""
    bundles = tmp_path / "bundles"
    build(nip_export, bundles, HnswParams(k=20, sample=200, search="hnsw"), progress=False)
    ids = np.load(nip_export / "item_ids.npy")
    items = np.load(nip_export / "retrieval_item_vectors.npy")
    user_ids = np.load(nip_export / "user_ids.npy")
    users = np.load(nip_export / "user_vectors.npy")
    dim = json.loads((nip_export / "export.json").read_text())["dim"]
    settings = Settings(
        store=StoreSettings(bundles=bundles),
        requests=RequestSettings(events_open=True),
        encoder=EncoderSettings(max_delay_ms=0),
    )
    with client_for(settings) as client:
        for row in (0, len(user_ids) // 2, len(user_ids) - 1):
            reply = client.post("/candidates", json={"user_id": int(user_ids[row]), "k": 10})
            assert reply.status_code == 200, reply.text
            answer = reply.json()["items"]
            got = np.array([c["item_id"] for c in answer])
            scores = items @ users[row, dim:]
            exact = ids[np.argsort(-scores, kind="stable")[:10]]
            assert len(np.intersect1d(got, exact)) >= 9, (got, exact)
            served = np.array([c["score"] for c in answer])
            np.testing.assert_allclose(served, scores[np.searchsorted(ids, got)], atol=1e-4)
