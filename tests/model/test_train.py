from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from model.argus import Argus, preset
from model.checkpoint import load_model, read_checkpoint
from model.data.batching import chunk_spans, make_batch
from model.data.events import Catalog, read_events
from model.losses import ItemFrequencies, pretraining_loss
from model.runtime import Runtime
from model.train import pretrain, warm_start
from model.trainer import lr_factor
from tests.model.conftest import terminated_after, tiny_config

ROOT = Path(__file__).resolve().parents[2]


def losses_of(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_run_writes_its_artifacts_and_loss_goes_down(sim_data: Path, tmp_path: Path) -> None:
    summary = pretrain(tiny_config(sim_data, tmp_path, max_steps=40, lr=3e-3), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(2, 41, 2))
    assert {"loss", "nip", "like", "dislike", "skip", "played_ratio", "lr", "events_per_s"} <= set(
        rows[0]
    )
    assert rows[-1]["nip"] < rows[0]["nip"] - 0.5
    assert (tmp_path / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["d_model"] == 32 and config["train"]["max_steps"] == 40
    model, state = load_model(tmp_path)
    assert state["step"] == summary.steps == 40 and not model.training
    events = read_events(sim_data)
    split_time = int(events.timestamp.max()) + 1 - 3 * 86_400
    assert state["train_until"] == split_time  # the held-out window is recorded for evaluate
    assert summary.events > 0 and "events/s" in summary.line()


def test_same_seed_same_run_and_another_seed_differs(sim_data: Path, tmp_path: Path) -> None:
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        pretrain(tiny_config(sim_data, tmp_path / name, seed=seed), progress=False)
    assert losses_of(tmp_path / "a") == losses_of(tmp_path / "b")
    assert losses_of(tmp_path / "a") != losses_of(tmp_path / "c")


def test_sigterm_checkpoints_and_resume_continues_exactly(sim_data: Path, tmp_path: Path) -> None:
    config = tiny_config(sim_data, tmp_path / "stopped", max_steps=60, log_every=1)
    with terminated_after(tmp_path / "stopped" / "metrics.jsonl", rows=3):
        stopped = pretrain(config, progress=False)
    assert stopped.interrupted and 3 <= stopped.steps < 60, stopped.steps
    assert "rerun with --resume" in stopped.line()
    assert read_checkpoint(tmp_path / "stopped")["step"] == stopped.steps

    resumed = pretrain(config, progress=False, resume=True)
    straight = pretrain(replace(config, out=str(tmp_path / "straight")), progress=False)
    assert resumed.steps == straight.steps == 60 and not resumed.interrupted
    # Every step is reseeded from (seed, step) and the epoch order from (seed, epoch), so the
    # resumed run is the uninterrupted one, bit for bit (several epochs are crossed).
    assert losses_of(tmp_path / "stopped") == losses_of(tmp_path / "straight")
    a, b = read_checkpoint(tmp_path / "straight"), read_checkpoint(tmp_path / "stopped")
    assert a["epoch"] > 1
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_refuses_to_overwrite_or_resume_a_different_run(sim_data: Path, tmp_path: Path) -> None:
    pretrain(tiny_config(sim_data, tmp_path), progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="already exists; pass --resume"):
        pretrain(tiny_config(sim_data, tmp_path), progress=False)
    with pytest.raises(ValueError, match=r"different configuration \(lr: 0.001 -> 0.01\)"):
        pretrain(tiny_config(sim_data, tmp_path, lr=0.01), progress=False, resume=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        pretrain(tiny_config(sim_data, tmp_path / "empty"), progress=False, resume=True)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before  # nothing was lost


def test_bad_settings_are_named(sim_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        tiny_config(sim_data, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="'widht' is not a setting"):
        tiny_config(sim_data, tmp_path, model=("widht=3",)).model_config()
    with pytest.raises(ValueError, match="no training events before the test window"):
        pretrain(tiny_config(sim_data, tmp_path, test_days=100), progress=False)


def test_a_damaged_checkpoint_is_named(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: not a readable checkpoint"):
        read_checkpoint(tmp_path)


def test_sasrec_trains_on_positive_events_only(sim_data: Path, tmp_path: Path) -> None:
    config = tiny_config(sim_data, tmp_path, objective="sasrec", max_steps=0, epochs=1)
    summary = pretrain(config, progress=False)
    events = read_events(sim_data)
    train = events.take(events.timestamp < config.split(events).split_time)  # type: ignore[union-attr]
    assert summary.events == int(train.positive.sum())
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "like" not in rows[0] and "nip" in rows[0]


def test_min_steps_draws_more_epochs_when_the_epochs_are_short(
    sim_data: Path, tmp_path: Path
) -> None:
    settings = {"objective": "sasrec", "max_steps": 0, "epochs": 1, "batch_size": 32}
    one = pretrain(tiny_config(sim_data, tmp_path / "one", **settings), progress=False)
    more = tiny_config(sim_data, tmp_path / "more", min_steps=one.steps + 3, **settings)
    longer = pretrain(more, progress=False)
    assert longer.steps == one.steps + 3 and longer.events > one.events
    fewer = tiny_config(sim_data, tmp_path / "fewer", min_steps=1, **settings)
    assert pretrain(fewer, progress=False).steps == one.steps  # the epochs win when longer
    with pytest.raises(ValueError, match="min_steps must be >= 0"):
        tiny_config(sim_data, tmp_path, min_steps=-1)


def test_learning_rate_warms_up_then_decays() -> None:
    factors = [lr_factor(step, warmup=10, total=100, min_ratio=0.1) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(factors[9:]))
    assert lr_factor(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_every_rank_gets_an_equal_share() -> None:
    items = list(range(10))
    shares = [Runtime(torch.device("cpu"), rank, 3).shard(items) for rank in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3]
    assert sorted(np.concatenate(shares).tolist()) == list(range(9))


def test_the_same_command_runs_data_parallel_under_torchrun(sim_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "argus",
        "pretrain",
        "--data",
        str(sim_data),
        "--out",
        str(out),
        "--preset",
        "argus-tiny",
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--test-days",
        "3",
        "--model",
        "n_uniform_negatives=32",
        "--set",
        "log_every=2",
        "--quiet",
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [x for x in run.stdout.splitlines() if x.startswith("pretrained")]
    assert len(lines) == 2  # one summary per rank
    # Logged losses are averaged over ranks, so both ranks report the same final loss.
    assert (
        lines[0].split("final loss")[1].split(",")[0]
        == lines[1].split("final loss")[1].split(",")[0]
    )
    assert read_checkpoint(out)["step"] == 4


def torchrun_pretrain(
    sim_data: Path,
    out: Path,
    *settings: str,
    steps: int = 4,
    resume: bool = False,
    ranks: int = 2,
) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)]
    command = command if ranks > 1 else [sys.executable]
    command += ["-m", "argus", "pretrain", "--data", str(sim_data), "--out", str(out)]
    command += ["--preset", "argus-tiny", "--max-steps", str(steps), "--batch-size", "4"]
    command += ["--resume"] if resume else []
    command += ["--test-days", "3", "--model", "n_uniform_negatives=32", "--quiet"]
    for setting in ("log_every=1", "sparse_embeddings=off", *settings):
        command += ["--set", setting]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_fsdp_over_two_gloo_processes_matches_one_process_step_for_step(
    sim_data: Path, tmp_path: Path
) -> None:
    """The same command under FSDP (parameters, gradients and optimizer state sharded over two
    CPU processes), under DDP (each process holds the whole model), and in one process that
    accumulates the two ranks' batches per step (accumulate=2), all with dense table gradients:
    the same losses at every step (rtol 1e-5; only the order of float reductions differs) and
    the same weights in the checkpoint, which FSDP gathers into one ordinary file."""
    runs = {}
    for name, settings, ranks in (
        ("fsdp", ("parallel=fsdp",), 2),
        ("ddp", ("parallel=ddp",), 2),
        ("single", ("accumulate=2",), 1),
    ):
        # From a random item table: after the warm start, dense Adam's first steps move every
        # row before the factors pay off, so four steps would not show that it trains.
        run = torchrun_pretrain(
            sim_data, tmp_path / name, *settings, "warm_items=false", ranks=ranks
        )
        assert run.returncode == 0, run.stderr[-3000:]
        rows = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        runs[name] = [json.loads(row)["loss"] for row in rows]
    assert len(runs["fsdp"]) == 4
    np.testing.assert_allclose(runs["fsdp"], runs["single"], rtol=1e-5)
    np.testing.assert_allclose(runs["ddp"], runs["single"], rtol=1e-5)
    assert runs["fsdp"][-1] < runs["fsdp"][0]  # it trained
    sharded, _ = load_model(tmp_path / "fsdp")  # a plain single-process load
    whole, _ = load_model(tmp_path / "single")
    for (name, a), (_, b) in zip(
        sharded.state_dict().items(), whole.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    # and it resumes: two more steps from the gathered checkpoint, sharded again
    again = torchrun_pretrain(
        sim_data, tmp_path / "fsdp", "parallel=fsdp", "warm_items=false", steps=6, resume=True
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert read_checkpoint(tmp_path / "fsdp")["step"] == 6


def test_sparse_table_gradients_equal_dense_and_training_tracks_dense(
    sim_data: Path, tmp_path: Path
) -> None:
    events = read_events(sim_data)
    spans = chunk_spans(events.user_offsets()[1], 64)
    batch = make_batch(events, spans.take(np.arange(8))).to_torch()
    frequencies = ItemFrequencies.from_item_ids(events.item_id)
    grads = {}
    for sparse in (False, True):
        torch.manual_seed(0)
        model = Argus(preset("argus-tiny", n_uniform_negatives=64))
        model.item.table.sparse = sparse
        torch.manual_seed(1)
        pretraining_loss(model, batch, frequencies, frequencies.sample_uniform(64))[
            "loss"
        ].backward()
        grad = model.item.table.weight.grad
        assert grad is not None and grad.is_sparse == sparse
        grads[sparse] = grad.to_dense() if sparse else grad
    assert torch.allclose(grads[True], grads[False], atol=1e-5)

    # Lazy Adam skips untouched rows (dense Adam keeps moving them with old momentum), so runs
    # are not bit-identical, but they learn the same way.
    losses = {}
    for mode in ("on", "off"):
        pretrain(
            tiny_config(
                sim_data,
                tmp_path / mode,
                max_steps=10,
                log_every=1,
                sparse_embeddings=mode,
                table_lr=0.0,  # at the backbone's rate, where lazy and dense Adam stay close
            ),
            progress=False,
        )
        losses[mode] = np.array(losses_of(tmp_path / mode))
    # every step within 5%, the whole curve within 2% (the untouched rows' drift compounds)
    assert np.allclose(losses["on"], losses["off"], rtol=0.05)
    assert abs(losses["on"].mean() - losses["off"].mean()) < 0.02 * losses["off"].mean()
    assert losses["on"][-1] < losses["on"][0]


def test_fine_tuning_s_new_parts_get_their_own_learning_rates() -> None:
    """The towers and the retrieval space are new to the backbone: ``tower_lr`` and ``retrieval_lr``
    apply to them (and to nothing else), the backbone keeps ``lr``."""
    from model.finetune import FinetuneConfig
    from model.trainer import Optimizers

    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=8, runtime_head=True))
    cfg = FinetuneConfig(data="-", out="-", lr=1e-3, tower_lr=4e-3, retrieval_lr=2e-2)
    optimizers = Optimizers(model, cfg, sparse=False)
    optimizers.set_lr(cfg.lr)
    rate = {id(p): g["lr"] for g in optimizers.dense.param_groups for p in g["params"]}
    towers = {"user_proj", "item_mlp", "item_popularity", "user_taste", "item_taste"}
    towers |= {"runtime_proj", "runtime_taste"}
    for name, parameter in model.named_parameters():
        module = name.split(".")[0]
        expected = 4e-3 if module in towers else 1e-3
        expected = 2e-2 if module in ("retrieval_item", "retrieval_head") else expected
        expected = (cfg.table_lr or cfg.lr) if name == "item.table.weight" else expected
        assert rate[id(parameter)] == pytest.approx(expected), name
    same = Optimizers(model, FinetuneConfig(data="-", out="-", tower_lr=0.0), sparse=False)
    same.set_lr(1e-3)
    assert len(same.dense.param_groups) == 4  # decay, no decay, table, retrieval: towers at lr


def test_tower_weight_decay_reaches_the_towers_matrices_only() -> None:
    """``tower_weight_decay`` decays the towers' weight matrices at their own rate; their
    embeddings and biases, and every other part, keep what they had (none by default)."""
    from model.finetune import FinetuneConfig
    from model.trainer import Optimizers

    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=8))
    towers = {"user_proj", "item_mlp", "item_popularity", "user_taste", "item_taste"}
    embeddings = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()
    }
    for wd in (0.0, 0.25):
        cfg = FinetuneConfig(data="-", out="-", tower_weight_decay=wd)
        groups = Optimizers(model, cfg, sparse=False).dense.param_groups
        decay = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
        decayed = 0
        for name, parameter in model.named_parameters():
            if name.split(".")[0] not in towers:
                assert decay[id(parameter)] in (0.0, cfg.weight_decay), name
                continue
            matrix = parameter.ndim >= 2 and id(parameter) not in embeddings
            assert decay[id(parameter)] == (wd if matrix else 0.0), name
            decayed += matrix
        assert decayed >= 2  # u's projection and the item MLP at least
    with pytest.raises(ValueError, match="tower_weight_decay"):
        FinetuneConfig(data="-", out="-", tower_weight_decay=-0.1)


def test_the_warm_start_reads_the_positives_or_a_sample_of_them(sim_data: Path) -> None:
    """Every item with a positive gets its unit-length factor row; past ``max_positives`` a
    seeded sample of the positives is read (fewer items warmed), and none leaves the table as
    it was."""
    events = read_events(sim_data)
    warmed = {}
    for cap in (10**9, 300, 0):
        torch.manual_seed(0)
        model = Argus(preset("argus-tiny"))
        before = model.item.table.weight.detach().clone()
        warm_start(model, events, progress=False, max_positives=cap)
        warmed[cap] = int((model.item.table.weight != before).any(1).sum())
        if cap == 10**9:
            catalog = Catalog.from_events(events.take(events.positive))
            with torch.no_grad():
                ids, artists = (torch.from_numpy(a) for a in (catalog.ids, catalog.artist_id))
                norms = model.item_embedding(ids, artists).norm(dim=1)
            assert float(torch.median(norms)) == pytest.approx(1.0, abs=0.02)
    assert warmed[10**9] > warmed[300] > 0 and warmed[0] == 0


def test_the_retrieval_table_warm_starts_alone_from_the_same_factors(sim_data: Path) -> None:
    """``retrieval=True`` (fine-tuning's ``warm_retrieval``): every item with a positive gets
    its unit-length factor row of rank ``retrieval_dim`` in the retrieval space's table, and
    the backbone's item table stays as it was."""
    from model.future import positive_factors

    events = read_events(sim_data)
    torch.manual_seed(0)
    model = Argus(preset("argus-tiny", tower_dim=8, retrieval_dim=12))
    item_table = model.item.table.weight.detach().clone()
    warm_start(model, events, progress=False, retrieval=True)
    assert torch.equal(model.item.table.weight, item_table)
    end = int(events.timestamp.max()) + 1
    ids, factors = positive_factors(events, end, rank=12)
    with torch.no_grad():
        got = model.retrieval_items(torch.from_numpy(ids))
    want = torch.from_numpy(factors).float()
    assert float(torch.median(got.norm(dim=1))) == pytest.approx(1.0, abs=0.02)
    assert float(torch.nn.functional.cosine_similarity(got, want).median()) > 0.95
