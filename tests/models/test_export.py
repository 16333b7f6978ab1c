"""``models export``: reading a model directory, the torch-free import, and a full export of a
tiny random BERT (needs torch + transformers; skipped where they are not installed, as in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragserve.errors import InvalidInput, ModelIntegrityError
from ragserve.models.cache import ModelCache
from ragserve.models.catalog import Catalog, Pooling
from ragserve.models.embedder import OnnxEmbedder
from ragserve.models.export import ExportOptions, read_source, sample_texts
from ragserve.models.runtime import SessionConfig

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "plants",
    "energy",
    "light",
    "sun",
    "capital",
    "city",
    "france",
    "paris",
    "bank",
    "rate",
    "oven",
    "bread",
    "cell",
    "protein",
    "fox",
    "dog",
    "quick",
    "brown",
    "lazy",
    "jumps",
    "over",
    "water",
    "model",
    "export",
    "test",
]


def write_st_layout(
    path: Path, *, cls: bool = False, prompts: dict[str, str] | None = None
) -> None:
    """The sentence-transformers files around a Hugging Face checkpoint."""
    (path / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"pooling_mode_cls_token": cls, "pooling_mode_mean_tokens": not cls})
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
        {
            "idx": 2,
            "name": "2",
            "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        },
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "config_sentence_transformers.json").write_text(json.dumps({"prompts": prompts or {}}))


def test_read_source_understands_the_sentence_transformers_layout(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 32, "num_attention_heads": 4})
    )
    (tmp_path / "model.safetensors").write_bytes(b"")
    write_st_layout(tmp_path, cls=True, prompts={"query": "query: ", "passage": "passage: "})
    info = read_source(tmp_path)
    assert (info.hidden_size, info.num_heads, info.max_length) == (32, 4, 64)
    assert info.pooling is Pooling.CLS and info.normalize
    assert (info.query_prefix, info.document_prefix) == ("query: ", "passage: ")


def test_read_source_refuses_what_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"config\.json"):
        read_source(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(InvalidInput, match="safetensors"):
        read_source(tmp_path)


def test_validation_texts_are_realistic() -> None:
    texts = sample_texts()
    assert "" not in texts and len(texts) >= 20
    assert max(len(t.split()) for t in texts) > 300  # past a 256-token max length


def test_importing_the_models_and_export_code_does_not_import_torch() -> None:
    code = (
        "import sys, ragserve.models.export, ragserve.models.manager, ragserve.cli; "
        "sys.exit(1 if 'torch' in sys.modules or 'transformers' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----------------------------------------------------------------------------- with torch


def write_tiny_tokenizer(path: Path, words: list[str]) -> int:
    """A lower-casing WordPiece tokenizer over ``words`` (+ characters); its vocabulary size."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    vocab += list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    ids = {tok: i for i, tok in enumerate(dict.fromkeys(vocab))}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer.save(str(path))
    return len(ids)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT in sentence-transformers layout, with a WordPiece tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab_size = write_tiny_tokenizer(path / "tokenizer.json", WORDS)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    transformers.BertModel(config).save_pretrained(str(path))
    write_st_layout(path)
    return path


@pytest.mark.slow
def test_fp32_export_matches_torch(tiny_model: Path, tmp_path: Path) -> None:
    from ragserve.models.export import export_model

    report = export_model(tiny_model, tmp_path / "out", "tiny-fp32", ExportOptions(quantize=False))
    assert report.min_cosine > 0.9999
    assert report.fused_operators.get("Attention") == 2
    assert report.fused_operators.get("SkipLayerNormalization", 0) >= 2
    assert (tmp_path / "out" / "model.onnx").exists()
    saved = json.loads((tmp_path / "out" / "export.json").read_text())
    assert saved["name"] == "tiny-fp32" and saved["pooling"] == "mean"


@pytest.mark.slow
def test_int8_export_reports_its_accuracy(tiny_model: Path, tmp_path: Path) -> None:
    from ragserve.models.export import export_model

    report = export_model(tiny_model, tmp_path / "out", "tiny-int8", ExportOptions(min_cosine=0.0))
    assert report.quantized and 0.0 < report.min_cosine <= report.mean_cosine <= 1.0001
    assert report.fp32_nodes == []  # full int8 passed the (disabled) bar at once


@pytest.mark.slow
def test_an_export_below_the_bar_is_refused_and_left_unusable(
    tiny_model: Path, tmp_path: Path
) -> None:
    from ragserve.models.export import export_model

    out = tmp_path / "out"
    with pytest.raises(ModelIntegrityError, match="refused"):
        export_model(tiny_model, out, "tiny-bad", ExportOptions(min_cosine=1.01))
    assert not (out / "model.onnx").exists()
    report = json.loads((out / "export.json").read_text())
    assert len(report["fp32_nodes"]) == 2  # every feed-forward output was tried in fp32


@pytest.mark.slow
def test_export_to_cache_registers_and_caches_a_loadable_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    from ragserve.models.export import export_to_cache

    cache = ModelCache(tmp_path / "cache")
    custom = tmp_path / "cache" / "custom_models.json"
    with pytest.raises(InvalidInput, match="built-in"):
        export_to_cache(str(tiny_model), cache, Catalog.load(custom), custom, name="e5-small-v2")
    report = export_to_cache(
        str(tiny_model),
        cache,
        Catalog.load(custom),
        custom,
        name="tiny-opt",
        options=ExportOptions(quantize=False),
    )
    spec = Catalog.load(custom).get("tiny-opt")
    assert (spec.dimension, spec.pooling, spec.max_length) == (32, Pooling.MEAN, 64)
    cached = cache.verify(spec)
    assert cached.manifest["name"] == "tiny-opt"
    assert Path(report.output) == tmp_path / "cache" / ".exports" / "tiny-opt"
    vectors = OnnxEmbedder(cached, SessionConfig(threads=1)).embed_documents(["the quick fox"])
    assert vectors.shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors), 1.0, atol=1e-5)
