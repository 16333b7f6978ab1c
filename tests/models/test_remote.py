"""Remote models on the wire: recorded TEI and Infinity exchanges, ragserve's own protocol,
errors mapped into ragserve's tree, and retries only where they are safe."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

from ragserve.errors import InvalidInput, ModelUnavailable
from ragserve.models.catalog import Kind, ModelSpec, Pooling
from ragserve.models.remote import (
    EmbedderApi,
    ModelClient,
    RemoteEmbedder,
    RemoteReranker,
    RerankerApi,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "model_servers"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def spec(dimension: int = 3, **extra: Any) -> ModelSpec:
    return ModelSpec(
        name="tiny",
        kind=Kind.EMBEDDER,
        description="test",
        licence="MIT",
        max_length=32,
        sources=(),
        dimension=dimension,
        pooling=Pooling.MEAN,
        **extra,
    )


def rerank_spec() -> ModelSpec:
    return ModelSpec("tiny-rr", Kind.RERANKER, "test", "MIT", 32, ())


def tokenizer() -> Tokenizer:
    tok = Tokenizer(WordLevel({"[UNK]": 0, "what": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return tok


class Recorder:
    """A MockTransport handler that records requests and plays back answers in turn."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def body(self, i: int = -1) -> Any:
        return json.loads(self.requests[i].content)


def client(recorder: Callable[[httpx.Request], httpx.Response], retries: int = 2) -> ModelClient:
    return ModelClient(
        "http://models.test", key="k1", retries=retries, transport=httpx.MockTransport(recorder)
    )


def embedder(rec: Recorder, api: EmbedderApi, **kw: Any) -> RemoteEmbedder:
    return RemoteEmbedder(spec(**kw.pop("spec", {})), client(rec), tokenizer(), api=api, **kw)


def reranker(rec: Recorder, api: RerankerApi) -> RemoteReranker:
    return RemoteReranker(rerank_spec(), client(rec), api=api)


def check_request(request: httpx.Request, recorded: dict[str, Any]) -> dict[str, Any]:
    """What ragserve sent has the recorded path, only fields the server's schema has, and the
    fields it requires."""
    body: dict[str, Any] = json.loads(request.content)
    assert request.method == recorded["request"]["method"]
    assert request.url.path == recorded["request"]["path"]
    assert set(body) <= set(recorded["request_fields"]), set(body) - set(recorded["request_fields"])
    assert set(recorded["request_required"]) <= set(body)
    assert request.headers["authorization"] == "Bearer k1"
    return body


# ------------------------------------------------------------------------------ recorded fixtures


@pytest.mark.parametrize(
    ("name", "api"), [("tei_embeddings.json", "openai"), ("infinity_embeddings.json", "infinity")]
)
def test_recorded_embedding_exchanges_are_produced_and_parsed(name: str, api: EmbedderApi) -> None:
    recorded = fixture(name)
    # The recorded request's own body is valid against its schema's field list.
    assert set(recorded["request"]["body"]) <= set(recorded["request_fields"])
    for response in recorded["responses"]:
        rec = Recorder(httpx.Response(response["status"], json=response["body"]))
        emb = embedder(rec, api, spec={"query_prefix": "query: ", "document_prefix": "doc: "})
        vectors = emb.embed_queries(["What is Deep Learning?"])
        body = check_request(rec.requests[0], recorded)
        assert body["input"] == ["query: What is Deep Learning?"]  # prefixes applied here
        assert "input_type" not in body
        expected = np.array([0.0, 1.0, 2.0], dtype=np.float32) / np.sqrt(5.0)
        np.testing.assert_allclose(vectors[0], expected, rtol=1e-6)
        emb.embed_documents(["a passage"])
        assert rec.body()["input"] == ["doc: a passage"]


@pytest.mark.parametrize(
    ("name", "api", "expected"),
    [("tei_rerank.json", "tei", [0.5, 1.0]), ("infinity_rerank.json", "infinity", [0.9, 0.1])],
)
def test_recorded_rerank_exchanges_are_produced_and_parsed(
    name: str, api: RerankerApi, expected: list[float]
) -> None:
    recorded = fixture(name)
    assert set(recorded["request"]["body"]) <= set(recorded["request_fields"])
    passages = recorded["request"]["body"].get("texts") or recorded["request"]["body"]["documents"]
    rec = Recorder(httpx.Response(200, json=recorded["responses"][0]["body"]))
    scores = reranker(rec, api).score(recorded["request"]["body"]["query"], passages)
    body = check_request(rec.requests[0], recorded)
    assert body["raw_scores"] is True  # logits, as the local cross-encoder gives
    np.testing.assert_allclose(scores, expected, rtol=1e-6)  # in passage order, not rank order


@pytest.mark.parametrize(
    "name", ["tei_embeddings.json", "tei_rerank.json", "infinity_embeddings.json",
             "infinity_rerank.json"],
)  # fmt: skip
def test_recorded_errors_map_into_ragserve_errors(name: str) -> None:
    recorded = fixture(name)
    for error in recorded["errors"]:
        rec = Recorder(httpx.Response(error["status"], json=error["body"]))
        expected = InvalidInput if error["status"] in (413, 422) else ModelUnavailable
        with pytest.raises(expected) as info:
            if "rerank" in name:
                api: RerankerApi = "tei" if name.startswith("tei") else "infinity"
                reranker(rec, api).score("q", ["p"])
            else:
                embedder(rec, "openai").embed_documents(["p"])
        message = str(error["body"].get("message") or error["body"].get("error") or "")
        assert message in str(info.value)
        assert len(rec.requests) == 1, "a 4xx is never retried"


def test_cohere_relevance_maps_back_to_a_logit_keeping_order() -> None:
    body = {"results": [{"index": 1, "relevance_score": 0.2}, {"index": 0, "relevance_score": 0.7}]}
    scores = reranker(Recorder(httpx.Response(200, json=body)), "cohere").score("q", ["a", "b"])
    np.testing.assert_allclose(scores, [np.log(0.7 / 0.3), np.log(0.2 / 0.8)], rtol=1e-5)


# ------------------------------------------------------------------------------ ragserve's protocol


def test_ragserve_protocol_sends_raw_texts_with_input_type_and_model() -> None:
    vec = np.array([[0.6, 0.8, 0.0]], dtype=np.float32)
    import base64

    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0,
                  "embedding": base64.b64encode(vec[0].tobytes()).decode()}],
        "model": "tiny",
        "usage": {"prompt_tokens": 1, "total_tokens": 1},
    }  # fmt: skip
    rec = Recorder(httpx.Response(200, json=answer))
    emb = embedder(rec, "ragserve", spec={"query_prefix": "q: ", "query_prefix_optional": True})
    out = emb.embed_queries(["what"], instruction=False)
    assert rec.body() == {
        "input": ["what"],
        "encoding_format": "base64",
        "model": "tiny",
        "input_type": "query",
        "instruction": False,
    }
    assert out.tobytes() == vec.tobytes(), "vectors cross the wire bit for bit"
    emb.embed_documents(["what"])
    assert rec.body()["input_type"] == "document" and "instruction" not in rec.body()


def test_batches_are_split_at_max_inputs() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        n = len(json.loads(request.content)["input"])
        data = [{"index": i, "embedding": [1.0, 0.0, float(i)]} for i in range(n)]
        return httpx.Response(200, json={"data": data, "model": "tiny"})

    calls: list[int] = []

    def counting(request: httpx.Request) -> httpx.Response:
        calls.append(len(json.loads(request.content)["input"]))
        return answer(request)

    emb = RemoteEmbedder(spec(), client(counting), tokenizer(), max_inputs=4)
    assert emb.embed_documents([f"t{i}" for i in range(10)]).shape == (10, 3)
    assert calls == [4, 4, 2]


def test_wrong_dimension_or_model_is_refused() -> None:
    rec = Recorder(httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0.0]}]}))
    with pytest.raises(ModelUnavailable, match=r"2-d vectors; tiny .* needs 3-d"):
        embedder(rec, "ragserve").check()
    other = {"data": [{"index": 0, "embedding": [1.0, 0.0, 0.0]}], "model": "another"}
    rec = Recorder(httpx.Response(200, json=other))
    with pytest.raises(ModelUnavailable, match="'another', expected 'tiny'"):
        embedder(rec, "ragserve").check()


@pytest.mark.parametrize(
    "body",
    [{"data": []}, {"nope": 1}, {"data": [{"index": 5, "embedding": [1, 2, 3]}]},
     {"data": [{"index": 0, "embedding": "!!"}]}, {"data": [{"index": 0, "embedding": {}}]}],
)  # fmt: skip
def test_malformed_answers_are_503_not_crashes(body: dict[str, Any]) -> None:
    with pytest.raises(ModelUnavailable, match="unexpected body"):
        embedder(Recorder(httpx.Response(200, json=body)), "ragserve").embed_documents(["x"])


def test_token_spans_use_the_local_tokenizer() -> None:
    emb = embedder(Recorder(httpx.Response(500)), "ragserve")
    assert emb.token_spans("what is").tolist() == [[0, 4], [5, 7]]


# ------------------------------------------------------------------------------ retries


def ok_answer() -> httpx.Response:
    return httpx.Response(200, json={"data": [{"index": 0, "embedding": [1.0, 0.0, 0.0]}]})


def test_connection_failures_and_503_are_retried_then_succeed() -> None:
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(503, json={}), ok_answer())
    assert embedder(rec, "ragserve").embed_documents(["x"]).shape == (1, 3)
    assert len(rec.requests) == 3


def test_retries_are_capped_and_the_error_names_the_server() -> None:
    rec = Recorder(httpx.ConnectError("Connection refused"))
    emb = RemoteEmbedder(spec(), client(rec, retries=2), tokenizer())
    with pytest.raises(ModelUnavailable, match=r"models\.test/v1/embeddings is unavailable \(3 "):
        emb.embed_documents(["x"])
    assert len(rec.requests) == 3


def test_a_timeout_is_not_retried() -> None:
    rec = Recorder(httpx.ReadTimeout("slow"))
    with pytest.raises(ModelUnavailable, match="did not answer within 5 s"):
        embedder(rec, "ragserve").embed_queries(["x"])
    assert len(rec.requests) == 1


def test_a_refused_key_is_503_with_the_reason() -> None:
    rec = Recorder(httpx.Response(401, json={"error": {"type": "unauthorized", "message": "no"}}))
    with pytest.raises(ModelUnavailable, match="refused the key"):
        reranker(rec, "ragserve").score("q", ["p"])
    assert ModelUnavailable.status_code == 503


def test_the_tokenizer_loads_with_the_first_chunking_only() -> None:
    loads: list[int] = []

    def load() -> Any:
        loads.append(1)
        return tokenizer()

    emb = RemoteEmbedder(spec(), client(Recorder(httpx.Response(200, json={}))), load)
    assert loads == []  # searches never need it
    spans = emb.token_spans("hello world")
    assert spans.shape == (2, 2) and loads == [1]
    emb.token_spans("again")
    assert loads == [1]


# ------------------------------------------------------------------------------ tokenize


def offsets(*pairs: tuple[int, int]) -> str:
    import base64

    return base64.b64encode(np.asarray(pairs, dtype="<i4").tobytes()).decode()


def test_a_ragserve_server_tokenizes_when_no_tokenizer_is_given() -> None:
    answer = {"object": "list", "model": "tiny",
              "data": [{"index": 1, "tokens": 1, "offsets": offsets((0, 2))},
                       {"index": 0, "tokens": 2, "offsets": offsets((0, 4), (5, 7))}]}  # fmt: skip
    rec = Recorder(httpx.ConnectError("refused"), httpx.Response(503, json={}),
                   httpx.Response(200, json=answer))  # fmt: skip
    emb = RemoteEmbedder(spec(), client(rec), None)
    spans = emb.token_spans_many(["what is", "it"])
    assert [s.tolist() for s in spans] == [[[0, 4], [5, 7]], [[0, 2]]]
    assert len(rec.requests) == 3, "refused and 503 are retried: tokenizing is idempotent"
    assert rec.requests[-1].url.path == "/v1/tokenize"
    assert rec.body() == {"input": ["what is", "it"], "model": "tiny"}


@pytest.mark.parametrize(
    "data",
    [[], [{"index": 0, "offsets": "!!"}], [{"index": 0, "offsets": offsets((0, 99))}],
     [{"index": 3, "offsets": offsets((0, 1))}], [{"index": 0, "offsets": "AAAA"}]],
)  # fmt: skip
def test_malformed_token_offsets_are_503_not_bad_chunks(data: list[Any]) -> None:
    emb = RemoteEmbedder(spec(), client(Recorder(httpx.Response(200, json={"data": data}))), None)
    with pytest.raises(ModelUnavailable, match="unexpected body"):
        emb.token_spans("what is")


def test_remote_tokenizing_refuses_bad_text_before_sending_and_other_protocols() -> None:
    rec = Recorder(httpx.Response(500))
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        RemoteEmbedder(spec(), client(rec), None).token_spans("bad \ud800")
    assert rec.requests == []
    with pytest.raises(ValueError, match="cannot tokenize"):
        RemoteEmbedder(spec(), client(rec), None, api="openai")
