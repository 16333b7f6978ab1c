"""``models distill-reranker``: corpus reading, pseudo-queries, the refusals, and a smoke run of
the whole distillation from a tiny int8 teacher (needs torch + transformers + onnx; skipped
where they are not installed)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.errors import InvalidInput, UnknownModel
from ragserve.models.cache import ModelCache
from ragserve.models.catalog import (
    BUILTIN_MODELS,
    Catalog,
    Kind,
    custom_spec,
    save_custom,
)
from ragserve.models.distill import (
    DistillOptions,
    check_target,
    distill_to_cache,
    pseudo_queries,
    read_corpus,
)
from ragserve.models.manager import ModelManager
from ragserve.service import RetrievalService
from ragserve.store.base import open_store
from tests.fakes import FakeEmbedder
from tests.models.test_export import WORDS, write_tiny_tokenizer

FAKE_EMBEDDER = custom_spec("fake-embedder", path=Path("/nonexistent"), dimension=64)

DOCS = [
    ("d1", "Vitamin D and respiratory infections in children", "Vitamin D deficiency is common. "
     "Children with low vitamin D levels had more respiratory infections in winter. "
     "Supplements reduced the rate of infection in the treated group."),
    ("d2", "Statins and cardiovascular mortality in the elderly", "Statins lower cholesterol. "
     "In patients over seventy, statin therapy reduced cardiovascular deaths by a fifth. "
     "Muscle pain was the most frequent side effect reported."),
    ("d3", "Bread baking at home for beginners", "Preheat the oven to two hundred degrees. "
     "Knead the dough for ten minutes until it is smooth and elastic. "
     "Bake the bread for thirty five minutes and let it cool."),
    ("d4", "Interest rates and the stock market", "The central bank raised interest rates. "
     "Stock markets fell sharply after the unexpected decision of the bank. "
     "Bond yields rose to their highest level in a decade."),
]  # fmt: skip


def write_corpus(path: Path, docs: list[tuple[str, str, str]] = DOCS) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for doc_id, title, text in docs:
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    return path


def test_read_corpus_reads_beir_jsonl_and_text_directories(tmp_path: Path) -> None:
    passages = read_corpus(write_corpus(tmp_path / "corpus.jsonl"))
    assert [p.doc_id for p in passages] == ["d1", "d2", "d3", "d4"]
    assert passages[0].full.startswith("Vitamin D and respiratory")
    docs = tmp_path / "docs"
    docs.mkdir()
    para = " ".join(["The tutorial explains how the interpreter reads a program line by line."] * 5)
    (docs / "intro.rst.txt").write_text(
        f"Introduction\n============\n\n{para}\n\n.. note:: skipped\n\n   >>> code(1)\n\n{para}\n"
    )
    (docs / "image.png").write_bytes(b"\x89PNG not text")
    found = read_corpus(docs)
    assert found and all(p.title == "Introduction" for p in found)
    assert all("code(1)" not in p.text and "note::" not in p.text for p in found)


def test_read_corpus_refuses_what_is_not_a_corpus(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        read_corpus(tmp_path / "missing.jsonl")
    bad = tmp_path / "queries.jsonl"
    bad.write_text('{"_id": "1", "query": "what is vitamin d"}\n')
    with pytest.raises(InvalidInput, match="not a corpus record"):
        read_corpus(bad)


def test_pseudo_queries_come_from_their_passage_and_are_seeded(tmp_path: Path) -> None:
    passages = read_corpus(write_corpus(tmp_path / "corpus.jsonl")) * 5
    first = pseudo_queries(passages, random.Random(7))
    assert first == pseudo_queries(passages, random.Random(7))
    assert {kind for _, kind, _ in first} == {"title", "sentence", "keywords"}
    for query, kind, i in first:
        source = passages[i].full.lower()
        words = [w.lower() for w in query.split()]
        assert all(w.strip(".,") in source for w in words), (kind, query)


# ----------------------------------------------------------------------------- refusals


def settings_for(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", model_dir=tmp_path / "models", embedder="fake-embedder",
        **extra,
    )  # fmt: skip


def fake_service(settings: Settings) -> RetrievalService:
    manager = ModelManager.from_settings(settings)
    manager.provide(FAKE_EMBEDDER, FakeEmbedder(64, "fake-embedder"))
    return RetrievalService(settings, manager, open_store(settings))


def test_the_output_name_must_be_new(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "models")
    catalog = Catalog.load(None)
    with pytest.raises(InvalidInput, match="exists already"):
        check_target("ms-marco-MiniLM-L-12-v2", catalog, cache)
    (cache.root / ".exports" / "mine").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="exists already"):
        check_target("mine", catalog, cache)
    with pytest.raises(InvalidInput, match="invalid model name"):
        check_target("../x", catalog, cache)
    assert check_target("fresh", catalog, cache) == cache.root / ".exports" / "fresh"


def test_an_unknown_teacher_or_an_embedder_is_refused(tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    corpus = [write_corpus(tmp_path / "c.jsonl")]
    with pytest.raises(UnknownModel):
        distill_to_cache(s, "no-such-model", corpus, "student", service_factory=fake_service)
    with pytest.raises(InvalidInput, match="not a cross-encoder"):
        distill_to_cache(s, "bge-small-en-v1.5", corpus, "student", service_factory=fake_service)


# ----------------------------------------------------------------------------- with torch


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 3-layer BERT cross-encoder exported and dynamically quantized like the teacher
    (MatMulInteger weights; int8 word embeddings), with a WordPiece tokenizer."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ragserve.models.export import trace_to_onnx

    path = tmp_path_factory.mktemp("tiny-teacher")
    words = list(WORDS)
    for _, title, text in DOCS:
        words += [w.strip(".,").lower() for w in f"{title} {text}".split()]
    vocab_size = write_tiny_tokenizer(path / "tokenizer.json", words)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=48, num_hidden_layers=3, num_attention_heads=12,
        intermediate_size=96, max_position_embeddings=128, num_labels=1,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = transformers.BertForSequenceClassification(config).eval()
    torch.set_grad_enabled(False)
    np.savez(path / "fp32.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    trace_to_onnx(model, path / "fp32.onnx", "logits")
    quantize_dynamic(
        str(path / "fp32.onnx"), str(path / "model.onnx"), weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul", "Gather"],
    )  # fmt: skip
    (path / "fp32.onnx").unlink()
    return path


def register_teacher(settings: Settings, teacher: Path, name: str = "tiny-teacher") -> None:
    spec = custom_spec(name, path=teacher, kind=Kind.RERANKER, max_length=128)
    save_custom(settings.custom_models_path, [spec])
    ModelCache(settings.model_dir).pull(spec)


def test_the_teacher_is_read_back_from_its_int8_graph(tiny_teacher: Path) -> None:
    from ragserve.models.distill import dequantize_teacher, init_student

    state, depth = dequantize_teacher(tiny_teacher / "model.onnx")
    assert depth == 3
    original = dict(np.load(tiny_teacher / "fp32.npz"))
    compared = 0
    for key, value in original.items():
        if key.endswith("position_ids"):
            continue
        assert key in state, key
        # int8 weights: within about one quantization step of the fp32 ones.
        assert np.abs(state[key] - value).max() < 0.01 * max(1.0, float(np.abs(value).max())), key
        compared += 1
    assert compared == len(state)
    student = init_student(state, (0, 2), heads=12)
    assert student.config._attn_implementation == "eager"  # the graph the ORT fusions know
    layer1 = student.bert.encoder.layer[1].attention.self.query.weight.detach().numpy()
    assert np.array_equal(layer1, state["bert.encoder.layer.2.attention.self.query.weight"])


def test_a_graph_that_is_not_a_cross_encoder_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from ragserve.models.distill import dequantize_teacher

    embedder = next(s for s in BUILTIN_MODELS if s.name == "bge-small-en-v1.5")
    cache = ModelCache(Path.home() / ".cache" / "ragserve" / "models")
    try:
        cached = cache.verify(embedder, full=False)
    except Exception:  # noqa: BLE001 - the real model is not cached here
        pytest.skip("bge-small-en-v1.5 is not cached")
    with pytest.raises(InvalidInput, match="not a cross-encoder"):
        dequantize_teacher(cached.onnx_path)


def test_an_empty_corpus_is_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    register_teacher(s, tiny_teacher)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InvalidInput, match="no text found"):
        distill_to_cache(
            s, "tiny-teacher", [empty], "student", DistillOptions(layers=(0, 2)),
            service_factory=fake_service,
        )  # fmt: skip
    assert not (s.model_dir / ".exports" / "student").exists()


def test_a_smoke_distillation_caches_a_loadable_student(tiny_teacher: Path, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    register_teacher(s, tiny_teacher)
    corpus = write_corpus(tmp_path / "corpus.jsonl", DOCS * 3)
    options = DistillOptions(
        layers=(0, 2), docs_per_corpus=0, candidates=4, max_steps=3, max_length=64,
        teacher_max_length=96, min_correlation=-1.0, threads=1,
    )  # fmt: skip
    report = distill_to_cache(
        s, "tiny-teacher", [corpus], "tiny-student", options, service_factory=fake_service
    )
    assert report.steps == 3 and len(report.losses) >= 1
    assert report.pairs == 12 * 4
    assert report.export["fused_operators"].get("Attention") == 2
    assert set(report.seconds) >= {"mine", "teacher", "train", "export", "total"}
    out = Path(report.output)
    assert (out / "NOTICE").is_file() and json.loads((out / "distill.json").read_text())
    manager = ModelManager.from_settings(s)
    student = manager.reranker("tiny-student")
    scores = student.score_pairs([("vitamin d infection", d[2]) for d in DOCS])
    assert scores.shape == (4,) and np.isfinite(scores).all()
    with pytest.raises(InvalidInput, match="exists already"):
        distill_to_cache(
            s, "tiny-teacher", [corpus], "tiny-student", options, service_factory=fake_service
        )


def test_a_work_dir_keeps_the_teacher_scores_for_the_next_run(
    tiny_teacher: Path, tmp_path: Path
) -> None:
    s = settings_for(tmp_path)
    register_teacher(s, tiny_teacher)
    corpus = write_corpus(tmp_path / "corpus.jsonl", DOCS * 3)
    work = tmp_path / "work"
    options = DistillOptions(
        layers=(0, 2), docs_per_corpus=0, candidates=4, max_steps=2, max_length=64,
        teacher_max_length=96, min_correlation=-1.0, threads=1,
    )  # fmt: skip
    first = distill_to_cache(
        s, "tiny-teacher", [corpus], "first", options, service_factory=fake_service, work_dir=work
    )
    saved = list(work.glob("scored-*.json"))
    assert len(saved) == 1
    data = json.loads(saved[0].read_text())
    assert len(data["groups"]) == len(data["targets"]) == 12

    def no_mining(_settings: Settings) -> Any:
        class Unused:
            def create_collection(self, _name: str) -> None:
                raise AssertionError("the saved candidates should have been reused")

            def close(self) -> None:
                pass

        return Unused()

    # Other training options, the same data options: nothing is mined or scored again.
    second = distill_to_cache(
        s, "tiny-teacher", [corpus], "second", DistillOptions(**{
            **{k: getattr(options, k) for k in options.__dataclass_fields__},
            "loss": "margin", "max_steps": 1,
        }), service_factory=no_mining, work_dir=work,
    )  # fmt: skip
    assert second.pairs == first.pairs and second.steps == 1
    assert second.seconds["teacher"] == first.seconds["teacher"]
    # Another teacher length is other data: it is scored anew, in a file of its own.
    third_options = DistillOptions(**{
        **{k: getattr(options, k) for k in options.__dataclass_fields__},
        "teacher_max_length": 64, "max_steps": 1,
    })  # fmt: skip
    distill_to_cache(
        s, "tiny-teacher", [corpus], "third", third_options,
        service_factory=fake_service, work_dir=work,
    )  # fmt: skip
    assert len(list(work.glob("scored-*.json"))) == 2


def test_an_unknown_loss_is_refused(tiny_teacher: Path, tmp_path: Path) -> None:
    s = settings_for(tmp_path)
    register_teacher(s, tiny_teacher)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    with pytest.raises(InvalidInput, match="loss 'hinge'"):
        distill_to_cache(
            s, "tiny-teacher", [corpus], "student", DistillOptions(loss="hinge"),
            service_factory=fake_service,
        )  # fmt: skip


def test_students_rerank_windows_unless_the_setting_says_otherwise(tmp_path: Path) -> None:
    from ragserve.models.distill import _reranker_spec

    student = _reranker_spec("student", tmp_path, 128, "")
    assert student.window
    s = settings_for(tmp_path)
    save_custom(s.custom_models_path, [student])
    assert Catalog.load(s.custom_models_path).get("student").window  # kept in the JSON file
    teacher = next(spec for spec in BUILTIN_MODELS if spec.kind is Kind.RERANKER)
    assert teacher.window  # the built-in L-12 reranks windows too (docs/models.md)
    assert ModelManager.from_settings(s).rerank_window is None
    forced = ModelManager.from_settings(s.model_copy(update={"rerank_window": False}))
    assert forced.rerank_window is False
