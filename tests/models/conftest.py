"""Fixtures for the model cache: tiny model directories and wheels built at test time (the
helpers live in ``tests/models/helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragserve.models.cache import ModelCache
from tests.models.helpers import MODEL_BYTES, TOKENIZER_BYTES, build_wheel


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    build_wheel(
        house,
        "tiny-model-weights",
        "1.0.0",
        {
            "tiny_model_weights/__init__.py": b"",
            "tiny_model_weights/m/model.onnx": MODEL_BYTES,
            "tiny_model_weights/m/tokenizer.json": TOKENIZER_BYTES,
        },
    )
    return house


@pytest.fixture
def model_dir_src(tmp_path: Path) -> Path:
    src = tmp_path / "src-model"
    src.mkdir()
    (src / "model.onnx").write_bytes(MODEL_BYTES)
    (src / "tokenizer.json").write_bytes(TOKENIZER_BYTES)
    return src


@pytest.fixture
def cache(tmp_path: Path, wheelhouse: Path) -> ModelCache:
    return ModelCache(tmp_path / "cache", wheelhouse=wheelhouse)
