"""An in-process app over the real service, store and registry, with fake models (the helpers
live in ``tests/fakes.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragserve.config import Settings

# Re-exported for tests written against this module before the helpers moved to tests/fakes.py.
from tests.fakes import (
    error_of,  # noqa: F401
    make_service,
    make_settings,
    ready_client,
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    yield from ready_client(settings, make_service(settings))
