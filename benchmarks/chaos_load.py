"""The locust load of ``benchmarks/chaos.py``: a steady open rate of ``/candidates`` (k = 100)
and ``/score`` (10 items) for Zipf-drawn users of the bundle, a share of them with a live
``history`` (the realtime path), and every response recorded as one NDJSON line (its start time,
latency, status, source, degraded flag and model version; for a stored ``/score`` also the
user, items and scores, which ``chaos.py`` checks against that version's vectors).

    locust -f benchmarks/chaos_load.py --headless --host URL --users 32 --spawn-rate 32 \\
        --bundle DIR --rate 500 --record out.ndjson --run-time 10m
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson
from locust import FastHttpUser, events, task
from locust.env import Environment

_record: IO[bytes] | None = None
_ids: dict[str, np.ndarray] = {}


@events.init_command_line_parser.add_listener
def options(parser: Any) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory to draw real ids from")
    parser.add_argument("--rate", type=float, default=0.0, help="requests/s in all; 0: closed loop")
    parser.add_argument("--record", default="", help="NDJSON file of every response")
    parser.add_argument("--realtime-share", type=float, default=0.1)


@events.test_start.add_listener
def opened(environment: Environment, **_: Any) -> None:
    global _record
    options = environment.parsed_options
    assert options is not None
    if options.record:
        _record = open(options.record, "ab")  # noqa: SIM115 - closed at test_stop
    bundle = Path(options.bundle)
    rng = np.random.default_rng(0)
    users = rng.permutation(np.load(bundle / "user_ids.npy", allow_pickle=False))
    weights = 1.0 / np.arange(1, len(users) + 1)
    _ids["users"], _ids["cdf"] = users, np.cumsum(weights / weights.sum())
    _ids["items"] = np.load(bundle / "item_ids.npy", allow_pickle=False)


@events.test_stop.add_listener
def closed(**_: Any) -> None:
    if _record is not None:
        _record.close()


class ChaosUser(FastHttpUser):
    def wait_time(self) -> float:
        """An open rate: each of the N users sends ``rate / N`` requests/s (exponential gaps)."""
        rate = self.environment.parsed_options.rate
        if rate <= 0:
            return 0.0
        return random.expovariate(rate / max(self.environment.runner.user_count, 1))

    def user(self) -> int:
        rank = int(np.searchsorted(_ids["cdf"], random.random()))
        return int(_ids["users"][min(rank, len(_ids["users"]) - 1)])

    def items(self, n: int) -> list[int]:
        items = _ids["items"]
        return [int(items[random.randrange(len(items))]) for _ in range(n)]

    def history(self) -> list[dict[str, Any]] | None:
        if random.random() >= self.environment.parsed_options.realtime_share:
            return None
        now = int(time.time())
        return [
            {"item_id": item, "timestamp": now - 60 * (32 - n)}
            for n, item in enumerate(self.items(32))
        ]

    def post(self, path: str, body: dict[str, Any]) -> None:
        began = time.time()
        with self.client.post(path, json=body, name=path, catch_response=True) as response:
            ms = 1e3 * (time.time() - began)
            line: dict[str, Any] = {"t": began, "path": path, "status": response.status_code}
            line["ms"] = ms
            if response.status_code == 200:
                answer = orjson.loads(response.content or b"{}")
                line |= {k: answer.get(k) for k in ("source", "degraded", "model_version")}
                if path == "/score" and answer.get("source") == "stored":
                    line |= {"user": body["user_id"], "items": body["item_ids"]}
                    line["scores"] = answer["scores"]
            else:
                response.failure(f"{response.status_code}: {response.text[:200]}")
            if _record is not None:
                _record.write(orjson.dumps(line) + b"\n")

    @task(3)
    def candidates(self) -> None:
        body: dict[str, Any] = {"user_id": self.user(), "k": 100}
        if (history := self.history()) is not None:
            body["history"] = history
        self.post("/candidates", body)

    @task(2)
    def score(self) -> None:
        body: dict[str, Any] = {"user_id": self.user(), "item_ids": self.items(10)}
        if (history := self.history()) is not None:
            body["history"] = history
        self.post("/score", body)
