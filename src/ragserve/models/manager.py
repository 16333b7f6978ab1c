"""The served-model layer: the process's models, each loaded once under its own lock, handed out
as objects that already batch across callers, cache their outputs and report their figures.

::

    models = ModelManager.from_settings(settings)
    embedder = models.embedder("bge-small-en-v1.5")   # an Embedder: batched + cached queries
    embedder.embed_queries(["what is a cell?"])
    models.reranker("ms-marco-MiniLM-L-12-v2").score_pairs([("q", "passage")])
    models.snapshot()  # loads, batchers, caches: what /metrics and /v1/stats report

A model is anything that implements :class:`~ragserve.models.embedder.Embedder` or
:class:`~ragserve.models.reranker.Reranker` (a local ONNX model, a remote one, a fake):
``register`` names how to build one, ``provide`` hands over one already built. Loading one model
never waits for another: a search keeps answering while the reranker loads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from ragserve.batching import MicroBatcher
from ragserve.caching import CacheStats, ModelCaches
from ragserve.config import Settings
from ragserve.models.cache import ModelCache
from ragserve.models.catalog import Catalog, Kind, ModelSpec
from ragserve.models.embedder import (
    Batching,
    Embedder,
    OnnxEmbedder,
    TokenSpans,
    Vectors,
    check_texts,
    token_spans_many,
)
from ragserve.models.reranker import OnnxReranker, Reranker, Scores
from ragserve.models.runtime import SessionConfig

if TYPE_CHECKING:
    from ragserve.models.remote import RemoteModels

M = TypeVar("M", Embedder, Reranker)
#: Quantiles of recent batch sizes reported by :meth:`ModelManager.snapshot`.
SIZE_QUANTILES = (0.5, 0.95, 0.99)


@dataclass(frozen=True, slots=True)
class LoadRecord:
    name: str
    kind: str
    seconds: float


@dataclass(frozen=True, slots=True)
class BatcherSnapshot:
    """One model batcher's figures (``embed-MODEL``, ``rerank-MODEL``)."""

    name: str
    pending: int
    max_pending: int
    batches: int
    items: int
    largest: int
    rejected: int
    #: Quantile (of :data:`SIZE_QUANTILES`) -> batch size, over the last 1024 batches.
    recent_sizes: dict[float, float]

    @property
    def mean_size(self) -> float | None:
        return self.items / self.batches if self.batches else None


@dataclass(frozen=True, slots=True)
class ModelsSnapshot:
    """What the served models report, read at one moment (``/metrics`` and ``/v1/stats``)."""

    loads: tuple[LoadRecord, ...]
    batchers: tuple[BatcherSnapshot, ...]
    caches: tuple[CacheStats, ...]


@dataclass(frozen=True, slots=True)
class Serving:
    """How served models batch: items per model call, query embedding calls that run at once,
    and the items one batcher may hold before it refuses more (429)."""

    max_batch: int = 64
    query_workers: int = 1
    query_pending: int = 256
    rerank_pending: int = 256

    @classmethod
    def from_settings(cls, s: Settings) -> Serving:
        # A batcher may hold all that the admitted requests can submit at once: admission
        # control (ragserve.admission, at the HTTP edge) bounds the requests that reach the
        # models; this bound only stops a library caller's flood.
        return cls(
            max_batch=s.max_batch_size,
            # One per core run, or, when a model server embeds, one per admitted search, so
            # none waits behind another's call and each answers (or 503s) within
            # RAGSERVE_EMBEDDER_TIMEOUT; batches still form while all are busy.
            query_workers=max(s.embedder_runs, s.search_workers)
            if s.embedder_url
            else s.embedder_runs,
            # a search: one query; /v1/embeddings: up to a request's inputs
            query_pending=s.search_workers
            + s.rerank_workers
            + s.embeddings_workers * s.max_documents_per_request,
            rerank_pending=s.rerank_workers * max(s.max_documents_per_request, 200),  # top_n
        )


In = TypeVar("In")
Out = TypeVar("Out")


class _Batched(Generic[In, Out]):
    """A model's :class:`MicroBatcher`, started on first use."""

    def __init__(self, name: str, run: Callable[[Sequence[In]], list[Out]], **options: int):
        self.name = name
        self._run = run
        self._options = options
        self._batcher: MicroBatcher[In, Out] | None = None
        self._lock = threading.Lock()

    def __call__(self, items: Sequence[In]) -> list[Out]:
        batcher = self._batcher
        if batcher is None:
            with self._lock:
                if self._batcher is None:
                    self._batcher = MicroBatcher(self._run, name=self.name, **self._options)
                batcher = self._batcher
        return batcher(items)

    def snapshot(self) -> BatcherSnapshot | None:
        batcher = self._batcher
        if batcher is None:
            return None
        stats = batcher.stats
        recent = list(stats.sizes)
        sizes = np.quantile(recent, SIZE_QUANTILES) if recent else ()
        return BatcherSnapshot(
            name=self.name,
            pending=batcher.pending,
            max_pending=batcher.max_pending,
            batches=stats.batches,
            items=stats.items,
            largest=stats.largest,
            rejected=stats.rejected,
            recent_sizes={q: float(v) for q, v in zip(SIZE_QUANTILES, sizes, strict=False)},
        )

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()


class ServedEmbedder:
    """An :class:`Embedder` as the process serves it: query calls are cached per text and
    batched with other callers' (documents go to the model as they come: ingest batches them)."""

    def __init__(
        self, model: Embedder, spec: ModelSpec, caches: ModelCaches, serving: Serving
    ) -> None:
        self.model = model
        self._optional_instruction = spec.query_prefix_optional
        self._caches = caches
        self._batched: _Batched[tuple[str, bool], Vectors] = _Batched(
            f"embed-{model.name}",
            self._run,
            max_batch=serving.max_batch,
            max_pending=serving.query_pending,
            workers=serving.query_workers,
        )

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def dimension(self) -> int:
        return self.model.dimension

    def token_spans(self, text: str) -> Sequence[tuple[int, int]] | npt.NDArray[np.integer]:
        return self.model.token_spans(text)

    def token_spans_many(self, texts: Sequence[str]) -> list[TokenSpans]:
        return token_spans_many(self.model, texts)

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        return self.model.embed_documents(texts)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        """Cached per model + text; the misses join other callers' in one batch."""
        check_texts(texts, "query")  # before joining a batch shared with other requests
        instruction = instruction or not self._optional_instruction
        key = self.name if instruction else f"{self.name} (no instruction)"
        rows = self._caches.query_vectors(
            key, texts, lambda miss: self._batched([(t, instruction) for t in miss])
        )
        return np.stack(rows) if rows else np.zeros((0, self.dimension), "float32")

    def batcher(self) -> BatcherSnapshot | None:
        """Its batcher's figures (None until the first query)."""
        return self._batched.snapshot()

    def close(self) -> None:
        self._batched.close()

    def _run(self, items: Sequence[tuple[str, bool]]) -> list[Vectors]:
        """One model call per instruction flag among the batched (query, instruction) items."""
        out: list[Vectors] = [np.empty(0, np.float32)] * len(items)
        for instruction in (True, False):
            at = [i for i, item in enumerate(items) if item[1] is instruction]
            if at:
                texts = [items[i][0] for i in at]
                vectors = self.model.embed_queries(texts, instruction=instruction)
                for i, vector in zip(at, vectors, strict=True):
                    out[i] = vector
        return out


class ServedReranker:
    """A :class:`Reranker` as the process serves it: scores cached per (query, passage digest)
    and batched with other callers' pairs."""

    def __init__(self, model: Reranker, caches: ModelCaches, serving: Serving) -> None:
        self.model = model
        self._caches = caches
        self._batched: _Batched[tuple[str, str], float] = _Batched(
            f"rerank-{model.name}",
            self._run,
            max_batch=max(serving.max_batch, 200),
            max_pending=serving.rerank_pending,
        )

    @property
    def name(self) -> str:
        return self.model.name

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        scores = self._caches.rerank_scores(self.name, pairs, self._batched)
        return np.asarray(scores, dtype=np.float32)

    def batcher(self) -> BatcherSnapshot | None:
        """Its batcher's figures (None until the first pair is scored)."""
        return self._batched.snapshot()

    def close(self) -> None:
        self._batched.close()

    def _run(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return [float(x) for x in self.model.score_pairs(pairs)]


Served = ServedEmbedder | ServedReranker


@dataclass
class ModelManager:
    """The process's served models. Thread-safe: concurrent first uses load a model once, and
    each model loads under its own lock (a loading reranker never holds up an embedder)."""

    catalog: Catalog
    cache: ModelCache
    session_config: SessionConfig = field(default_factory=SessionConfig)
    #: Intra-op threads of embedder sessions (0: ``session_config.threads``) and how many
    #: batches of one embedding call run at once.
    embedder_threads: int = 0
    embedder_runs: int = 1
    batching: Batching = field(default_factory=Batching)
    rerank_max_length: int = 256
    #: None: each reranker's own preference (``ModelSpec.window``).
    rerank_window: bool | None = None
    verify_hashes: bool = True
    #: Models served by a model server (RAGSERVE_EMBEDDER_URL / RAGSERVE_RERANKER_URL).
    remote: RemoteModels | None = None
    serving: Serving = field(default_factory=Serving)
    #: LRU caches of model outputs (query vectors, rerank logits); never of search results.
    caches: ModelCaches = field(default_factory=lambda: ModelCaches(0, 0))
    _served: dict[str, Served] = field(default_factory=dict)
    _loaders: dict[str, Callable[[], Embedder | Reranker]] = field(default_factory=dict)
    _loads: dict[str, LoadRecord] = field(default_factory=dict)
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _registry_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelManager:
        cache = model_cache(settings)
        return cls(
            catalog=Catalog.load(settings.custom_models_path),
            cache=cache,
            remote=_remote_models(settings, cache),
            session_config=SessionConfig(
                threads=settings.effective_threads, spinning=settings.onnx_spinning
            ),
            embedder_threads=settings.embedder_threads,
            embedder_runs=settings.embedder_runs,
            batching=Batching(settings.batch_tokens, settings.max_batch_size),
            rerank_max_length=settings.rerank_max_length,
            rerank_window=settings.rerank_window,
            serving=Serving.from_settings(settings),
            caches=ModelCaches(settings.query_cache_size, settings.rerank_cache_size),
        )

    # ------------------------------------------------------------------ handing out

    def embedder(self, name: str) -> ServedEmbedder:
        served = self._get(self.catalog.get(name, Kind.EMBEDDER))
        assert isinstance(served, ServedEmbedder)
        return served

    def reranker(self, name: str) -> ServedReranker:
        served = self._get(self.catalog.get(name, Kind.RERANKER))
        assert isinstance(served, ServedReranker)
        return served

    def is_loaded(self, name: str) -> bool:
        return self.catalog.get(name).name in self._served

    def _get(self, spec: ModelSpec) -> Served:
        served = self._served.get(spec.name)  # the hot path: no lock once loaded
        if served is not None:
            return served
        with self._registry_lock:
            lock = self._locks.setdefault(spec.name, threading.Lock())
        with lock:  # this model's lock only: others load and serve meanwhile
            served = self._served.get(spec.name)
            if served is None:
                started = time.perf_counter()
                served = self._serve(spec, self._load(spec))
                self._served[spec.name] = served
                self._loads[spec.name] = LoadRecord(
                    spec.name, spec.kind.value, time.perf_counter() - started
                )
            return served

    def _load(self, spec: ModelSpec) -> Embedder | Reranker:
        loader = self._loaders.get(spec.name)
        if loader is not None:
            return loader()
        if self.remote is not None and self.remote.serves(spec.kind):
            if spec.kind is Kind.EMBEDDER:
                return self.remote.embedder(spec)
            return self.remote.reranker(spec)
        cached = self.cache.verify(spec, full=self.verify_hashes)
        if spec.kind is Kind.EMBEDDER:
            config = self.session_config
            if self.embedder_threads:
                config = replace(config, threads=self.embedder_threads)
            return OnnxEmbedder(cached, config, self.batching, parallel_runs=self.embedder_runs)
        return OnnxReranker(
            cached,
            self.session_config,
            max_length=self.rerank_max_length,
            batching=self.batching,
            window=spec.window if self.rerank_window is None else self.rerank_window,
        )

    def _serve(self, spec: ModelSpec, model: Embedder | Reranker) -> Served:
        if spec.kind is Kind.EMBEDDER:
            assert isinstance(model, Embedder)
            return ServedEmbedder(model, spec, self.caches, self.serving)
        assert isinstance(model, Reranker)
        return ServedReranker(model, self.caches, self.serving)

    # ------------------------------------------------------------------ registering

    def register(self, spec: ModelSpec, load: Callable[[], Embedder | Reranker]) -> None:
        """Serve ``spec`` with the model ``load()`` builds, on first use (timed, under the
        model's own lock, like a model from the cache): remote models, fakes in tests."""
        with self._registry_lock:
            self.catalog = Catalog([*(s for s in self.catalog if s.name != spec.name), spec])
            self._loaders[spec.name] = load
            self._served.pop(spec.name, None)
            self._loads.pop(spec.name, None)

    def provide(self, spec: ModelSpec, instance: Embedder | Reranker) -> None:
        """Serve ``spec`` with an already-built model (programs embedding ragserve, tests)."""
        self.register(spec, lambda: instance)
        served = self._serve(spec, instance)
        with self._registry_lock:
            self._served[spec.name] = served
            self._loads[spec.name] = LoadRecord(spec.name, spec.kind.value, 0.0)

    # ------------------------------------------------------------------ reporting

    def snapshot(self) -> ModelsSnapshot:
        """Loads, batchers and caches as they are now (cheap: no model work, no store)."""
        served = list(self._served.values())  # a copy: loads may add to it meanwhile
        batchers = (s.batcher() for s in served)
        return ModelsSnapshot(
            loads=tuple(self._loads.values()),
            batchers=tuple(sorted((b for b in batchers if b is not None), key=lambda b: b.name)),
            caches=tuple(cache.stats() for cache in self.caches.all()),
        )

    def close(self) -> None:
        for served in list(self._served.values()):
            served.close()
        if self.remote is not None:
            self.remote.close()


def model_cache(settings: Settings) -> ModelCache:
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    return ModelCache(
        settings.model_dir,
        source_dir=settings.model_source_dir,
        hf_token=token,
        wheelhouse=settings.wheelhouse,
        allow_unpinned=settings.allow_unpinned_sources,
    )


def _remote_models(settings: Settings, cache: ModelCache) -> RemoteModels | None:
    """The process's remote models, where a model server URL is set (imported only then: httpx
    and the remote clients cost ~60 ms and a few MB at start-up)."""
    if not (settings.embedder_url or settings.reranker_url):
        return None
    from ragserve.models.remote import RemoteModels

    return RemoteModels(settings, cache)
