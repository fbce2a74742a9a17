"""The dynamic batcher around a real exported encoder: deadlines, failures, retirement."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from index.bundle import Bundle, list_versions
from model.contract import HISTORY_EVENT
from service.encoder import DynamicBatcher, Encoder, EncoderUnavailable


@pytest.fixture
def encoder(serving_root: Path) -> Encoder:
    bundle = Bundle.open(list_versions(serving_root)[-1], with_index=False)
    return Encoder(bundle.encoder_path, max_len=96, device="cpu")


def history(n: int = 5) -> np.ndarray:
    out = np.zeros(n, dtype=HISTORY_EVENT)
    out["item_id"], out["artist_id"], out["played_ratio"] = np.arange(1, n + 1), -1, 1.0
    out["timestamp"] = 1_700_000_000 + 60 * np.arange(n)
    return out


async def both(batcher: DynamicBatcher) -> list[np.ndarray]:
    return list(await asyncio.gather(batcher.encode(history(3)), batcher.encode(history(4))))


def test_a_request_past_its_deadline_gets_the_next_source_and_the_worker_survives(
    encoder: Encoder,
) -> None:
    # The batcher waits up to 300 ms for a second request; the request's deadline is 50 ms.
    batcher = DynamicBatcher(encoder, max_batch=2, max_delay_ms=300, timeout_s=0.05)
    began = time.monotonic()
    with pytest.raises(EncoderUnavailable, match="did not answer within"):
        asyncio.run(batcher.encode(history()))
    assert time.monotonic() - began < 0.25
    time.sleep(0.4)  # the worker reaches the cancelled request: it must drop it and live on
    assert batcher.alive
    vectors = asyncio.run(both(batcher))  # a full batch goes at once, well within the deadline
    np.testing.assert_allclose(vectors[0], encoder.encode([history(3)])[0], atol=1e-6)
    batcher.close()


def test_a_failing_batch_fails_its_requests_only(encoder: Encoder) -> None:
    batcher = DynamicBatcher(encoder, max_batch=1, max_delay_ms=0)
    with pytest.raises(ValueError, match="empty history"):
        asyncio.run(batcher.encode(history(0)))
    assert batcher.alive
    assert asyncio.run(batcher.encode(history())).shape == encoder.encode([history()])[0].shape
    batcher.close()


def test_a_retired_encoder_answers_at_once_instead_of_never(encoder: Encoder) -> None:
    batcher = DynamicBatcher(encoder, max_batch=4, max_delay_ms=200, timeout_s=5)
    waiting = batcher.submit(history())  # queued before the retirement: still answered
    batcher.close()
    assert waiting.result(timeout=5).shape[0] > 0
    assert not batcher.alive
    began = time.monotonic()
    with pytest.raises(EncoderUnavailable, match="retired"):
        asyncio.run(batcher.encode(history()))
    assert time.monotonic() - began < 0.1


def test_auto_picks_cuda_only_with_a_driver_and_the_cpu_path_keeps_state_on_the_host(
    serving_root: Path,
) -> None:
    """The CUDA provider is chosen only where a driver loads (CI has none: the CPU path, with the
    same I/O binding, is what runs there); asking for CUDA without one is an error naming it."""
    from service.encoder import has_cuda_driver, providers

    bundle = Bundle.open(list_versions(serving_root)[-1], with_index=False)
    encoder = Encoder(bundle.encoder_path, max_len=96, device="auto", step_path=bundle.step_path)
    if has_cuda_driver():
        assert providers("auto")[0] == "CUDAExecutionProvider"
        assert encoder.device_type == "cuda"
    else:
        assert providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ValueError, match="device cuda asked for"):
            providers("cuda")
        assert encoder.device_type == "cpu"
    (state,) = encoder.encode_states([history(6)])
    assert state.keys.device_name().lower() == encoder.device_type
    longer = encoder.step(state, history(7))
    assert longer.keys.device_name().lower() == encoder.device_type
    np.testing.assert_allclose(longer.vector, encoder.encode([history(7)])[0], atol=1e-4)


def test_the_onnx_pool_is_sized_by_argus_threads_or_the_setting(
    serving_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Bundle.open(list_versions(serving_root)[-1], with_index=False).encoder_path
    monkeypatch.setenv("ARGUS_THREADS", "1")
    pooled = Encoder(path, max_len=96, device="cpu")
    assert pooled.session.get_session_options().intra_op_num_threads == 1
    chosen = Encoder(path, max_len=96, device="cpu", threads=2)
    assert chosen.session.get_session_options().intra_op_num_threads == 2
