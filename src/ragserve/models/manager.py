"""Loads models from the cache (never from the network), once each, and times every load."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

from ragserve.config import Settings
from ragserve.models.cache import ModelCache
from ragserve.models.catalog import Catalog, Kind, ModelSpec
from ragserve.models.embedder import Batching, Embedder, OnnxEmbedder
from ragserve.models.remote import RemoteModels
from ragserve.models.reranker import OnnxReranker, Reranker
from ragserve.models.runtime import SessionConfig


@dataclass(frozen=True, slots=True)
class LoadRecord:
    name: str
    kind: str
    seconds: float


@dataclass
class ModelManager:
    """The process's models. Thread-safe: concurrent first uses load a model once."""

    catalog: Catalog
    cache: ModelCache
    session_config: SessionConfig = field(default_factory=SessionConfig)
    #: Intra-op threads of embedder sessions (0: ``session_config.threads``) and how many
    #: batches of one embedding call run at once.
    embedder_threads: int = 0
    embedder_runs: int = 1
    batching: Batching = field(default_factory=Batching)
    rerank_max_length: int = 256
    verify_hashes: bool = True
    #: Models served by a model server (RAGSERVE_EMBEDDER_URL / RAGSERVE_RERANKER_URL).
    remote: RemoteModels | None = None
    loads: dict[str, LoadRecord] = field(default_factory=dict)
    _embedders: dict[str, Embedder] = field(default_factory=dict)
    _rerankers: dict[str, Reranker] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> ModelManager:
        cache = model_cache(settings)
        return cls(
            catalog=Catalog.load(settings.custom_models_path),
            cache=cache,
            remote=RemoteModels(settings, cache),
            session_config=SessionConfig(
                threads=settings.effective_threads, spinning=settings.onnx_spinning
            ),
            embedder_threads=settings.embedder_threads,
            embedder_runs=settings.embedder_runs,
            batching=Batching(settings.batch_tokens, settings.max_batch_size),
            rerank_max_length=settings.rerank_max_length,
        )

    def embedder(self, name: str) -> Embedder:
        spec = self.catalog.get(name, Kind.EMBEDDER)
        with self._lock:
            if spec.name not in self._embedders:
                started = time.perf_counter()
                if self.remote is not None and self.remote.serves(Kind.EMBEDDER):
                    self._embedders[spec.name] = self.remote.embedder(spec)
                    self._record(spec.name, Kind.EMBEDDER, started)
                    return self._embedders[spec.name]
                cached = self.cache.verify(spec, full=self.verify_hashes)
                config = self.session_config
                if self.embedder_threads:
                    config = replace(config, threads=self.embedder_threads)
                self._embedders[spec.name] = OnnxEmbedder(
                    cached, config, self.batching, parallel_runs=self.embedder_runs
                )
                self._record(spec.name, Kind.EMBEDDER, started)
            return self._embedders[spec.name]

    def reranker(self, name: str) -> Reranker:
        spec = self.catalog.get(name, Kind.RERANKER)
        with self._lock:
            if spec.name not in self._rerankers:
                started = time.perf_counter()
                if self.remote is not None and self.remote.serves(Kind.RERANKER):
                    self._rerankers[spec.name] = self.remote.reranker(spec)
                    self._record(spec.name, Kind.RERANKER, started)
                    return self._rerankers[spec.name]
                cached = self.cache.verify(spec, full=self.verify_hashes)
                self._rerankers[spec.name] = OnnxReranker(
                    cached,
                    self.session_config,
                    max_length=self.rerank_max_length,
                    batching=self.batching,
                )
                self._record(spec.name, Kind.RERANKER, started)
            return self._rerankers[spec.name]

    def provide(self, spec: ModelSpec, instance: Embedder | Reranker) -> None:
        """Register an already-built model under ``spec`` (programs embedding ragserve, tests)."""
        with self._lock:
            self.catalog = Catalog([*(s for s in self.catalog if s.name != spec.name), spec])
            target: dict[str, Any] = (
                self._embedders if spec.kind is Kind.EMBEDDER else self._rerankers
            )
            target[spec.name] = instance
            self.loads[spec.name] = LoadRecord(spec.name, spec.kind.value, 0.0)

    def is_loaded(self, name: str) -> bool:
        spec = self.catalog.get(name)
        return spec.name in self._embedders or spec.name in self._rerankers

    def _record(self, name: str, kind: Kind, started: float) -> None:
        self.loads[name] = LoadRecord(name, kind.value, time.perf_counter() - started)


def model_cache(settings: Settings) -> ModelCache:
    token = settings.hf_token.get_secret_value() if settings.hf_token else None
    return ModelCache(
        settings.model_dir,
        source_dir=settings.model_source_dir,
        hf_token=token,
        wheelhouse=settings.wheelhouse,
        allow_unpinned=settings.allow_unpinned_sources,
    )
