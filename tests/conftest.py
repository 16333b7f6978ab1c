"""Shared pytest setup. Fakes live in ``fakes.py`` (``from tests.fakes import ...``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: tests are reproducible."""
    return np.random.default_rng(1234)


#: Where the browser tests save their screenshots (gitignored: build/).
SCREENSHOTS = Path(__file__).resolve().parents[1] / "build" / "screenshots"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    shots = sorted(SCREENSHOTS.glob("*.png")) if SCREENSHOTS.is_dir() else []
    if shots:
        terminalreporter.write_line(f"screenshots of the web console: {SCREENSHOTS} ({len(shots)})")
