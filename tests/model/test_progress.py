from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model.progress import bar


def test_piped_progress_is_plain_lines_at_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()  # not a terminal
    monkeypatch.setenv("ARGUS_PROGRESS_INTERVAL", "0")
    for _ in bar(range(50), desc="work", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and lines and all(line.startswith("work") for line in lines)
    assert "50/50" in lines[-1]
    # The default interval: a quick loop logs its start and its end, nothing between.
    monkeypatch.delenv("ARGUS_PROGRESS_INTERVAL")
    out = io.StringIO()
    for _ in bar(range(10_000), desc="work", file=out):
        pass
    assert len(out.getvalue().splitlines()) <= 2 and "10000/10000" in out.getvalue()


def test_a_stage_piped_to_a_file_writes_no_carriage_returns(tmp_path: Path) -> None:
    env = {**os.environ, "ARGUS_PROGRESS_INTERVAL": "0"}
    command = [sys.executable, "-m", "argus", "simulate", "--users", "300", "--items", "500"]
    command += ["--days", "3", "--out", str(tmp_path / "data")]
    done = subprocess.run(command, capture_output=True, env=env, check=True)  # bytes: \r kept
    assert b"simulate" in done.stderr and b"\r" not in done.stderr, done.stderr[-500:]
    assert b"300/300" in done.stderr


def test_a_bad_interval_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARGUS_PROGRESS_INTERVAL", "soon")
    with pytest.raises(ValueError, match="ARGUS_PROGRESS_INTERVAL"):
        bar(range(3), file=io.StringIO())
