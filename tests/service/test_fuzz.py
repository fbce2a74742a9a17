"""Schemathesis against a live uvicorn server of the app: generated requests for every operation
of ``/openapi.json`` never get a 5xx and every documented answer matches its schema. The CI
run is short; ``benchmarks/chaos.py`` runs over a thousand cases."""

from __future__ import annotations

from pathlib import Path

from service.settings import EncoderSettings, RequestSettings, Settings, StoreSettings
from tests.conftest import serving
from tests.servers import fuzz


def test_generated_requests_get_no_server_error_and_match_the_schema(bundles: Path) -> None:
    settings = Settings(
        store=StoreSettings(bundles=bundles),
        requests=RequestSettings(events_token="fuzz-token"),
        encoder=EncoderSettings(max_delay_ms=0),
    )
    for url in serving(settings):
        result = fuzz(url, examples=15, token="fuzz-token")
        assert result["exit_code"] == 0 and result["failures"] == 0, result["tail"]
        assert result["cases"] >= 100, result["tail"]
