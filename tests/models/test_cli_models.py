"""`ragserve models ...` and `ragserve config show` through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ragserve.cli import app
from ragserve.config import Settings
from ragserve.models.manager import ModelManager
from tests.models.helpers import MODEL_BYTES, TOKENIZER_BYTES

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAGSERVE_MODEL_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RAGSERVE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("COLUMNS", "200")
    return tmp_path


def test_pull_of_an_unknown_model_lists_the_valid_ones(env: Path) -> None:
    result = runner.invoke(app, ["models", "pull", "no-such-model"])
    assert result.exit_code == 1
    assert "unknown model 'no-such-model'" in result.output
    assert "bge-small-en-v1.5" in result.output


def test_list_shows_every_model_and_nothing_cached(env: Path) -> None:
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in ("bge-small-en-v1.5", "ms-marco-MiniLM-L-12-v2", "e5-small-v2", "all-MiniLM-L6"):
        assert name in result.output
    assert " yes " not in result.output


def test_register_then_list_shows_the_user_model_cached(env: Path) -> None:
    src = env / "mine"
    src.mkdir()
    (src / "weights.onnx").write_bytes(MODEL_BYTES)
    (src / "tokenizer.json").write_bytes(TOKENIZER_BYTES)
    result = runner.invoke(
        app,
        ["models", "register", "my-model", "--path", str(src), "--dimension", "8",
         "--onnx-file", "weights.onnx"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["models", "list"])
    row = next(line for line in listed.output.splitlines() if "my-model" in line)
    assert "yes" in row
    again = runner.invoke(app, ["models", "register", "bge-small-en-v1.5", "--path", str(src)])
    assert again.exit_code == 2 and "built-in" in again.output


def test_register_refuses_a_missing_directory(env: Path) -> None:
    result = runner.invoke(
        app, ["models", "register", "x", "--path", str(env / "nope"), "--dimension", "8"]
    )
    assert result.exit_code == 2
    assert "not a directory" in result.output


def test_config_show_masks_secrets(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGSERVE_API_KEYS", '["top-secret"]')
    monkeypatch.setenv("RAGSERVE_HF_TOKEN", "hf_secret")
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["api_keys"] == ["***"] and shown["hf_token"] == "***"
    assert "top-secret" not in result.output and "hf_secret" not in result.output
    assert shown["model_dir"] == str(env / "cache")


def test_a_missing_config_file_is_an_error(env: Path) -> None:
    result = runner.invoke(app, ["--config", str(env / "nope.env"), "config", "show"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_a_registered_local_copy_of_bge_embeds_like_the_builtin(env: Path) -> None:
    """Register the cached bge files as a user model: same vectors as the catalog entry."""
    real = ModelManager.from_settings(Settings(model_dir=Path.home() / ".cache/ragserve/models"))
    builtin = real.embedder("bge-small-en-v1.5")
    cached = real.cache.verify(real.catalog.get("bge-small-en-v1.5"))
    src = env / "bge-copy"
    src.mkdir()
    shutil.copy(cached.onnx_path, src / "model.onnx")
    shutil.copy(cached.tokenizer_path, src / "tokenizer.json")
    result = runner.invoke(
        app,
        ["models", "register", "my-bge", "--path", str(src), "--dimension", "384",
         "--pooling", "cls", "--query-prefix",
         "Represent this sentence for searching relevant passages: "],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mine = ModelManager.from_settings(Settings()).embedder("my-bge")
    texts = ["an octopus has three hearts", ""]
    np.testing.assert_allclose(
        mine.embed_queries(texts), builtin.embed_queries(texts), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        mine.embed_documents(texts), builtin.embed_documents(texts), rtol=1e-5, atol=1e-6
    )
