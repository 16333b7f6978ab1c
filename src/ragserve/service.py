"""The library core: ingest, search and model calls. The HTTP API and the CLI are thin shells.

::

    service = RetrievalService.open(Settings())
    service.create_collection("docs")
    service.ingest("docs", [Document(id="a", text="...")])
    service.search("docs", SearchRequest(query="..."))
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from ragserve.config import Settings
from ragserve.errors import (
    CollectionNotFound,
    InvalidInput,
    ModelUnavailable,
    PayloadTooLarge,
    RagserveError,
)
from ragserve.fusion import FusionSpec, parse_fusion, settings_fusion
from ragserve.ingest.chunking import (
    chunk_document,
    content_budget,
    content_hash,
    embedding_text,
)
from ragserve.ingest.parsers import check_chars
from ragserve.ingest.records import check_record
from ragserve.ingest.sources import IngestFailure
from ragserve.memory import trim_soon
from ragserve.models.catalog import Kind
from ragserve.models.embedder import (
    CHARS_PER_TOKEN_KEPT,
    Embedder,
    TokenSpans,
    Vectors,
    check_text,
    check_texts,
    token_spans_many,
)
from ragserve.models.manager import ModelManager
from ragserve.models.reranker import Reranker, Scores, sigmoid
from ragserve.roles import check_remote_models, has_store, no_store
from ragserve.search import Searcher, SearchRequest, SearchResult
from ragserve.store.base import CollectionInfo, Store, StoredDocument, open_store
from ragserve.types import Chunk, Document

log = logging.getLogger(__name__)

Status = Literal["created", "updated", "unchanged", "failed"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    id: str
    status: Status
    chunks: int = 0
    error: str | None = None
    source: str | None = None
    #: The error's type (``RagserveError.error_type``) when the store refused the write.
    error_type: str | None = None


@dataclass
class IngestTimings:
    """Seconds spent per ingest stage (parse = waiting on the source iterator, which parses)."""

    parse: float = 0.0
    chunk: float = 0.0
    embed: float = 0.0
    store: float = 0.0
    documents: int = 0
    chunks: int = 0

    def as_dict(self) -> dict[str, float]:
        total = sum(getattr(self, stage) for stage in STAGES)
        out = {stage: round(getattr(self, stage), 3) for stage in STAGES}
        out |= {f"{stage}_share": round(getattr(self, stage) / total, 3) if total else 0.0
                for stage in STAGES}  # fmt: skip
        return out | {"documents": self.documents, "chunks": self.chunks}


STAGES = ("parse", "chunk", "embed", "store")


@dataclass
class _Prepared:
    document: Document
    hash: str
    chunks: list[Chunk]
    source: str | None


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: Vectors
    model: str
    #: Tokens the model was given (what the OpenAI API calls prompt tokens).
    tokens: int


@dataclass(frozen=True, slots=True)
class Ranked:
    index: int
    relevance_score: float
    logit: float


@dataclass(frozen=True, slots=True)
class Reranked:
    model: str
    results: tuple[Ranked, ...]


class DocumentRecord(Protocol):
    """A document as a client sends it (JSON): the id is optional."""

    id: str | None
    text: str
    title: str | None
    metadata: dict[str, Any]


def document_id_for(text: str) -> str:
    """The id given to a document posted without one: stable, so re-posting is idempotent."""
    return "doc-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


class RetrievalService:
    """Orchestrates ingest and search over the served models and the store. Thread-safe.

    It does not shed load: how many searches, ingests and model calls run at once, and how
    long a request may wait, is decided in front of it (:mod:`ragserve.admission`)."""

    def __init__(self, settings: Settings, models: ModelManager, store: Store) -> None:
        self.settings = settings
        #: The served models: batched, cached, each loaded under its own lock.
        self.models = models
        self.store = store
        #: The fusion of a hybrid search that names none, in a collection without its own.
        self.default_fusion = settings_fusion(settings)
        self._searcher = Searcher(
            store,
            max_k=settings.max_top_k,
            fusion=self.default_fusion,
            hybrid_instruction=settings.hybrid_query_instruction,
        )

    @classmethod
    def open(cls, settings: Settings, *, load_models: bool = True) -> RetrievalService:
        limit_blas_threads(settings.blas_threads)
        store = open_store(settings) if has_store(settings.role) else no_store()
        service = cls(settings, ModelManager.from_settings(settings), store)
        if load_models:
            service.load_models()
        return service

    def load_models(self) -> None:
        """Load the default embedder (and the reranker when it loads eagerly); check remote ones
        against their servers and the collections (:func:`ragserve.roles.check_remote_models`)."""
        s = self.settings
        embedder = self.models.embedder(s.embedder).model
        reranker = None
        if s.reranker_load == "eager" or (s.reranker_url and s.reranker_load != "off"):
            reranker = self.models.reranker(s.reranker).model
        if has_store(s.role) and (s.embedder_url or s.reranker_url):
            check_remote_models(embedder, reranker, self.store.list_collections())

    def close(self) -> None:
        self.models.close()
        self.store.close()

    # ------------------------------------------------------------------ models

    def embedder(self, name: str | None = None) -> Embedder:
        return self.models.embedder(name or self.settings.embedder)

    def reranker(self, name: str | None = None) -> Reranker:
        if self.settings.reranker_load == "off" and name is None:
            raise InvalidInput("reranking is disabled on this server (RAGSERVE_RERANKER_LOAD=off)")
        return self.models.reranker(name or self.settings.reranker)

    def embed_queries(
        self, texts: Sequence[str], model: str | None = None, *, instruction: bool = True
    ) -> Vectors:
        """Query embeddings, batched with other concurrent callers (cached per model + text).

        ``instruction=False`` leaves out the query instruction where the model's spec marks it
        optional (an embedder without that notion always gets its usual query form).
        """
        return self.embedder(model).embed_queries(texts, instruction=instruction)

    def embed_documents(self, texts: Sequence[str], model: str | None = None) -> Vectors:
        return self.embedder(model).embed_documents(texts)

    def rerank(self, query: str, passages: Sequence[str], model: str | None = None) -> Scores:
        """Raw cross-encoder logits for each passage, batched with other concurrent callers.

        Cached per (reranker, query, passage hash): changed or deleted chunks can't be hit."""
        check_text(query, "query")  # before joining a batch shared with other requests
        check_texts(passages, "documents")
        return self.reranker(model).score_pairs([(query, p) for p in passages])

    # ------------------------------------------------------------------ model calls of the API

    def embeddings(
        self,
        texts: Sequence[str],
        model: str | None = None,
        *,
        query: bool = False,
        instruction: bool = True,
        dimensions: int | None = None,
    ) -> Embeddings:
        """Embeddings of ``texts`` as documents (or as queries), optionally cut to their first
        ``dimensions`` and renormalised (Matryoshka-style), with the tokens the model saw."""
        if not texts:
            raise InvalidInput("input must not be empty")
        self._check_count(len(texts), "inputs")
        check_texts(texts, "input")  # a bad text fails this request alone, not its batch-mates
        embedder = self.embedder(model)
        if dimensions is not None and dimensions > embedder.dimension:
            raise InvalidInput(
                f"dimensions must be at most {embedder.dimension} for model {embedder.name}"
            )
        if query:
            vectors = embedder.embed_queries(texts, instruction=instruction)
        else:
            vectors = embedder.embed_documents(texts)
        if dimensions is not None and dimensions < embedder.dimension:
            vectors = vectors[:, :dimensions]
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        # Counted on what the model is given (each text cut at max_length x 64 characters, see
        # models.embedder): a 60 MB input no longer costs a minute of tokenizing to be counted.
        keep = self.models.catalog.get(embedder.name).max_length * CHARS_PER_TOKEN_KEPT
        tokens = sum(len(s) for s in token_spans_many(embedder, [t[:keep] for t in texts]))
        return Embeddings(np.asarray(vectors, dtype=np.float32), embedder.name, tokens)

    def tokenize(
        self, texts: Sequence[str], model: str | None = None
    ) -> tuple[str, list[TokenSpans]]:
        """The embedder's name and the character offsets of every token of each text (no special
        tokens, no truncation): what the embedder's chunking counts in."""
        if not texts:
            raise InvalidInput("input must not be empty")
        self._check_count(len(texts), "inputs")
        check_texts(texts, "input")
        embedder = self.embedder(model)
        return embedder.name, token_spans_many(embedder, texts)

    def rerank_documents(
        self, query: str, documents: Sequence[str], model: str | None = None, *, top_n: int | None
    ) -> Reranked:
        """``documents`` ranked for ``query``, best first, cut to ``top_n``; each with its raw
        logit and its sigmoid as the relevance score (0..1)."""
        self._check_count(len(documents), "documents")
        self._check_query(query)
        logits = self.rerank(query, documents, model)
        scores = sigmoid(logits)
        order = np.argsort(-logits, kind="stable")[: top_n or len(documents)]
        ranked = tuple(Ranked(int(i), float(scores[i]), float(logits[i])) for i in order)
        return Reranked(self.reranker(model).name, ranked)

    def documents_from_records(
        self, records: Sequence[DocumentRecord], *, most: int | None = None
    ) -> list[Document | IngestFailure]:
        """Documents given as records (JSON): each checked as a record of an uploaded JSONL file
        is, so one bad document fails alone; one without an id gets :func:`document_id_for`.
        At most ``most`` (default: ``RAGSERVE_MAX_DOCUMENTS_PER_REQUEST``; an ingest job's is
        ``RAGSERVE_MAX_DOCUMENTS_PER_JOB``)."""
        self._check_count(len(records), "documents in one request", most)
        s = self.settings
        items: list[Document | IngestFailure] = []
        for index, r in enumerate(records):
            where = r.id or f"documents[{index}]"
            try:
                check_record(where, r.text, r.title, r.metadata, s.max_document_bytes)
                check_chars(len(r.text), s.max_document_chars)
            except RagserveError as exc:
                items.append(IngestFailure.of(where, exc))
                continue
            doc_id = r.id or document_id_for(r.text)
            items.append(Document(id=doc_id, text=r.text, title=r.title, metadata=r.metadata))
        return items

    # ------------------------------------------------------------------ limits

    def _check_count(self, count: int, what: str, most: int | None = None) -> None:
        """``RAGSERVE_MAX_DOCUMENTS_PER_REQUEST``: documents, files, inputs of one request."""
        most = most or self.settings.max_documents_per_request
        if count > most:
            raise PayloadTooLarge(f"{count} {what}; the limit is {most}")

    def _check_query(self, query: str) -> None:
        if len(query) > self.settings.max_query_chars:
            raise InvalidInput(f"query is longer than {self.settings.max_query_chars} characters")
        check_text(query, "query")

    # ------------------------------------------------------------------ collections

    def create_collection(
        self,
        name: str,
        embedder: str | None = None,
        *,
        fusion: Mapping[str, Any] | FusionSpec | None = None,
    ) -> CollectionInfo:
        """Create ``name`` (idempotent for the same embedder); ``fusion``: its default fusion."""
        spec = self.models.catalog.get(embedder or self.settings.embedder, Kind.EMBEDDER)
        checked = parse_fusion(fusion, self.default_fusion) if fusion is not None else None
        info = self.store.create_collection(name, spec.name, spec.dimension)
        if checked is not None:
            self.set_collection_fusion(name, checked)
        return info

    def ensure_collection(
        self, name: str, embedder: str | None = None, *, create: bool = True
    ) -> CollectionInfo:
        """The collection ``name``; missing, it is created with ``embedder`` when ``create``
        (else :class:`~ragserve.errors.CollectionNotFound`). An existing one is returned as it
        is, whatever its embedder."""
        try:
            return self.store.get_collection(name)
        except CollectionNotFound:
            if not create:
                raise
        return self.create_collection(name, embedder)

    def list_collections(self) -> list[CollectionInfo]:
        return self.store.list_collections()

    def get_collection(self, name: str) -> CollectionInfo:
        return self.store.get_collection(name)

    def delete_collection(self, name: str) -> None:
        self.store.delete_collection(name)

    def collection_fusion(self, name: str) -> FusionSpec | None:
        """The collection's own default fusion (None: it follows the server's)."""
        value = self.store.collection_options(name).get("fusion")
        return parse_fusion(value, self.default_fusion) if value else None

    def set_collection_fusion(
        self, name: str, fusion: Mapping[str, Any] | FusionSpec | None
    ) -> FusionSpec | None:
        """Set (keys not given: the server's default) or clear (None) the collection's default
        fusion; hybrid searches that name no fusion use it. Checked before it is stored."""
        options = dict(self.store.collection_options(name))
        spec = parse_fusion(fusion, self.default_fusion) if fusion is not None else None
        if spec is None:
            options.pop("fusion", None)
        else:
            options["fusion"] = spec.as_dict()
        self.store.set_collection_options(name, options)
        return spec

    def search_fusion(self, name: str) -> FusionSpec:
        """What a hybrid search of ``name`` fuses with when its request names no fusion."""
        return self.collection_fusion(name) or self.default_fusion

    # ------------------------------------------------------------------ documents

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        return self.store.get_document(collection, document_id)

    def delete_document(self, collection: str, document_id: str) -> None:
        self.store.delete_document(collection, document_id)

    def ingest(
        self, collection: str, items: Iterable[Document | IngestFailure], *, batch_chunks: int = 64
    ) -> list[IngestResult]:
        return list(self.ingest_iter(collection, items, batch_chunks=batch_chunks))

    def ingest_iter(
        self,
        collection: str,
        items: Iterable[Document | IngestFailure],
        *,
        batch_chunks: int = 64,
        timings: IngestTimings | None = None,
    ) -> Iterator[IngestResult]:
        """Ingest documents, yielding one result per item, in order, as each group is stored.

        Unchanged documents (same content hash) are not re-embedded. A failing document is
        reported and the rest go on; each stored document is all or nothing. ``timings``, when
        given, accumulates the seconds spent per stage.
        """
        info = self.store.get_collection(collection)
        embedder = self.embedder(info.embedder)
        spec = self.models.catalog.get(info.embedder)
        budget = content_budget(spec.max_length, embedder.token_spans, spec.document_prefix)
        clock = timings or IngestTimings()
        down: list[ModelUnavailable] = []  # the model server failed: the rest fail at once
        group: list[_Prepared | IngestResult] = []
        pending_chunks = 0
        source = iter(items)
        while True:
            started = time.perf_counter()
            item = next(source, None)
            clock.parse += time.perf_counter() - started
            if item is None:
                break
            started = time.perf_counter()
            prepared = self._prepare(collection, embedder, budget, item, down)
            clock.chunk += time.perf_counter() - started
            group.append(prepared)
            if isinstance(prepared, _Prepared):
                pending_chunks += len(prepared.chunks)
            if pending_chunks >= batch_chunks:
                yield from self._store_group(collection, embedder, group, clock, down)
                group, pending_chunks = [], 0
        if group:
            yield from self._store_group(collection, embedder, group, clock, down)
        trim_soon()  # what the ingest freed goes back to the system once ingests settle

    def _prepare(
        self,
        collection: str,
        embedder: Embedder,
        budget: int,
        item: Document | IngestFailure,
        down: list[ModelUnavailable],
    ) -> _Prepared | IngestResult:
        if isinstance(item, IngestFailure):
            return IngestResult(item.source, "failed", error=item.error, source=item.source)
        source = item.metadata.get("source") if isinstance(item.metadata, dict) else None
        doc_id = item.id
        try:
            if not item.text.strip():
                raise InvalidInput("document has no text")
            digest = content_hash(item)
            stored = self.store.get_document_hash(collection, doc_id)
            if stored == digest:
                count = len(self.store.get_document(collection, doc_id).chunks)
                return IngestResult(doc_id, "unchanged", count, source=source)
            if down:  # the model server that tokenizes failed: the rest fail at once
                raise down[0]
            chunks = chunk_document(
                item,
                embedder.token_spans,
                chunk_tokens=self.settings.chunk_tokens,
                overlap=self.settings.chunk_overlap,
                title_prefix=self.settings.chunk_title_prefix,
                max_tokens=budget,
                max_chars=self.settings.max_document_chars,
            )
            if not chunks:
                raise InvalidInput("document has no text to index")
        except ModelUnavailable as exc:  # its model server tokenizes (models.remote)
            down[:1] = [exc]
            return IngestResult(
                doc_id, "failed", error=exc.message, source=source, error_type=exc.error_type
            )
        except RagserveError as exc:
            if not exc.public:
                raise
            return IngestResult(doc_id, "failed", error=exc.message, source=source)
        return _Prepared(item, digest, chunks, source)

    def _store_group(
        self,
        collection: str,
        embedder: Embedder,
        group: list[_Prepared | IngestResult],
        clock: IngestTimings,
        down: list[ModelUnavailable],
    ) -> Iterator[IngestResult]:
        prepared = [g for g in group if isinstance(g, _Prepared)]
        texts = [embedding_text(c) for p in prepared for c in p.chunks]
        started = time.perf_counter()
        try:
            if down:
                raise down[0]
            vectors = self.embed_documents(texts, embedder.name) if texts else None
        except ModelUnavailable as exc:  # a model server: each document fails, none half-stored
            down[:1] = [exc]
            for item in group:
                yield item if isinstance(item, IngestResult) else IngestResult(
                    item.document.id, "failed", error=exc.message, source=item.source,
                    error_type=exc.error_type,
                )  # fmt: skip
            return
        finally:
            clock.embed += time.perf_counter() - started
        offset = 0
        for item in group:
            if isinstance(item, IngestResult):
                yield item
                continue
            n = len(item.chunks)
            assert vectors is not None
            started = time.perf_counter()
            try:
                outcome = self.store.upsert_document(
                    collection, item.document, item.hash, item.chunks, vectors[offset : offset + n]
                )
            except RagserveError as exc:
                clock.store += time.perf_counter() - started
                if not exc.public:
                    raise
                yield IngestResult(
                    item.document.id, "failed", error=exc.message, error_type=exc.error_type
                )
            else:
                clock.store += time.perf_counter() - started
                clock.documents += 1
                clock.chunks += n
                yield IngestResult(item.document.id, outcome, n, source=item.source)
            offset += n

    # ------------------------------------------------------------------ search

    def search(self, collection: str, request: SearchRequest) -> SearchResult:
        """Run one search; ``top_k`` and the other request limits are checked by the searcher
        (``RAGSERVE_MAX_TOP_K``), the query's length here."""
        name = self.store.collection_embedder(collection)
        self._check_query(request.query)
        if request.mode == "hybrid" and request.fusion is None:
            request = replace(request, fusion=self.search_fusion(collection))
        embedder = self.embedder(name) if request.mode != "lexical" else None
        reranker = self.reranker() if request.rerank else None
        return self._searcher.search(collection, request, embedder=embedder, reranker=reranker)


def limit_blas_threads(threads: int) -> None:
    """Cap numpy's BLAS pool for the process (0: leave it).

    Requests already run in parallel; a multi-threaded BLAS under each of them oversubscribes
    the cores (measured at concurrency 16: 57 -> 80 searches/s with one BLAS thread).
    """
    if threads:
        threadpool_limits(limits=threads, user_api="blas")


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas for the process (``mallopt(M_ARENA_MAX)``); False elsewhere.

    Each thread that allocates otherwise gets an arena of its own (up to 8 per core), and the
    server's request threads fragment them: measured with 16 concurrent searches then reranks,
    RSS 487 MB by default and 419 MB with 2 arenas, at the same throughput. An explicit
    ``MALLOC_ARENA_MAX`` in the environment wins.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(libc.mallopt(_M_ARENA_MAX, arenas))


_M_ARENA_MAX = -8
