"""The runtime user encoder: ONNX Runtime behind a dynamic batcher (DESIGN.md §8).

Concurrent requests each submit one history; a worker thread takes the first waiting one, waits at
most ``max_delay_ms`` for more (up to ``max_batch``), right-pads the batch to its longest history
and runs the session once — the way Triton's dynamic batcher trades a little latency for
throughput. ONNX Runtime releases the GIL while it runs, so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class EncoderUnavailable(RuntimeError):
    """The runtime encoder cannot answer this request in time: its queue is full, the deadline
    passed, or it was retired. The caller answers from the next vector source."""


@dataclass
class _Job:
    history: np.ndarray
    future: Future[np.ndarray]
    queued: float


class DynamicBatcher:
    """Batches concurrent :meth:`encode` calls onto one :class:`Encoder` from a worker thread.

    ``observe(batch_size, queue_delay_s)`` is called for every batch (the service's metrics).
    Every request has a deadline (``timeout_s``) and the queue a bound (``max_queue``); either
    answers :class:`EncoderUnavailable` instead of waiting. The worker survives anything a batch
    or a caller does (a cancelled request, a failing batch); :attr:`alive` says it is running.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        max_batch: int = 32,
        max_delay_ms: float = 2.0,
        observe: Callable[[int, float], None] | None = None,
        timeout_s: float = 1.0,
        max_queue: int = 1_024,
    ) -> None:
        if max_batch < 1 or max_delay_ms < 0 or timeout_s <= 0 or max_queue < 1:
            raise ValueError(
                "max_batch >= 1, max_delay_ms >= 0, timeout_s > 0 and max_queue >= 1 are required"
            )
        self.encoder, self.max_batch, self.max_delay = encoder, max_batch, max_delay_ms / 1e3
        self.observe, self.timeout_s = observe, timeout_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="argus-encoder", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread is running and takes requests."""
        return self._thread.is_alive() and not self._closed

    def submit(self, history: np.ndarray) -> Future[np.ndarray]:
        if not self.alive:
            raise EncoderUnavailable("the runtime encoder is retired or its worker stopped")
        future: Future[np.ndarray] = Future()
        try:
            self._queue.put_nowait(_Job(history, future, time.perf_counter()))
        except queue.Full:
            raise EncoderUnavailable(
                f"the runtime encoder's queue is full ({self._queue.maxsize} waiting)"
            ) from None
        return future

    async def encode(self, history: np.ndarray) -> np.ndarray:
        """The ``[dim]`` vector of one history, batched with whatever else is waiting; raises
        :class:`EncoderUnavailable` past the deadline (the request is then dropped)."""
        future = self.submit(history)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise EncoderUnavailable(
                f"the runtime encoder did not answer within {self.timeout_s:.3f} s"
            ) from None

    def close(self, *, wait: bool = True) -> None:
        """Stop after the histories already queued (later ones are refused); ``wait`` joins."""
        self._closed = True
        with contextlib.suppress(queue.Full):  # full and not draining: the worker is gone
            self._queue.put(None, timeout=1.0)
        if wait:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                self._fail_waiting()
                return
            jobs = [first]
            deadline = first.queued + self.max_delay
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    job = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if job is None:
                    stop = True  # finish this batch, then stop
                    break
                jobs.append(job)
            # Requests cancelled while waiting (their deadline passed) are dropped, not encoded.
            jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
            if jobs:
                self._answer(jobs, first.queued)
            if stop:
                self._fail_waiting()
                return

    def _answer(self, jobs: list[_Job], first_queued: float) -> None:
        started = time.perf_counter()
        try:
            vectors = self.encoder.encode([job.history for job in jobs])
        except Exception as error:  # a bad batch fails its requests, never the thread
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, vector in zip(jobs, vectors, strict=True):
            job.future.set_result(vector)
        if self.observe is not None:
            with contextlib.suppress(Exception):  # a metrics failure must not stop the encoder
                self.observe(len(jobs), started - first_queued)

    def _fail_waiting(self) -> None:
        """After close: whatever is still queued is answered, never left waiting forever."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(EncoderUnavailable("the runtime encoder was retired"))
