from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import EncoderSettings, RequestSettings, Settings, StoreSettings


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


@pytest.fixture
def local(bundles: Path) -> Iterator[TestClient]:
    """The service on the embedded local store, writes open (no token)."""
    settings = Settings(
        store=StoreSettings(bundles=bundles),
        requests=RequestSettings(events_open=True),
        encoder=EncoderSettings(max_delay_ms=0),
    )
    with client_for(settings) as client:
        yield client
