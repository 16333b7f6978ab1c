"""Shared pytest setup. Fakes live in ``fakes.py`` (``from tests.fakes import ...``)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: tests are reproducible."""
    return np.random.default_rng(1234)
