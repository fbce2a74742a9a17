"""The runtime user encoder: ONNX Runtime behind a dynamic batcher (DESIGN.md §8).

Concurrent requests each submit one history; a worker thread takes the first waiting one, waits at
most ``max_delay_ms`` for more (up to ``max_batch``), right-pads the batch to its longest history
and runs the session once — the way Triton's dynamic batcher trades a little latency for
throughput. ONNX Runtime releases the GIL while it runs, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from model.contract import ENCODER_INPUTS, HISTORY_EVENT

INT_FIELDS = ("item_id", "artist_id", "timestamp", "source")


def has_cuda_driver() -> bool:
    """Whether an NVIDIA driver is installed (onnxruntime-gpu lists its CUDA provider anyway)."""
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def providers(device: str) -> list[str]:
    """``auto``: CUDA when this onnxruntime build and an NVIDIA driver are there, else CPU;
    ``cpu``; ``cuda`` (an error when unavailable)."""
    available = ort.get_available_providers()
    if not has_cuda_driver():
        available = [p for p in available if p != "CUDAExecutionProvider"]
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ValueError(f"device cuda asked for, but onnxruntime only has {available}")
    if device in ("cuda", "auto") and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def pad(histories: list[np.ndarray], max_len: int) -> dict[str, np.ndarray]:
    """The encoder's inputs for ``histories`` (HISTORY_EVENT arrays, oldest first, non-empty):
    the most recent ``max_len`` events of each, right-padded to the longest."""
    cut = [h[-max_len:] for h in histories]
    lengths = np.array([len(h) for h in cut], dtype=np.int64)
    if lengths.min() < 1:
        raise ValueError("cannot encode an empty history")
    width = int(lengths.max())
    batch = np.zeros((len(cut), width), dtype=HISTORY_EVENT)
    batch["artist_id"], batch["played_ratio"] = -1, np.nan
    for row, events in enumerate(cut):
        batch[row, : len(events)] = events
    inputs = {name: batch[name].astype(np.int64) for name in INT_FIELDS}
    inputs["played_ratio"] = batch["played_ratio"].astype(np.float32)
    inputs["liked"], inputs["disliked"] = batch["liked"].copy(), batch["disliked"].copy()
    inputs["lengths"] = lengths
    return {name: inputs[name] for name in ENCODER_INPUTS}


class Encoder:
    """One ONNX Runtime session of a bundle's ``encoder.onnx``."""

    def __init__(self, path: str | Path, *, max_len: int, device: str = "auto", threads: int = 0):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        self.max_len = max_len
        self.provider = self.session.get_providers()[0]

    def encode(self, histories: list[np.ndarray]) -> np.ndarray:
        """``[len(histories), dim]`` float32 user vectors."""
        (vectors,) = self.session.run(None, pad(histories, self.max_len))
        return np.asarray(vectors, dtype=np.float32)


@dataclass
class _Job:
    history: np.ndarray
    future: Future[np.ndarray]
    queued: float


class DynamicBatcher:
    """Batches concurrent :meth:`encode` calls onto one :class:`Encoder` from a worker thread.

    ``observe(batch_size, queue_delay_s)`` is called for every batch (the service's metrics).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        observe: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_delay_ms < 0:
            raise ValueError("max_batch >= 1 and max_delay_ms >= 0 are required")
        self.encoder, self.max_batch, self.max_delay = encoder, max_batch, max_delay_ms / 1e3
        self.observe = observe
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="argus-encoder", daemon=True)
        self._thread.start()

    def submit(self, history: np.ndarray) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        self._queue.put(_Job(history, future, time.perf_counter()))
        return future

    async def encode(self, history: np.ndarray) -> np.ndarray:
        """The ``[dim]`` vector of one history, batched with whatever else is waiting."""
        return await asyncio.wrap_future(self.submit(history))

    def close(self, *, wait: bool = True) -> None:
        """Stop after the histories already queued; ``wait`` joins the thread."""
        self._queue.put(None)
        if wait:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs = [first]
            deadline = first.queued + self.max_delay
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                jobs.append(job)
            started = time.perf_counter()
            try:
                vectors = self.encoder.encode([job.history for job in jobs])
            except Exception as error:  # a bad batch fails its requests, never the thread
                for job in jobs:
                    job.future.set_exception(error)
                continue
            for job, vector in zip(jobs, vectors, strict=True):
                job.future.set_result(vector)
            if self.observe is not None:
                self.observe(len(jobs), started - first.queued)
