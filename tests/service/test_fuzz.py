"""Schemathesis, every check, against a live uvicorn server of the app, with an events token and
with writes closed: generated requests for every operation of ``/openapi.json`` never get a 5xx,
every answer (status, content type, body, headers) is the documented one, schema-valid requests
are accepted and invalid ones refused. The CI run is short; ``benchmarks/chaos.py`` runs over a
thousand cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from argus.servers import fuzz
from service.settings import EncoderSettings, RequestSettings, Settings, StoreSettings
from tests.conftest import serving


@pytest.mark.parametrize("token", ["fuzz-token", None], ids=["token", "writes-closed"])
def test_generated_requests_pass_every_schemathesis_check(bundles: Path, token: str | None) -> None:
    settings = Settings(
        store=StoreSettings(bundles=bundles),
        requests=RequestSettings(events_token=token),
        encoder=EncoderSettings(max_delay_ms=0),
    )
    for url in serving(settings):
        result = fuzz(url, examples=15, token=token)
        assert result["exit_code"] == 0 and result["failures"] == 0, result["tail"]
        assert result["cases"] >= 100, result["tail"]
