"""``argus demo`` end to end (small sizes), its printed curl examples, a 20-second headless locust
run against the service it started, the load runner's thresholds, and a second run that reuses
every stage and publishes to Redis; then ``scripts/daily.sh``, the CronJob's command."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from argus.servers import free_port
from index.bundle import list_versions

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--users",
    "300",
    "--items",
    "2000",
    "--days",
    "10",
    "--pretrain-steps",
    "20",
    "--finetune-steps",
    "20",
]


def argus_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARGUS_")}
    return env | extra


class Demo:
    """``argus demo`` in a child process, its output collected line by line."""

    def __init__(self, root: Path, port: int) -> None:
        command = [
            sys.executable,
            "-m",
            "argus",
            "demo",
            "--root",
            str(root),
            *SMALL,
            "--port",
            str(port),
        ]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=argus_env()
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(text in line for line in self.lines):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.reader.join(timeout=2)
                output = "\n".join(self.lines[-60:])
                raise AssertionError(f"no {text!r} from argus demo:\n{output}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM, as ``docker stop`` sends: the demo stops its service too."""
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Demo, Path, str]]:
    root, port = tmp_path_factory.mktemp("demo"), free_port()
    running = Demo(root, port)
    try:
        running.wait_for("Ctrl-C stops the service", timeout_s=600)
        yield running, root, f"http://127.0.0.1:{port}"
    finally:
        running.stop()
    with socket.socket() as probe:  # the service went with the demo: nothing listens there
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
        probe.bind(("127.0.0.1", port))


def test_demo_serves_and_its_curl_examples_answer_200(demo: tuple[Demo, Path, str]) -> None:
    running, _, _ = demo
    for stage in ("simulate", "pretrain", "finetune", "export", "build"):
        assert any(line.startswith(f"$ argus {stage} ") for line in running.lines), stage
    # It measured itself through the service it started: recall vs the most-popular list.
    replay = [line for line in running.lines if "/candidates recall@100" in line]
    assert len(replay) == 1, running.lines[-30:]
    found = re.search(r"recall@100 (\d\.\d{3}) vs most popular (\d\.\d{3})", replay[0])
    assert found and 0.0 < float(found[1]) <= 1.0 and 0.0 < float(found[2]) <= 1.0, replay[0]
    pairs = re.search(r"PairAccuracy (\d\.\d{4}) vs most popular (\d\.\d{4})", replay[0])
    assert pairs and 0.0 < float(pairs[1]) < 1.0 and 0.0 < float(pairs[2]) < 1.0, replay[0]
    examples = [line for line in running.lines if line.startswith("curl ")]
    assert len(examples) == 4 and any("/events" in e for e in examples)
    for example in examples:
        command = shlex.split(example)
        command[1:1] = ["-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30"]
        status = subprocess.run(command, capture_output=True, text=True).stdout
        assert status == "200", f"{example} -> {status}"
    answer = subprocess.run(shlex.split(examples[0]), capture_output=True, text=True).stdout
    assert '"source":"stored"' in answer and answer.count('"item_id"') == 10


def loadtest(url: str, out: Path, duration: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(ROOT / "loadtests" / "run.py"),
        "--host",
        url,
        "--users",
        "8",
        "--spawn-rate",
        "8",
        "--duration",
        duration,
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_a_20_second_locust_run_against_the_demo_has_no_failure(
    demo: tuple[Demo, Path, str], tmp_path: Path
) -> None:
    _, root, url = demo
    bundle = list_versions(root / "bundles" / "demo")[-1]
    run = loadtest(
        url,
        tmp_path,
        "20s",
        "--bundle",
        str(bundle),
        "--max-fail-ratio",
        "0",
        "--max-p99-ms",
        "5000",
    )
    summary = run.stdout.strip().splitlines()[-1]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert summary.endswith("PASS") and " 0 failures" in summary, summary
    requests = int(re.search(r"loadtest: ([\d,]+) requests", summary)[1].replace(",", ""))  # type: ignore[index]
    assert requests > 100
    assert (tmp_path / "locust_stats.csv").is_file() and (tmp_path / "locust.html").is_file()
    stats = (tmp_path / "locust_stats.csv").read_text()
    assert "/candidates realtime" in stats and "/score" in stats  # the mix really ran


def test_the_load_runner_fails_when_a_threshold_breaks(
    demo: tuple[Demo, Path, str], tmp_path: Path
) -> None:
    _, _, url = demo
    run = loadtest(url, tmp_path, "3s", "--max-p99-ms", "0.001")
    assert run.returncode == 1 and "FAIL: p99" in run.stdout, run.stdout[-2000:]


def test_a_second_run_reuses_every_stage_and_publishes_to_redis(
    demo: tuple[Demo, Path, str], redis_url: str
) -> None:
    _, root, _ = demo
    command = [sys.executable, "-m", "argus", "demo", "--root", str(root), *SMALL, "--no-serve"]
    began = time.monotonic()
    run = subprocess.run(
        command, capture_output=True, text=True, env=argus_env(ARGUS_REDIS_URL=redis_url)
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("simulate", "pretrain", "finetune", "export", "build"):
        assert f"= {stage}: already done" in run.stdout
    assert time.monotonic() - began < 60
    current = redis.Redis.from_url(redis_url).get("argus:current")
    assert current == list_versions(root / "bundles" / "demo")[-1].name.encode()


def test_the_daily_script_exports_builds_and_publishes(
    finetuned: Path, sim_data: Path, redis_url: str, tmp_path: Path
) -> None:
    bundles = tmp_path / "bundles"
    env = argus_env(
        ARGUS_CHECKPOINT=str(finetuned),
        ARGUS_DATA=str(sim_data),
        ARGUS_BUNDLES=str(bundles),
        ARGUS_REDIS_URL=redis_url,
        ARGUS_BIN=str(Path(sys.executable).with_name("argus")),
    )
    run = subprocess.run(
        [str(ROOT / "scripts" / "daily.sh")], capture_output=True, text=True, env=env
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (bundle,) = list_versions(bundles)
    assert redis.Redis.from_url(redis_url).get("argus:current") == bundle.name.encode()
    assert list((tmp_path / "exports").iterdir()) == []  # the export was cleaned up
    missing = subprocess.run(
        [str(ROOT / "scripts" / "daily.sh")], capture_output=True, text=True, env=argus_env()
    )
    assert missing.returncode != 0 and "ARGUS_CHECKPOINT" in missing.stderr
