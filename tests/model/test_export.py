from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from argus.cli import app
from model.checkpoint import load_model
from model.contract import DAY
from model.data.batching import Spans, make_batch
from model.data.events import read_events
from model.export import (
    ENCODER_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUT,
    STEP_FILE,
    STEP_INPUTS,
    export,
    export_onnx,
    export_step_onnx,
    popular_items,
)
from model.inference import ItemPopularity, StepEncoder, UserEncoder, last_spans, retrieval_dim
from model.readout import Readout, padded_history
from model.train import pretrain
from tests.model.conftest import tiny_config


def histories(sim_data: Path, b: int, length: int, seed: int) -> dict[str, np.ndarray]:
    """``b`` real histories cut to ``length`` events and right-padded, with random lengths
    (1 among them), as the encoder's named inputs."""
    events = read_events(sim_data)
    _, offsets = events.user_offsets()
    rng = np.random.default_rng(seed)
    users = rng.choice(len(offsets) - 1, b, replace=False)
    n = np.minimum(rng.integers(1, length + 1, b), np.diff(offsets)[users])
    n[0] = 1
    start = offsets[users]
    batch = make_batch(events, Spans(start, start + n, start), pad_to_multiple=1)
    inputs = {name: getattr(batch, name) for name in ENCODER_INPUTS}
    width = inputs["item_id"].shape[1]
    assert width <= length and width == n.max()
    return inputs


@pytest.mark.parametrize(("b", "length"), [(1, 1), (1, 7), (3, 1), (4, 17), (16, 96)])
def test_onnx_encoder_equals_the_torch_user_tower(
    finetuned: Path, sim_data: Path, tmp_path: Path, b: int, length: int
) -> None:
    model, _ = load_model(finetuned)
    path = export_onnx(model, tmp_path / ENCODER_FILE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = histories(sim_data, b, length, seed=b * 100 + length)
    (onnx_out,) = session.run([ENCODER_OUTPUT], inputs)
    with torch.no_grad():
        tensors = [torch.from_numpy(inputs[n]) for n in ENCODER_INPUTS]
        torch_out = UserEncoder(model, runtime=True)(*tensors)
        offline = UserEncoder(model)(*tensors)
    # The runtime (lag-0) head differs from the offline one in the ranking part only.
    d = model.cfg.ranking_dim  # the towers' 24: they read the state, not the pooled taste
    assert not model.cfg.taste_shortcut and d == 24
    assert model.has_runtime_head and not torch.allclose(torch_out[:, :d], offline[:, :d])
    np.testing.assert_array_equal(torch_out[:, d:].numpy(), offline[:, d:].numpy())
    assert onnx_out.shape == (b, d + retrieval_dim(model)) and model.cfg.retrieval_trend
    assert retrieval_dim(model) == model.cfg.retrieval_dim + 1  # the query, then w(taste)
    assert np.abs(onnx_out - torch_out.numpy()).max() < 1e-4


def test_export_writes_every_vector_and_refuses_to_overwrite(
    finetuned: Path, sim_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    summary = export(finetuned, sim_data, out, batch_size=7, progress=False)
    assert "user vectors" in summary.line() and "users/s" in summary.line()
    files = {p.name for p in out.iterdir()}
    assert files == {
        "encoder.onnx",
        "encoder_step.onnx",
        "export.json",
        "item_ids.npy",
        "item_artist_ids.npy",
        "item_vectors.npy",
        "retrieval_item_vectors.npy",
        "user_ids.npy",
        "user_vectors.npy",
        "popular.npy",
    }
    load = {
        name: np.load(out / f"{name}.npy", allow_pickle=False)
        for name in (
            "item_ids",
            "item_vectors",
            "retrieval_item_vectors",
            "user_ids",
            "user_vectors",
            "popular",
        )
    }
    events = read_events(sim_data)
    model, _ = load_model(finetuned)
    assert load["user_ids"].tolist() == np.unique(events.user_id).tolist()
    assert load["item_ids"].tolist() == np.unique(events.item_id).tolist()
    ranking = 24  # the towers' (no taste shortcut)
    assert ranking == model.cfg.ranking_dim
    width = ranking + model.cfg.retrieval_dim + 1  # the retrieval query and its trend weight
    assert load["user_vectors"].dtype == np.float32 and load["user_vectors"].shape[1] == width
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["dim"] == ranking and manifest["n_users"] == len(load["user_ids"])
    assert manifest["retrieval_dim"] == model.cfg.retrieval_dim + 1
    encoders = manifest["user_encoders"]
    assert encoders["stored"]["lag"] == "1d" and encoders["runtime"]["lag"] == "0"
    assert encoders["runtime"]["head"] == "runtime_proj"
    with torch.no_grad():  # an item the catalog lacks: the cold embedding's vector, in JSON
        cold = model.cold_item_vector()
    assert cold is not None and manifest["cold_item_vector"] == cold.tolist()

    # Every user's vector is the tower at their last event, from their last max_len events,
    # whatever batch it was computed in, its query asked at the cut-off (retrieval_gap); and the
    # ONNX (runtime) encoder agrees with that head, asked at the last event.
    assert model.cfg.retrieval_gap and manifest["as_of"] == int(events.timestamp.max()) + 1
    session = ort.InferenceSession(str(out / ENCODER_FILE), providers=["CPUExecutionProvider"])
    spans = last_spans(events, model.cfg.max_len)
    assert spans.length.max() == 96 and spans.length.min() < 96
    ids = np.unique(events.item_id)
    readout = Readout.of(model)
    assert readout.on and manifest["readout"] == readout.manifest()  # fine-tuning set it
    for k in np.random.default_rng(0).choice(len(spans), 12, replace=False).tolist():
        batch = make_batch(events, spans.take(np.array([k])), pad_to_multiple=1)
        with torch.no_grad():
            alone = UserEncoder(model, as_of=manifest["as_of"]).encode(batch.to_torch())[0].numpy()
            runtime = UserEncoder(model, runtime=True).encode(batch.to_torch())[0].numpy()
        # ... with the user's own feedback read into its ranking part (model.readout)
        vectors, grades = padded_history(
            events, spans.start[k : k + 1], spans.end[k : k + 1], ids, load["item_vectors"]
        )
        read = alone.copy()
        read[:ranking] = readout.apply(alone[None, :ranking], vectors, grades)[0]
        np.testing.assert_allclose(load["user_vectors"][k], read, rtol=0, atol=1e-5)
        inputs = {n: getattr(batch, n) for n in ENCODER_INPUTS}
        (onnx_out,) = session.run([ENCODER_OUTPUT], inputs)
        assert np.abs(onnx_out[0] - runtime).max() < 1e-4
    ids, first = np.unique(events.item_id, return_index=True)
    with torch.no_grad():  # the exported events' positives and other events of each item
        item = torch.from_numpy(ids)
        record = ItemPopularity.of(events)
        popular, negatives = record.log_counts(item), record.log_negatives(item)
        artist = torch.from_numpy(events.artist_id[first])
        expected = model.item_vector(item, artist, popular, log_negatives=negatives).numpy()
        assert model.cfg.item_negatives
        assert not np.allclose(expected, model.item_vector(item, artist, popular).numpy())
    np.testing.assert_allclose(load["item_vectors"], expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        retrieval = model.retrieval_items(torch.from_numpy(ids)).numpy()
    vectors = load["retrieval_item_vectors"]
    np.testing.assert_allclose(vectors[:, :-1], retrieval, rtol=0, atol=1e-6)
    # the trend column: each item's positives in the window before the export's last second
    window = model.cfg.retrieval_trend
    assert window == 7 * DAY
    end = int(events.timestamp.max()) + 1
    recent = events.positive & (events.timestamp >= end - window)
    counts = np.array([np.sum(recent & (events.item_id == i)) for i in ids])
    assert counts.max() > 0
    np.testing.assert_allclose(vectors[:, -1], np.log1p(counts), rtol=1e-6)

    with pytest.raises(ValueError, match="already exists"):
        export(finetuned, sim_data, out, progress=False)


def test_popular_items_rank_by_positive_events_recent_ones_first_with_a_trend() -> None:
    from model.data.events import Events

    events = Events.from_arrays(
        user_id=np.array([1, 1, 1, 2, 2, 3]),
        item_id=np.array([5, 6, 7, 6, 8, 6]),
        timestamp=np.arange(6),
        source=np.zeros(6),
        artist_id=np.full(6, -1),
        played_ratio=np.array([1.0, 1.0, 0.1, 1.0, 1.0, 0.0]),
        liked=np.zeros(6, bool),
        disliked=np.zeros(6, bool),
    )
    assert popular_items(events).tolist() == [6, 5, 8, 7]  # 6 twice, 5 and 8 once, 7 never
    # with a trend window (the last 2 s: only 8's positive at t=4), what is popular now leads
    assert popular_items(events, trend=2).tolist() == [8, 6, 5, 7]


def test_export_refuses_a_model_without_towers(sim_data: Path, tmp_path: Path) -> None:
    pretrain(tiny_config(sim_data, tmp_path / "pre", max_steps=1), progress=False)
    with pytest.raises(ValueError, match="no towers"):
        export(tmp_path / "pre", sim_data, tmp_path / "export", progress=False)
    assert not (tmp_path / "export").exists()


def test_export_from_the_command_line(finetuned: Path, sim_data: Path, tmp_path: Path) -> None:
    args = ["export", "--checkpoint", str(finetuned), "--data", str(sim_data)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("exported ")
    again = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "e"), "--quiet"])
    assert again.exit_code == 2 and "already exists" in again.output


def test_the_export_on_a_local_ray_instance_writes_the_local_exports_files(
    finetuned: Path, sim_data: Path, exported: Path, tmp_path: Path
) -> None:
    """`argus export --ray local`: Ray Data's actors (2 CPUs here) encode the users; every file
    equals the local export's (vectors within 1e-5: batches are cut differently)."""
    import ray

    result = CliRunner().invoke(
        app,
        [
            "export",
            "--checkpoint",
            str(finetuned),
            "--data",
            str(sim_data),
            "--out",
            str(tmp_path / "ray"),
            "--ray",
            "local",
            "--quiet",
        ],
    )
    try:
        assert result.exit_code == 0, result.output
        assert ray.cluster_resources()["CPU"] >= 1  # it really ran on a Ray instance
    finally:
        ray.shutdown()
    local = {p.name for p in exported.iterdir()}
    assert {p.name for p in (tmp_path / "ray").iterdir()} == local
    for name in sorted(n for n in local if n.endswith(".npy")):
        ours, theirs = np.load(tmp_path / "ray" / name), np.load(exported / name)
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, name
        if ours.dtype.kind == "f":
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5, err_msg=name)
        else:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
    assert (tmp_path / "ray" / "encoder.onnx").read_bytes() == (
        exported / "encoder.onnx"
    ).read_bytes()


def split_inputs(inputs: dict[str, np.ndarray], cut: int) -> tuple[dict, dict]:
    """One-row encoder inputs cut into the first ``cut`` events and the rest."""
    head = {n: inputs[n][:, :cut] for n in ENCODER_INPUTS if n != "lengths"}
    tail = {n: inputs[n][:, cut:] for n in ENCODER_INPUTS if n != "lengths"}
    head["lengths"] = np.array([cut])
    tail["lengths"] = np.array([inputs["item_id"].shape[1] - cut])
    return head, tail


def test_the_step_graph_continues_a_cached_state_as_a_full_encode_would(
    finetuned: Path, sim_data: Path, tmp_path: Path
) -> None:
    """Full encode of a prefix, then the step graph over the rest in random pieces (1 event or
    several): the user vector and the state equal one full encode of the whole history (1e-4),
    in PyTorch and in ONNX Runtime."""
    model, _ = load_model(finetuned)
    full = ort.InferenceSession(
        str(export_onnx(model, tmp_path / ENCODER_FILE)), providers=["CPUExecutionProvider"]
    )
    step = ort.InferenceSession(
        str(export_step_onnx(model, tmp_path / STEP_FILE)), providers=["CPUExecutionProvider"]
    )
    assert [i.name for i in step.get_inputs()] == list(STEP_INPUTS)
    rng = np.random.default_rng(7)
    for trial in range(6):
        inputs = histories(sim_data, 2, 96, seed=trial)
        row = int(np.argmax(inputs["lengths"]))
        n = int(inputs["lengths"][row])
        one = {k: v[row : row + 1, :n] for k, v in inputs.items() if k != "lengths"}
        one["lengths"] = np.array([n])
        expected = full.run(None, one)
        cut = int(rng.integers(1, n)) if n > 1 else 1
        head, _ = split_inputs(one, cut)
        vector, keys, values, taste_sum, positives = full.run(None, head)
        while cut < n:
            size = int(min(rng.choice([1, 1, 2, 5]), n - cut))
            _, tail = split_inputs(one, cut)
            piece = {k: v[:, :size] for k, v in tail.items() if k != "lengths"}
            piece["lengths"] = np.array([size])
            feeds = {
                **piece,
                "past_keys": keys,
                "past_values": values,
                "last_timestamp": one["timestamp"][:, cut - 1],
                "past_taste_sum": taste_sum,
                "past_positives": positives,
            }
            vector, keys, values, taste_sum, positives = step.run(None, feeds)
            with torch.no_grad():  # PyTorch's step agrees with ONNX Runtime's
                torch_out = StepEncoder(model)(*(torch.from_numpy(feeds[k]) for k in STEP_INPUTS))
            assert np.abs(torch_out[0].numpy() - vector).max() < 1e-4
            cut += size
        assert keys.shape == expected[1].shape
        for got, want in zip((vector, keys, values, taste_sum, positives), expected, strict=True):
            assert np.abs(got - want).max() < 1e-4, trial


def test_a_batched_step_equals_each_row_s_own_step(
    finetuned: Path, sim_data: Path, tmp_path: Path
) -> None:
    """Rows of one step batch share the number of cached events; the new events are
    right-padded; each row gets what it gets alone."""
    model, _ = load_model(finetuned)
    encoder = UserEncoder(model, runtime=True, cache=True)
    stepper = StepEncoder(model)
    inputs = histories(sim_data, 3, 40, seed=11)
    width = inputs["item_id"].shape[1]
    cut = width - 5
    new = torch.tensor([5, 3, 1])  # right-padded new events
    inputs["lengths"][:] = cut + new.numpy()  # (the rows' padding counts as events here)
    t = {k: torch.from_numpy(v) for k, v in inputs.items()}
    with torch.no_grad():
        expected = encoder(*(t[k] for k in ENCODER_INPUTS))[0]
        prefix = {k: v[:, :cut] for k, v in t.items() if k != "lengths"}
        prefix["lengths"] = torch.full((3,), cut)
        _, keys, values, total, count = encoder(*(prefix[k] for k in ENCODER_INPUTS))
        rest = {k: v[:, cut:] for k, v in t.items() if k != "lengths"}
        rest["lengths"] = new
        before = t["timestamp"][:, cut - 1]
        got = stepper(*(rest[k] for k in ENCODER_INPUTS), keys, values, before, total, count)[0]
    assert torch.abs(got - expected).max() < 1e-4
