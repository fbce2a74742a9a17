from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from argus.cli import app


def test_help_lists_only_working_commands() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (
        "simulate",
        "convert",
        "validate",
        "presets",
        "pretrain",
        "finetune",
        "evaluate",
    ):
        assert command in result.output
    convert = CliRunner().invoke(app, ["convert", "--help"])
    assert "ml100k" in convert.output and "yambda" in convert.output


def test_validate_names_the_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2 and "bad.parquet: not a readable Parquet file" in result.output
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such file or directory" in result.output


def test_console_script_runs_end_to_end(tmp_path: Path) -> None:
    argus = shutil.which("argus", path=str(Path(sys.executable).parent))
    assert argus is not None, "the argus console script is not installed in this environment"
    out = tmp_path / "sim"
    run = subprocess.run(
        [argus, "simulate", "--users", "20", "--items", "100", "--days", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "simulated" in run.stdout and "events/s" in run.stdout
    assert "simulate" in run.stderr  # the progress bar goes to stderr
    check = subprocess.run(
        [argus, "validate", str(out)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0 and "valid events" in check.stdout


def test_presets_lists_each_size_with_its_counts() -> None:
    result = CliRunner().invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split()[1:] for line in result.output.splitlines()[1:]}
    assert set(rows) == {"argus-tiny", "argus-3m", "argus-30m", "argus-130m", "argus-1b"}
    d_model, transformer, embedding, table, total = rows["argus-1b"]
    assert (d_model, transformer) == ("2048", "1,007,165,440")
    assert (embedding, table) == ("134,217,728", "524288x256")  # the seed's 130M-parameter table
    assert int(total.replace(",", "")) < 1.2e9  # was 2.1B with a 2^19 x 2048 table


def test_pretrain_then_evaluate_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "sim"
    simulate = ["simulate", "--users", "40", "--items", "200", "--days", "8", "--out", str(data)]
    assert runner.invoke(app, [*simulate, "--quiet"]).exit_code == 0
    run = tmp_path / "run"
    pretrain = [
        "pretrain",
        "--data",
        str(data),
        "--out",
        str(run),
        "--preset",
        "argus-tiny",
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--test-days",
        "2",
        "--quiet",
        "--model",
        "n_uniform_negatives=32",
        "--set",
        "warmup_steps=1",
    ]
    result = runner.invoke(app, pretrain)
    assert result.exit_code == 0, result.output
    assert "pretrained argus-tiny (argus" in result.output and "events/s" in result.output
    again = runner.invoke(app, pretrain)
    assert again.exit_code == 2 and "already exists; pass --resume" in again.output
    bad = runner.invoke(app, [*pretrain[:4], str(tmp_path / "bad"), "--model", "d_model=big"])
    assert bad.exit_code == 2 and "d_model='big': expected int" in bad.output

    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--out", str(run)])
    assert result.exit_code == 0, result.output
    assert "| ARGUS (run) |" in result.output and "| MostPop |" in result.output
    assert (run / "eval.json").exists() and (run / "eval.md").exists()


def test_finetune_then_evaluate_pair_accuracy_from_the_command_line(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "sim"
    simulate = ["simulate", "--users", "40", "--items", "200", "--days", "8", "--out", str(data)]
    assert runner.invoke(app, [*simulate, "--quiet"]).exit_code == 0
    pre, fine = tmp_path / "pre", tmp_path / "fine"
    common = ["--data", str(data), "--max-steps", "4", "--batch-size", "4", "--test-days", "2"]
    pretrain = ["pretrain", *common, "--out", str(pre), "--preset", "argus-tiny", "--quiet"]
    assert runner.invoke(app, pretrain).exit_code == 0
    finetune = [
        "finetune",
        *common,
        "--out",
        str(fine),
        "--init",
        str(pre),
        "--lag",
        "12h",
        "--group",
        "session",
        "--pair-weights",
        "like>skip=5",
        "--tower-dim",
        "8",
        "--quiet",
    ]
    result = runner.invoke(app, finetune)
    assert result.exit_code == 0, result.output
    assert "fine-tuned argus-tiny (pairwise" in result.output
    bad = runner.invoke(app, [*finetune[:-10], str(tmp_path / "bad"), "--lag", "soon"])
    assert bad.exit_code == 2 and "'soon' is not a duration" in bad.output
    bad = runner.invoke(app, [*finetune[:-10], str(tmp_path / "bad"), "--pair-weights", "a>b=1"])
    assert bad.exit_code == 2 and "unknown grade 'a'" in bad.output

    result = runner.invoke(
        app, ["evaluate", str(pre), str(fine), "--data", str(data), "--out", str(fine)]
    )
    assert result.exit_code == 0, result.output
    assert "(lag 12h, groups session)" in result.output
    for row in ("| ARGUS (pre) |", "| ARGUS fine-tuned (fine) |", "| MostPop |", "| Oracle"):
        assert row in result.output
    report = json.loads((fine / "eval.json").read_text())
    assert report["pairs"]["pairs"] > 0
    for name in ("ARGUS fine-tuned (fine)", "MostPop", "Oracle (simulator truth)"):
        assert 0.0 <= report["models"][name]["pair_accuracy"] <= 1.0
    assert "pair_accuracy" not in report["models"]["ARGUS (pre)"]  # no towers, no score


def gib(output: str, row: str) -> float:
    line = next(x for x in output.splitlines() if x.strip().startswith(row))
    return float(line.split()[-2])


def test_a_dry_run_prints_per_rank_memory_without_data() -> None:
    runner = CliRunner()
    sharded = runner.invoke(app, ["pretrain", "--preset", "argus-1b", "--dry-run", "8"])
    whole = runner.invoke(
        app, ["pretrain", "--preset", "argus-1b", "--dry-run", "8", "--set", "parallel=ddp"]
    )
    assert sharded.exit_code == 0 and whole.exit_code == 0, sharded.output + whole.output
    assert "FSDP over 8 ranks" in sharded.output and "DDP over 8 ranks" in whole.output
    # 1,171,433,989 parameters: fp32 weights are 4.36 GiB whole, an eighth of it sharded
    assert gib(whole.output, "parameters") == 4.36
    assert gib(sharded.output, "optimizer state") == round(8 * 1_171_433_989 / 8 / 2**30, 2)
    assert gib(sharded.output, "total") < gib(whole.output, "total")
    longer = runner.invoke(
        app, ["pretrain", "--preset", "argus-1b", "--dry-run", "8", "--max-len", "8192"]
    )
    assert gib(longer.output, "activations") == 4 * gib(sharded.output, "activations")
    missing = runner.invoke(app, ["pretrain", "--preset", "argus-tiny"])
    assert missing.exit_code == 2 and "--data and --out are required" in missing.output
