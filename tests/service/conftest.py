from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from index.bundle import HnswParams, build
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="session")
def serving_root(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving") / "bundles"
    build(exported, root, HnswParams(k=20, sample=100), progress=False)
    return root


@pytest.fixture
def bundles(serving_root: Path, tmp_path: Path) -> Path:
    """A private copy of the bundle root (tests add and damage bundles)."""
    copy = tmp_path / "bundles"
    shutil.copytree(serving_root, copy)
    return copy


def client_for(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


@pytest.fixture
def local(bundles: Path) -> Iterator[TestClient]:
    """The service on the embedded local store."""
    with client_for(Settings(bundles=bundles, encoder_max_delay_ms=0)) as client:
        yield client
