"""Progress bars that suit where the output goes.

On a terminal, a live ``tqdm`` bar. Piped to a file (CI, ``kubectl logs``, a CronJob), the same
bar as plain lines: no carriage returns, one line every ``ARGUS_PROGRESS_INTERVAL`` seconds
(default 30) and one at the end, so a long run logs a few lines a minute instead of rewriting
one line hundreds of times.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
DEFAULT_INTERVAL_S = 30.0


class Lines:
    """A stream that turns tqdm's carriage-return updates into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        for part in text.replace("\r", "\n").split("\n"):
            if part.strip():
                self.stream.write(part.rstrip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def log_interval_s() -> float:
    value = os.environ.get("ARGUS_PROGRESS_INTERVAL", "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_INTERVAL_S
    except ValueError:
        raise ValueError(f"ARGUS_PROGRESS_INTERVAL={value!r}: expected seconds") from None


def bar(iterable: Iterable[T] | None = None, **options: Any) -> tqdm:
    """``tqdm(iterable, **options)``, written as plain lines when stderr is not a terminal."""
    stream = options.pop("file", sys.stderr)
    if not stream.isatty():
        interval = log_interval_s()
        options = {"mininterval": interval, "maxinterval": max(interval, 10.0), **options}
        options.update(file=Lines(stream), dynamic_ncols=False, ncols=100, ascii=True)
    else:
        options["file"] = stream
    return tqdm(iterable, **options)
