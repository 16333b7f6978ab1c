"""Models served by another process over HTTP: one more implementation of the model protocols.

A :class:`RemoteEmbedder` speaks OpenAI's ``/v1/embeddings`` (ragserve ``--role models``, TEI,
vLLM; Infinity's ``/embeddings``); a :class:`RemoteReranker` speaks Cohere's ``/v1/rerank``
(ragserve, Infinity) or TEI's ``/rerank``. Each holds one pooled :class:`ModelClient`.

Failures never hang a request: every call has a deadline (the model's timeout, retries
included) and ends in :class:`~ragserve.errors.ModelUnavailable` (503) when the server is down,
slow, overloaded or refuses the key. Model calls are pure functions of their input, so a call is
retried (exponential backoff with jitter, at most ``retries`` times, never past the deadline)
when it could not connect, the connection broke, or the server answered 502/503/504; never after
a timeout (a slow server would only get slower) or a 4xx (the same call would fail again). A
pooled connection to a server that restarted fails on reuse and is replaced by the retry, so the
process recovers by itself when its model server comes back.

Chunks are cut in the model's tokens. A ragserve model server tokenizes too (``/v1/tokenize``:
one request per document to chunk, retried like the others), so an ``api`` process that speaks
to one holds no tokenizer and no model file at all (13 MB less RSS after an ingest than with the
tokenizer here). The other protocols have no such endpoint with character offsets, so their
embedder tokenizes here with the model's own tokenizer (from the model cache, only
``tokenizer.json`` is needed, checked at start-up and loaded by the first ingest).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

import httpx
import numpy as np
import numpy.typing as npt
from pydantic import SecretStr

from ragserve.config import Settings
from ragserve.errors import InvalidInput, ModelMismatch, ModelUnavailable
from ragserve.models.cache import ModelCache
from ragserve.models.catalog import Kind, ModelSpec
from ragserve.models.embedder import (
    CHARS_PER_TOKEN_KEPT,
    Vectors,
    check_texts,
    text_prefix,
    token_spans,
)
from ragserve.models.reranker import Scores
from ragserve.models.runtime import load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

EmbedderApi = Literal["ragserve", "openai", "infinity"]
RerankerApi = Literal["ragserve", "tei", "infinity", "cohere"]
Api = TypeVar("Api", EmbedderApi, RerankerApi)

#: First retry delay (seconds), doubled per retry up to the cap; each delay is jittered.
BACKOFF = 0.05
BACKOFF_CAP = 1.0
#: Statuses that say "try again": the server (or a proxy in front of it) is not there yet.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Texts of a document batch per query-call timeout (a batch of 64 gets 4 timeouts).
TEXTS_PER_TIMEOUT = 16
#: Characters to tokenize per call timeout (a 10 MB document gets 10 timeouts).
CHARS_PER_TIMEOUT = 1_000_000


class ModelClient:
    """One model server: a pooled HTTP/1.1 client, JSON POSTs with a deadline and retries."""

    def __init__(
        self,
        base_url: str,
        *,
        key: str | None = None,
        retries: int = 2,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 64,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            transport=transport,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            timeout=None,  # every call passes its own, from its deadline
            trust_env=False,  # a model server is addressed directly, never via HTTP_PROXY
        )

    def close(self) -> None:
        self._client.close()

    def post(self, path: str, body: dict[str, Any], *, timeout: float) -> Any:
        """POST ``body`` as JSON: the decoded answer, or a ragserve error within ``timeout``."""
        url = self.base_url + path
        content = json.dumps(body, ensure_ascii=False).encode()
        deadline = time.monotonic() + timeout
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            failure = ""
            try:
                response = self._client.post(path, content=content, timeout=remaining)
            except httpx.TimeoutException:
                raise ModelUnavailable(
                    f"model server {url} did not answer within {timeout:g} s"
                ) from None
            except httpx.TransportError as exc:  # refused, reset, closed mid-answer
                failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                if response.status_code < 400:
                    return _decode(response, url)
                if response.status_code not in RETRY_STATUSES:
                    raise _refusal(response, url)
                failure = f"HTTP {response.status_code}: {_message(response)}"
            attempt += 1
            delay = min(BACKOFF_CAP, BACKOFF * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            if attempt > self.retries or time.monotonic() + delay >= deadline:
                tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                raise ModelUnavailable(f"model server {url} is unavailable ({tries}): {failure}")
            log.info("model server %s: %s; retrying in %.2f s", url, failure, delay)
            time.sleep(delay)


def _decode(response: httpx.Response, url: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ModelUnavailable(f"model server {url} answered something that is not JSON") from None


def _message(response: httpx.Response) -> str:
    """The error message of a model server's answer, in any of the field's shapes."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:  # ragserve, OpenAI
            return str(error["message"])
        for field in ("error", "message", "detail"):  # TEI, TEI's OpenAI route, FastAPI
            if body.get(field):
                return str(body[field])[:500]
    return str(body)[:200]


def _refusal(response: httpx.Response, url: str) -> InvalidInput | ModelUnavailable:
    """A 4xx/5xx that a retry would not change, as the error this process answers with."""
    status, message = response.status_code, _message(response)
    if status in (400, 413, 422):  # the texts themselves (too long, too many, not valid)
        return InvalidInput(f"the model server refused the input: {message}")
    if status in (401, 403):
        return ModelUnavailable(f"model server {url} refused the key (HTTP {status}): {message}")
    if status == 404:
        return ModelUnavailable(
            f"model server {url} has no such endpoint or model (HTTP 404: {message}); check the "
            "URL, the API setting and the remote model name"
        )
    if status == 429:
        return ModelUnavailable(f"model server {url} is overloaded (HTTP 429): {message}")
    return ModelUnavailable(f"model server {url} failed (HTTP {status}): {message}")


def _unexpected(url: str, what: str) -> ModelUnavailable:
    return ModelUnavailable(f"model server {url} answered an unexpected body: {what}")


# ------------------------------------------------------------------------------ embeddings


def embeddings_request(
    texts: Sequence[str], *, api: EmbedderApi, model: str | None, query: bool, instruction: bool
) -> tuple[str, dict[str, Any]]:
    """The path and body of one embeddings call (texts already carry their prefixes unless
    ``api`` is ``ragserve``, whose server applies the model's own)."""
    body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64"}
    if model is not None:
        body["model"] = model
    if api == "ragserve":
        body["input_type"] = "query" if query else "document"
        if query and not instruction:
            body["instruction"] = False
    return ("/embeddings" if api == "infinity" else "/v1/embeddings"), body


def parse_embeddings(body: Any, count: int, url: str) -> tuple[Vectors, str | None]:
    """Vectors (in input order) and the model name of an OpenAI-style embeddings answer; each
    vector a list of floats or base64 of little-endian float32."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise _unexpected(url, f"{got} embeddings for {count} inputs")
    rows: list[npt.NDArray[np.float32] | None] = [None] * count
    for position, item in enumerate(data):
        index = item.get("index", position) if isinstance(item, dict) else None
        value = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or rows[index] is not None:
            raise _unexpected(url, f"embedding index {index!r}")
        if isinstance(value, str):
            try:
                raw = base64.b64decode(value, validate=True)
            except ValueError:
                raise _unexpected(url, "an embedding that is not base64") from None
            if len(raw) % 4:
                raise _unexpected(url, "a base64 embedding that is not float32")
            rows[index] = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif isinstance(value, list) and all(isinstance(x, int | float) for x in value):
            rows[index] = np.asarray(value, dtype=np.float32)
        else:
            raise _unexpected(url, "an embedding that is neither a list of numbers nor base64")
    widths = {len(r) for r in rows if r is not None}
    if len(widths) > 1:
        raise _unexpected(url, f"embeddings of different dimensions {sorted(widths)}")
    vectors = np.stack([r for r in rows if r is not None]) if count else np.zeros((0, 0))
    model = body.get("model")
    name = model if isinstance(model, str) else None
    return np.ascontiguousarray(vectors, dtype=np.float32), name


# ------------------------------------------------------------------------------ tokenize


def tokenize_request(texts: Sequence[str], *, model: str | None) -> tuple[str, dict[str, Any]]:
    """The path and body of one call to a ragserve model server's ``/v1/tokenize``."""
    body: dict[str, Any] = {"input": list(texts)}
    if model is not None:
        body["model"] = model
    return "/v1/tokenize", body


def parse_tokenize(body: Any, texts: Sequence[str], url: str) -> list[npt.NDArray[np.int64]]:
    """Token offsets per text (``(n, 2)`` int64, in input order) from a ``/v1/tokenize``
    answer; offsets outside their text are refused (chunks are cut at them)."""
    data = body.get("data") if isinstance(body, dict) else None
    count = len(texts)
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise _unexpected(url, f"{got} token lists for {count} inputs")
    out: list[npt.NDArray[np.int64] | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        value = item.get("offsets") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or out[index] is not None:
            raise _unexpected(url, f"token list index {index!r}")
        try:
            raw = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except ValueError:
            raw = None
        if raw is None or len(raw) % 8:
            raise _unexpected(url, "token offsets that are not base64 int32 pairs")
        spans = np.frombuffer(raw, dtype="<i4").astype(np.int64).reshape(-1, 2)
        if len(spans) and (spans.min() < 0 or spans.max() > len(texts[index])):
            raise _unexpected(url, f"token offsets outside input {index}")
        out[index] = spans
    return [s for s in out if s is not None]


class _Remote(Generic[Api]):
    """What a remote model is: its spec, its server and how to call it."""

    def __init__(
        self,
        spec: ModelSpec,
        client: ModelClient,
        *,
        api: Api,
        remote_name: str | None = None,
        timeout: float = 5.0,
        max_inputs: int = 256,
    ) -> None:
        self.spec = spec
        self.client = client
        self.api: Api = api
        #: The ``model`` sent; a ragserve server is always told which of its models to use.
        self.remote_name = remote_name or (spec.name if api == "ragserve" else None)
        self.timeout = timeout
        self.max_inputs = max_inputs

    @property
    def name(self) -> str:
        return self.spec.name


class RemoteEmbedder(_Remote[EmbedderApi]):
    """An :class:`~ragserve.models.embedder.Embedder` whose model runs on a model server."""

    def __init__(
        self,
        spec: ModelSpec,
        client: ModelClient,
        tokenizer: Tokenizer | Callable[[], Tokenizer] | None,
        *,
        api: EmbedderApi = "ragserve",
        remote_name: str | None = None,
        timeout: float = 5.0,
        max_inputs: int = 256,
    ) -> None:
        """``tokenizer``: the model's, or what loads it at the first :meth:`token_spans` (only
        ingest cuts chunks: a replica that only searches never holds its ~10 MB); None: the
        model server tokenizes (``/v1/tokenize``, ragserve's protocol only)."""
        super().__init__(
            spec, client, api=api, remote_name=remote_name, timeout=timeout, max_inputs=max_inputs
        )
        if tokenizer is None and api != "ragserve":
            raise ValueError(f"a {api!r} model server cannot tokenize: give a tokenizer")
        self._tokenizer: Tokenizer | None = None
        self._load_tokenizer: Callable[[], Tokenizer] | None = (
            None if tokenizer is None else tokenizer if callable(tokenizer) else lambda: tokenizer
        )
        self._tokenizer_lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        return self._embed(texts, query=False, instruction=True)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        """``instruction=False``: without the query prefix if the spec marks it optional."""
        return self._embed(texts, query=True, instruction=instruction)

    def token_spans(self, text: str) -> npt.NDArray[np.int64]:
        if self._load_tokenizer is None:
            return self.token_spans_many([text])[0]
        return token_spans(self._tokenizer or self._loaded_tokenizer(), text)

    def token_spans_many(self, texts: Sequence[str]) -> list[npt.NDArray[np.int64]]:
        """:meth:`token_spans` of each text; from the model server, ``max_inputs`` a call."""
        if self._load_tokenizer is not None:
            return [self.token_spans(t) for t in texts]
        check_texts(texts, "text")  # what JSON cannot carry fails here, as a local tokenizer would
        out: list[npt.NDArray[np.int64]] = []
        for start in range(0, len(texts), self.max_inputs):
            part = texts[start : start + self.max_inputs]
            path, body = tokenize_request(part, model=self.remote_name)
            chars = sum(len(t) for t in part)
            timeout = self.timeout * max(1, math.ceil(chars / CHARS_PER_TIMEOUT))
            answer = self.client.post(path, body, timeout=timeout)
            out += parse_tokenize(answer, part, self.client.base_url + path)
        return out

    def _loaded_tokenizer(self) -> Tokenizer:
        assert self._load_tokenizer is not None
        with self._tokenizer_lock:
            if self._tokenizer is None:
                tokenizer = self._load_tokenizer()
                tokenizer.no_truncation()
                tokenizer.no_padding()
                self._tokenizer = tokenizer
            return self._tokenizer

    def check(self) -> str | None:
        """Embed one text: the server answers, with vectors of this model's dimension, under the
        expected model name. Returns the name the server gave."""
        _, served = self._call(["ragserve start-up check"], query=True, instruction=True)
        return served

    def _embed(self, texts: Sequence[str], *, query: bool, instruction: bool) -> Vectors:
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for start in range(0, len(texts), self.max_inputs):
            part = texts[start : start + self.max_inputs]
            out[start : start + len(part)], _ = self._call(
                part, query=query, instruction=instruction
            )
        return out

    def _inputs(self, texts: Sequence[str], *, query: bool, instruction: bool) -> list[str]:
        """What the server is given: as is for ragserve, else prefixed and cut as
        :class:`~ragserve.models.embedder.OnnxEmbedder` does before tokenizing."""
        if self.api == "ragserve":
            return list(texts)
        prefix = text_prefix(self.spec, query=query, instruction=instruction)
        keep = self.spec.max_length * CHARS_PER_TOKEN_KEPT
        return [prefix + t[:keep] for t in texts]

    def _call(
        self, texts: Sequence[str], *, query: bool, instruction: bool
    ) -> tuple[Vectors, str | None]:
        path, body = embeddings_request(
            self._inputs(texts, query=query, instruction=instruction),
            api=self.api,
            model=self.remote_name,
            query=query,
            instruction=instruction,
        )
        timeout = self.timeout * (1 if query else max(1, math.ceil(len(texts) / TEXTS_PER_TIMEOUT)))
        answer = self.client.post(path, body, timeout=timeout)
        url = self.client.base_url + path
        vectors, served = parse_embeddings(answer, len(texts), url)
        if len(texts) and vectors.shape[1] != self.dimension:
            raise ModelMismatch(
                f"model server {url} returned {vectors.shape[1]}-d vectors; {self.name} "
                f"(and its collections) needs {self.dimension}-d: it serves another model"
            )
        if self.remote_name is not None and served is not None and served != self.remote_name:
            raise ModelMismatch(
                f"model server {url} answered with model {served!r}, expected "
                f"{self.remote_name!r}: it serves another model"
            )
        if self.api != "ragserve" and self.spec.normalize:  # a ragserve server already did
            norms = np.linalg.norm(vectors, axis=1, keepdims=True)
            vectors = vectors / np.maximum(norms, 1e-12)
        return vectors, served


# ------------------------------------------------------------------------------ rerank


def rerank_request(
    query: str, passages: Sequence[str], *, api: RerankerApi, model: str | None
) -> tuple[str, dict[str, Any]]:
    """The path and body of one rerank call, asking for raw logits where the API can give them."""
    if api == "tei":
        body: dict[str, Any] = {
            "query": query,
            "texts": list(passages),
            "raw_scores": True,
            "return_text": False,
            "truncate": True,
        }
        return "/rerank", body
    body = {"query": query, "documents": list(passages), "return_documents": False}
    if model is not None:
        body["model"] = model
    if api == "infinity":
        body["raw_scores"] = True
        return "/rerank", body
    return "/v1/rerank", body


def parse_rerank(body: Any, count: int, *, api: RerankerApi, url: str) -> Scores:
    """Logits in passage order from a rerank answer (a list of ranks for TEI, ``results`` for
    the Cohere shape). A Cohere server's 0..1 relevance is mapped back through the logit, which
    keeps its order."""
    items = body if api == "tei" else (body.get("results") if isinstance(body, dict) else None)
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no"
        raise _unexpected(url, f"{got} scores for {count} passages")
    field = {"ragserve": "logit", "tei": "score"}.get(api, "relevance_score")
    out = np.full(count, np.nan, dtype=np.float64)
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get(field) if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < count or not np.isnan(out[index]):
            raise _unexpected(url, f"rerank index {index!r}")
        if not isinstance(score, int | float) or isinstance(score, bool):
            raise _unexpected(url, f"rerank result without a numeric {field!r}")
        out[index] = score
    if api == "cohere":
        p = np.clip(out, 1e-7, 1 - 1e-7)
        out = np.log(p / (1 - p))
    return out.astype(np.float32)


class RemoteReranker(_Remote[RerankerApi]):
    """A :class:`~ragserve.models.reranker.Reranker` whose model runs on a model server."""

    def score(self, query: str, passages: Sequence[str]) -> Scores:
        out = np.empty(len(passages), dtype=np.float32)
        for start in range(0, len(passages), self.max_inputs):
            part = passages[start : start + self.max_inputs]
            path, body = rerank_request(query, part, api=self.api, model=self.remote_name)
            answer = self.client.post(path, body, timeout=self.timeout)
            url = self.client.base_url + path
            out[start : start + len(part)] = parse_rerank(answer, len(part), api=self.api, url=url)
        return out

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        """Logits for pairs of several queries: one call per query (the wire takes one query)."""
        out = np.empty(len(pairs), dtype=np.float32)
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(query, []).append(i)
        for query, idx in by_query.items():
            out[idx] = self.score(query, [pairs[i][1] for i in idx])
        return out

    def check(self) -> None:
        self.score("ragserve start-up check", ["a passage"])


class RemoteModels:
    """The remote models of one process (``RAGSERVE_EMBEDDER_URL``, ``RAGSERVE_RERANKER_URL``).

    Where a URL is set, that kind of model is served only by it: the configured model is remote
    and any other of its kind is refused (503) rather than loaded here."""

    def __init__(
        self, settings: Settings, cache: ModelCache, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.settings = settings
        self.cache = cache
        self._transport = transport
        self._clients: dict[tuple[str, str | None], ModelClient] = {}

    @property
    def any(self) -> bool:
        return bool(self.settings.embedder_url or self.settings.reranker_url)

    def serves(self, kind: Kind) -> bool:
        url = self.settings.embedder_url if kind is Kind.EMBEDDER else self.settings.reranker_url
        return bool(url)

    def _client(self, url: str, key: SecretStr | None) -> ModelClient:
        secret = key.get_secret_value() if key else None
        client = self._clients.get((url, secret))
        if client is None:
            client = ModelClient(
                url, key=secret, retries=self.settings.model_retries, transport=self._transport
            )
            self._clients[(url, secret)] = client
        return client

    def embedder(self, spec: ModelSpec) -> RemoteEmbedder:
        s = self.settings
        assert s.embedder_url
        if spec.name != s.embedder:
            raise ModelUnavailable(
                f"embedder {spec.name!r} is not served here: RAGSERVE_EMBEDDER_URL serves "
                f"{s.embedder!r} (RAGSERVE_EMBEDDER)"
            )
        tokenizer: Callable[[], Tokenizer] | None = None  # a ragserve server tokenizes
        if s.embedder_api != "ragserve":
            cached = self.cache.verify(spec, only=(spec.tokenizer_file,))  # at start-up: loudly
            tokenizer = lambda: load_tokenizer(cached.tokenizer_path)  # noqa: E731 - first ingest
        return RemoteEmbedder(
            spec,
            self._client(s.embedder_url, s.embedder_key),
            tokenizer,
            api=s.embedder_api,
            remote_name=s.embedder_remote_name,
            timeout=s.embedder_timeout,
            max_inputs=s.model_max_inputs,
        )

    def reranker(self, spec: ModelSpec) -> RemoteReranker:
        s = self.settings
        assert s.reranker_url
        if spec.name != s.reranker:
            raise ModelUnavailable(
                f"reranker {spec.name!r} is not served here: RAGSERVE_RERANKER_URL serves "
                f"{s.reranker!r} (RAGSERVE_RERANKER)"
            )
        return RemoteReranker(
            spec,
            self._client(s.reranker_url, s.reranker_key),
            api=s.reranker_api,
            remote_name=s.reranker_remote_name,
            timeout=s.reranker_timeout,
            max_inputs=s.model_max_inputs,
        )

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
