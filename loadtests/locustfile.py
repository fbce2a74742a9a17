"""Locust load for an argus service: ``/candidates`` and ``/score`` for Zipf-distributed users.

* Users are drawn by rank with P(rank r) ~ 1 / r^s (``--zipf``, default 1.1): a few heavy users
  and a long tail, as in real logs. With ``--bundle DIR`` the ids are the bundle's real user and
  item ids (ranks shuffled over them); otherwise ``1..--max-user-id`` and ``1..--max-item-id``.
* The mix: ``/candidates`` (k from 10, 50, 100, 200) and ``/score`` (10, 100, 500 or 1000 items)
  in the ratio of their task weights; ``--realtime-share`` of both send a live ``history``
  (8 to 256 recent events), which the service re-encodes with the transformer. Realtime requests
  are reported under their own name.

Run headless with thresholds through ``loadtests/run.py``; or interactively:
``locust -f loadtests/locustfile.py --host http://127.0.0.1:8000``.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
from locust import FastHttpUser, events, task

K_CHOICES = (10, 50, 100, 200)
SCORE_SIZES = (10, 100, 500, 1000)


@events.init_command_line_parser.add_listener
def options(parser: Any) -> None:
    parser.add_argument("--bundle", default="", help="bundle directory to draw real ids from")
    parser.add_argument("--max-user-id", type=int, default=5_000)
    parser.add_argument("--max-item-id", type=int, default=20_000)
    parser.add_argument("--zipf", type=float, default=1.1, help="exponent of user popularity")
    parser.add_argument("--realtime-share", type=float, default=0.1)
    parser.add_argument("--think-time", type=float, default=0.0, help="max seconds between tasks")


class Ids:
    """Zipf-drawn user ids and uniform item ids (one instance per locust process)."""

    def __init__(self, options: Any) -> None:
        rng = np.random.default_rng(0)
        if options.bundle:
            bundle = Path(options.bundle)
            users = np.load(bundle / "user_ids.npy", mmap_mode="r", allow_pickle=False)
            self.items = np.load(bundle / "item_ids.npy", allow_pickle=False)
            self.users = rng.permutation(np.asarray(users))
        else:
            self.users = rng.permutation(np.arange(1, options.max_user_id + 1))
            self.items = np.arange(1, options.max_item_id + 1)
        weights = 1.0 / np.arange(1, len(self.users) + 1) ** options.zipf
        self.cdf = np.cumsum(weights / weights.sum())

    def user(self) -> int:
        rank = min(int(np.searchsorted(self.cdf, random.random())), len(self.users) - 1)
        return int(self.users[rank])

    def item_ids(self, n: int) -> list[int]:
        return [int(self.items[random.randrange(len(self.items))]) for _ in range(n)]


_ids: Ids | None = None


class ArgusUser(FastHttpUser):
    think_time = 0.0

    def wait_time(self) -> float:
        return random.uniform(0, self.think_time)

    def on_start(self) -> None:
        global _ids
        options = self.environment.parsed_options
        if _ids is None:
            _ids = Ids(options)
        self.ids = _ids
        self.realtime_share = options.realtime_share
        self.think_time = options.think_time

    def history(self) -> list[dict[str, Any]] | None:
        if random.random() >= self.realtime_share:
            return None
        now = int(time.time())
        length = random.choice((8, 32, 128, 256))
        return [
            {
                "item_id": item,
                "timestamp": now - 60 * (length - n),
                "source": 0,
                "played_ratio": round(random.random(), 2),
            }
            for n, item in enumerate(self.ids.item_ids(length))
        ]

    def post(self, path: str, body: dict[str, Any]) -> None:
        name = f"{path} realtime" if body.get("history") else path
        with self.client.post(path, json=body, name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"{response.status_code}: {response.text[:200]}")

    @task(3)
    def candidates(self) -> None:
        body: dict[str, Any] = {"user_id": self.ids.user(), "k": random.choice(K_CHOICES)}
        if (history := self.history()) is not None:
            body["history"] = history
        self.post("/candidates", body)

    @task(2)
    def score(self) -> None:
        n = random.choice(SCORE_SIZES)
        body: dict[str, Any] = {"user_id": self.ids.user(), "item_ids": self.ids.item_ids(n)}
        if (history := self.history()) is not None:
            body["history"] = history
        self.post("/score", body)
