"""The runtime user encoder: ONNX Runtime behind a dynamic batcher.

Concurrent requests each submit one history; a worker thread takes the first waiting one, waits at
most ``max_delay_ms`` for more (up to ``max_batch``), right-pads the batch to its longest history
and runs the session once — the way Triton's dynamic batcher trades a little latency for
throughput. ONNX Runtime releases the GIL while it runs, so the event loop keeps serving.

With a bundle that has the step graph and a cache budget, the worker keeps each user's encoder
state (:mod:`service.encoder_cache`): a history that extends the cached one is encoded from its
new events only, one at a time per user (the step graph); the histories that need a full encode
are batched as above. Sessions run with I/O binding: the cached keys and values stay on the
encoder's device (the GPU's memory under the CUDA provider) between requests.
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

from model.contract import CACHE_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUT, HISTORY_EVENT
from model.cpus import thread_count
from service.encoder_cache import CacheReport, EncoderCache, State, classify

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


OUTPUTS = (ENCODER_OUTPUT, *CACHE_OUTPUTS)


class Encoder:
    """ONNX Runtime sessions of a bundle's ``encoder.onnx`` and, when it has one and it is given,
    ``encoder_step.onnx``: :attr:`stateful` then says :meth:`encode_states` and :meth:`step`
    work."""

    def __init__(
        self,
        path: str | Path,
        *,
        max_len: int,
        device: str = "auto",
        threads: int = 0,
        step_path: str | Path | None = None,
    ):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or thread_count()
        chosen = providers(device)
        self.session = ort.InferenceSession(str(path), options, providers=chosen)
        self.max_len = max_len
        self.provider = self.session.get_providers()[0]
        self.device_type = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        outputs = {o.name for o in self.session.get_outputs()}
        self.step_session: ort.InferenceSession | None = None
        if step_path is not None and outputs >= set(CACHE_OUTPUTS):
            self.step_session = ort.InferenceSession(str(step_path), options, providers=chosen)
        # what each graph reads (a model without a retrieval space has no taste inputs)
        self._inputs = {
            session: {i.name for i in session.get_inputs()}
            for session in (self.session, self.step_session)
            if session is not None
        }

    @property
    def stateful(self) -> bool:
        return self.step_session is not None

    def window(self, history: np.ndarray) -> np.ndarray:
        """The events of ``history`` the encoder reads: its newest ``max_len``."""
        return history[-self.max_len :]

    def encode(self, histories: list[np.ndarray]) -> np.ndarray:
        """``[len(histories), dim]`` float32 user vectors."""
        (vectors,) = self.session.run([ENCODER_OUTPUT], pad(histories, self.max_len))
        return np.asarray(vectors, dtype=np.float32)

    def encode_states(self, windows: list[np.ndarray]) -> list[State]:
        """The state after each window (non-empty, at most ``max_len``), in one batch."""
        out = self._run(self.session, pad(windows, self.max_len))
        vectors, taste, positives = (out[k].numpy() for k in (ENCODER_OUTPUT, *CACHE_OUTPUTS[2:]))
        keys, values = out["keys"], out["values"]
        if len(windows) > 1:  # split the rows (one row: padded to its own length already)
            all_keys, all_values = keys.numpy(), values.numpy()
            rows = [
                (all_keys[:, b : b + 1, :, : len(w)], all_values[:, b : b + 1, :, : len(w)])
                for b, w in enumerate(windows)
            ]
        else:
            rows = [(keys, values)]
        return [
            State(
                events=window.copy(),
                vector=vectors[b].astype(np.float32),
                keys=self._on_device(k),
                values=self._on_device(v),
                taste_sum=taste[b : b + 1],
                positives=positives[b : b + 1],
            )
            for b, (window, (k, v)) in enumerate(zip(windows, rows, strict=True))
        ]

    def step(self, state: State, window: np.ndarray) -> State:
        """The state after ``window``, which extends ``state.events`` (see
        :func:`service.encoder_cache.classify`): its new events through the step graph."""
        assert self.step_session is not None, "this encoder has no step graph"
        new = window[len(state.events) :]
        feeds: dict[str, np.ndarray | ort.OrtValue] = dict(pad([new], self.max_len))
        feeds.update(
            past_keys=state.keys,
            past_values=state.values,
            last_timestamp=state.events["timestamp"][-1:].astype(np.int64),
            past_taste_sum=state.taste_sum,
            past_positives=state.positives,
        )
        out = self._run(self.step_session, feeds)
        return State(
            events=window.copy(),
            vector=out[ENCODER_OUTPUT].numpy()[0].astype(np.float32),
            keys=out["keys"],
            values=out["values"],
            taste_sum=out["taste_sum"].numpy(),
            positives=out["positives"].numpy(),
        )

    def _on_device(self, value: np.ndarray | ort.OrtValue) -> ort.OrtValue:
        if isinstance(value, ort.OrtValue):
            return value
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device_type, 0)

    def _run(
        self, session: ort.InferenceSession, feeds: dict[str, np.ndarray | ort.OrtValue]
    ) -> dict[str, ort.OrtValue]:
        """One run with I/O binding: keys and values stay on the encoder's device (bound there,
        in and out), the rest comes back to the host. Feeds the graph does not read are left
        out (a model without a retrieval space has no taste inputs)."""
        binding = session.io_binding()
        inputs = self._inputs[session]
        for name, value in feeds.items():
            if name not in inputs:
                continue
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in OUTPUTS:
            binding.bind_output(name, self.device_type if name in ("keys", "values") else "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(OUTPUTS, binding.get_outputs(), strict=True))


class EncoderUnavailable(RuntimeError):
    """The runtime encoder cannot answer this request in time: its queue is full, the deadline
    passed, or it was retired. The caller answers from the next vector source."""


@dataclass
class _Job:
    history: np.ndarray
    user: int | None  # the cache's key (None: not cached)
    future: Future[np.ndarray]
    queued: float


class DynamicBatcher:
    """Batches concurrent :meth:`encode` calls onto one :class:`Encoder` from a worker thread.

    ``observe(batch_size, queue_delay_s)`` is called for every batch (the service's metrics),
    ``observe_cache(report)`` too when the states are cached (``cache_bytes`` > 0 and a stateful
    encoder). Every request has a deadline (``timeout_s``) and the queue a bound (``max_queue``);
    either answers :class:`EncoderUnavailable` instead of waiting. The worker survives anything a
    batch or a caller does (a cancelled request, a failing batch); :attr:`alive` says it runs.
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
        cache_bytes: int = 0,
        observe_cache: Callable[[CacheReport], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_delay_ms < 0 or timeout_s <= 0 or max_queue < 1:
            raise ValueError(
                "max_batch >= 1, max_delay_ms >= 0, timeout_s > 0 and max_queue >= 1 are required"
            )
        self.encoder, self.max_batch, self.max_delay = encoder, max_batch, max_delay_ms / 1e3
        self.observe, self.timeout_s = observe, timeout_s
        self.cache = EncoderCache(cache_bytes) if cache_bytes > 0 and encoder.stateful else None
        self.observe_cache = observe_cache
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="argus-encoder", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """The worker thread is running and takes requests."""
        return self._thread.is_alive() and not self._closed

    def submit(self, history: np.ndarray, user: int | None = None) -> Future[np.ndarray]:
        if not self.alive:
            raise EncoderUnavailable("the runtime encoder is retired or its worker stopped")
        future: Future[np.ndarray] = Future()
        try:
            self._queue.put_nowait(_Job(history, user, future, time.perf_counter()))
        except queue.Full:
            raise EncoderUnavailable(
                f"the runtime encoder's queue is full ({self._queue.maxsize} waiting)"
            ) from None
        return future

    async def encode(self, history: np.ndarray, user: int | None = None) -> np.ndarray:
        """The ``[dim]`` vector of one history (``user``'s: its cached state is continued),
        batched with whatever else is waiting; raises :class:`EncoderUnavailable` past the
        deadline (the request is then dropped)."""
        future = self.submit(history, user)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise EncoderUnavailable(
                f"the runtime encoder did not answer within {self.timeout_s:.3f} s"
            ) from None

    def close(self, *, wait: bool = True) -> None:
        """Stop after the histories already queued (later ones are refused); ``wait`` joins.
        The cached states go with the worker."""
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
            # A history the cache answers (or extends) gains nothing from waiting for company:
            # it goes at once, with whatever is already queued.
            deadline = first.queued + (0.0 if self._cached(first) else self.max_delay)
            stop = False
            while len(jobs) < self.max_batch:
                try:
                    wait = deadline - time.perf_counter()
                    job = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
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

    def _cached(self, job: _Job) -> bool:
        """The cache holds a state that ``job``'s history equals or extends."""
        if self.cache is None or job.user is None:
            return False
        window = self.encoder.window(job.history)
        return classify(self.cache.get(job.user), window) in ("hit", "extend")

    def _answer(self, jobs: list[_Job], first_queued: float) -> None:
        started = time.perf_counter()
        try:
            if self.cache is None:
                vectors = list(self.encoder.encode([job.history for job in jobs]))
            else:
                vectors = self._answer_cached(jobs, self.cache)
        except Exception as error:  # a bad batch fails its requests, never the thread
            for job in jobs:
                job.future.set_exception(error)
            return
        for job, vector in zip(jobs, vectors, strict=True):
            job.future.set_result(vector)
        if self.observe is not None:
            with contextlib.suppress(Exception):  # a metrics failure must not stop the encoder
                self.observe(len(jobs), started - first_queued)

    def _answer_cached(self, jobs: list[_Job], cache: EncoderCache) -> list[np.ndarray]:
        """The jobs' vectors through the cache: hits answered from it, extensions stepped one by
        one, the rest encoded in full in one batch, every new state cached. A user twice in one
        batch is answered in a later round, after the first one's state is cached."""
        report = CacheReport()
        vectors: list[np.ndarray | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        while pending:
            users: set[int | None] = set()
            now: list[int] = []
            later: list[int] = []
            for i in pending:
                user = jobs[i].user
                (later if user is not None and user in users else now).append(i)
                users.add(user)
            full: list[tuple[int, np.ndarray]] = []
            for i in now:
                window, user = self.encoder.window(jobs[i].history), jobs[i].user
                state = cache.get(user) if user is not None else None
                outcome = classify(state, window)
                report.outcomes[outcome] += 1
                if outcome == "hit":
                    assert state is not None
                    vectors[i] = state.vector
                elif outcome == "extend":
                    assert state is not None and user is not None
                    report.step_tokens += len(window) - len(state.events)
                    state = self.encoder.step(state, window)
                    cache.put(user, state)
                    vectors[i] = state.vector
                else:
                    full.append((i, window))
            if full:
                states = self.encoder.encode_states([window for _, window in full])
                for (i, window), state in zip(full, states, strict=True):
                    report.full_tokens += len(window)
                    user = jobs[i].user
                    if user is not None:
                        cache.put(user, state)
                    vectors[i] = state.vector
            pending = later
        report.bytes, report.users = cache.bytes, len(cache)
        if self.observe_cache is not None:
            with contextlib.suppress(Exception):  # a metrics failure must not stop the encoder
                self.observe_cache(report)
        answered = [v for v in vectors if v is not None]
        assert len(answered) == len(jobs), "every job is answered"
        return answered

    def _fail_waiting(self) -> None:
        """After close: whatever is still queued is answered, never left waiting forever; the
        cached states are freed."""
        if self.cache is not None:
            self.cache.clear()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(EncoderUnavailable("the runtime encoder was retired"))
