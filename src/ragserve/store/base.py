"""The store contract: what every backend (embedded SQLite, PostgreSQL) offers, and the registry.

A store holds *collections*; each is bound at creation to one embedder name and vector
dimension. A collection holds documents (id, title, metadata, content hash) and their chunks
(text, offsets, chunk metadata, one float32 vector each). Writes are per document and atomic.
Searches return :class:`ScoredChunk`; higher scores are better within one search.

Shared validation lives here so every backend rejects the same inputs with the same errors.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragserve.errors import InvalidInput
from ragserve.filters import Filter
from ragserve.types import Chunk, Document, JSONDict

if TYPE_CHECKING:
    from ragserve.config import Settings

Vectors = npt.NDArray[np.float32]
UpsertOutcome = Literal["created", "updated"]
FilterArg = Filter | Mapping[str, Any] | None

#: Largest ``k`` one store search accepts (the API has its own, smaller, ``max_top_k``).
MAX_K = 10_000
MAX_QUERY_CHARS = 16_384
_COLLECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DOC_ID_MAX = 512


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    name: str
    embedder: str
    dimension: int
    created_at: float
    documents: int = 0
    chunks: int = 0


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as stored: no full text (its chunks carry it), plus bookkeeping."""

    id: str
    title: str | None
    metadata: JSONDict
    content_hash: str
    created_at: float
    updated_at: float
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """A document's id, content hash and metadata: what a sync compares (no chunks)."""

    id: str
    content_hash: str
    metadata: JSONDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScoredChunk:
    """One chunk found by a search. ``score``: cosine similarity (dense) or -bm25 (lexical)."""

    document_id: str
    chunk_index: int
    text: str
    score: float
    metadata: JSONDict = field(default_factory=dict)
    chunk_metadata: JSONDict = field(default_factory=dict)

    @property
    def chunk_id(self) -> str:
        return f"{self.document_id}#{self.chunk_index}"


@dataclass(frozen=True, slots=True)
class ChunkRef:
    """A search hit before its text and metadata are read: enough to rank, fuse and collapse.

    ``key`` is the store's own handle on the chunk row (opaque); :meth:`Store.hydrate` reads the
    rest for the few hits a search returns, instead of for every candidate.
    """

    key: Hashable
    document_id: str
    chunk_index: int
    score: float

    @property
    def chunk_id(self) -> str:
        return f"{self.document_id}#{self.chunk_index}"


class SearchByRefs:
    """``dense_search`` / ``lexical_search`` as refs then :meth:`Store.hydrate`: the same for
    every backend that implements the ``*_refs`` methods and ``hydrate``."""

    def dense_refs(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        raise NotImplementedError

    def lexical_refs(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        raise NotImplementedError

    def hydrate(self, collection: str, refs: Sequence[ChunkRef]) -> list[ScoredChunk]:
        raise NotImplementedError

    def dense_search(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ScoredChunk]:
        return self.hydrate(collection, self.dense_refs(collection, vector, k, filter))

    def lexical_search(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ScoredChunk]:
        return self.hydrate(collection, self.lexical_refs(collection, query_text, k, filter))


@runtime_checkable
class Store(Protocol):
    """Backend-independent store contract. Implementations are thread-safe."""

    def create_collection(self, name: str, embedder: str, dimension: int) -> CollectionInfo:
        """Create, or return the existing one if bound to the same embedder and dimension
        (else :class:`~ragserve.errors.Conflict`)."""
        ...

    def list_collections(self) -> list[CollectionInfo]: ...

    def get_collection(self, name: str) -> CollectionInfo:
        """With document and chunk counts; :class:`CollectionNotFound` if absent."""
        ...

    def collection_embedder(self, name: str) -> str:
        """The embedder ``name`` is bound to (no counts: cheap enough for every search)."""
        ...

    def delete_collection(self, name: str) -> None: ...

    def upsert_document(
        self,
        collection: str,
        document: Document,
        content_hash: str,
        chunks: Sequence[Chunk],
        vectors: Vectors,
    ) -> UpsertOutcome:
        """Store ``document`` with exactly ``chunks`` (replacing older ones), all or nothing."""
        ...

    def get_document_hash(self, collection: str, document_id: str) -> str | None: ...

    def get_document(self, collection: str, document_id: str) -> StoredDocument: ...

    def delete_document(self, collection: str, document_id: str) -> None: ...

    def dense_search(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ScoredChunk]: ...

    def lexical_search(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ScoredChunk]: ...

    def dense_refs(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        """:meth:`dense_search` without reading texts and metadata."""
        ...

    def lexical_refs(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        """:meth:`lexical_search` without reading texts and metadata."""
        ...

    def hydrate(self, collection: str, refs: Sequence[ChunkRef]) -> list[ScoredChunk]:
        """The chunks behind ``refs`` (from this collection's searches), in order, with their
        scores. A chunk deleted since is left out (a replaced document's chunk may come back
        with its new text)."""
        ...

    def list_documents(
        self, collection: str, where: Mapping[str, str] | None = None
    ) -> list[DocumentRef]:
        """The documents whose metadata has each key of ``where`` equal to its (string) value
        (all documents without ``where``), by id. :mod:`ragserve.sync` finds a source's
        documents with it."""
        ...

    def chunk_windows(
        self, collection: str, windows: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Chunk, ...]]:
        """For each ``(document id, first, last)``: that document's chunks with
        ``first <= index <= last``, in index order (empty if the document is gone), read in one
        snapshot. Context expansion (:mod:`ragserve.context`) reads a hit's neighbours with it."""
        ...

    def collection_options(self, name: str) -> JSONDict:
        """The collection's own defaults (e.g. ``{"fusion": {...}}``; ``{}`` when it has none),
        kept with the collection and gone with it. The service validates what goes in."""
        ...

    def set_collection_options(self, name: str, options: JSONDict) -> None:
        """Replace the collection's defaults (``{}`` clears them), atomically."""
        ...

    def export_documents(self, collection: str) -> Iterator[tuple[StoredDocument, Vectors]]:
        """Every document of ``collection`` (by id) with its chunks in index order and their
        vectors (one row per chunk), each document read in one snapshot: for migrations."""
        ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- shared validation


def check_collection_name(name: object) -> str:
    if not isinstance(name, str) or not _COLLECTION_NAME.match(name):
        raise InvalidInput(
            f"invalid collection name {name!r}: 1-64 characters, letters, digits, '_', '.' "
            "or '-', starting with a letter or digit"
        )
    return name


def check_document_id(doc_id: object) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > _DOC_ID_MAX:
        raise InvalidInput(f"document id must be a non-empty string of at most {_DOC_ID_MAX}")
    if "\x00" in doc_id:
        raise InvalidInput("document id must not contain NUL characters")
    return doc_id


def check_k(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be an integer between 1 and {MAX_K}, got {k!r}")
    return k


def check_dimension(dimension: object) -> int:
    if not isinstance(dimension, int) or isinstance(dimension, bool) or not 1 <= dimension <= 8192:
        raise InvalidInput(f"dimension must be an integer between 1 and 8192, got {dimension!r}")
    return dimension


def check_query_vector(vector: object, dimension: int) -> Vectors:
    arr = np.asarray(vector, dtype=np.float32)
    if arr.ndim == 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 1 or arr.shape[0] != dimension:
        raise InvalidInput(
            f"query vector must have dimension {dimension}, got shape {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInput("query vector contains NaN or infinite values")
    return np.ascontiguousarray(arr)


def check_query_text(text: object) -> str:
    if not isinstance(text, str):
        raise InvalidInput(f"query must be a string, got {type(text).__name__}")
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidInput(f"query is longer than {MAX_QUERY_CHARS} characters")
    return text


def check_upsert(
    document: Document, chunks: Sequence[Chunk], vectors: object, dimension: int
) -> Vectors:
    """Validate one upsert; returns the vectors as a C-contiguous float32 matrix."""
    check_document_id(document.id)
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape != (len(chunks), dimension):
        raise InvalidInput(
            f"vectors must have shape ({len(chunks)}, {dimension}) for {len(chunks)} chunks, "
            f"got {tuple(arr.shape)}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidInput("vectors contain NaN or infinite values")
    seen: set[int] = set()
    for chunk in chunks:
        if chunk.document_id != document.id:
            raise InvalidInput(
                f"chunk {chunk.id!r} belongs to {chunk.document_id!r}, not {document.id!r}"
            )
        if chunk.index < 0 or chunk.index in seen:
            raise InvalidInput(f"chunk indexes must be unique and >= 0 (got {chunk.index})")
        seen.add(chunk.index)
    return np.ascontiguousarray(arr)


# --------------------------------------------------------------------------- registry

StoreFactory = Callable[["Settings"], Store]


@dataclass(frozen=True, slots=True)
class Backend:
    """A store backend, registered by name.

    ``factory`` is a callable taking :class:`Settings`, or ``"module:callable"`` imported on first
    use so optional dependencies (psycopg) load only when that backend is chosen. ``endpoint``
    names the setting an endpoint ``NAME:WHERE`` (``ragserve migrate --from/--to``) sets to WHERE;
    ``where`` says what WHERE is, for messages.
    """

    factory: str | StoreFactory
    endpoint: str
    where: str

    def resolve(self) -> StoreFactory:
        if not isinstance(self.factory, str):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        factory: StoreFactory = target
        return factory


BACKENDS: dict[str, Backend] = {
    "sqlite": Backend("ragserve.store.sqlite:SqliteStore.from_settings", "data_dir", "PATH"),
    "postgres": Backend(
        "ragserve.store.postgres.store:PostgresStore.from_settings", "postgres_dsn", "DSN"
    ),
}


def register_backend(name: str, backend: Backend) -> None:
    BACKENDS[name] = backend


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def get_backend(name: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        raise InvalidInput(f"unknown store backend {name!r}; valid: {', '.join(backend_names())}")
    return backend


def resolve_backend(name: str) -> StoreFactory:
    return get_backend(name).resolve()


def open_store(settings: Settings) -> Store:
    """The store named by ``settings.store``."""
    return resolve_backend(settings.store)(settings)


def endpoint_forms() -> str:
    """``postgres:DSN or sqlite:PATH``: the endpoints :func:`open_endpoint` accepts."""
    return " or ".join(f"{name}:{BACKENDS[name].where}" for name in backend_names())


def open_endpoint(spec: str, settings: Settings) -> Store:
    """The store at ``NAME:WHERE`` (e.g. ``sqlite:PATH``, ``postgres:DSN``): backend ``NAME`` of
    the registry, opened with ``settings`` whose backend's endpoint setting is WHERE."""
    name, sep, where = spec.partition(":")
    if not sep or not where:
        raise InvalidInput(f"store {spec!r}: expected {endpoint_forms()}")
    if name not in BACKENDS:
        raise InvalidInput(f"store {spec!r}: unknown kind {name!r}; expected {endpoint_forms()}")
    backend = BACKENDS[name]
    # Validated like any setting (paths expanded, secrets wrapped), without re-reading the
    # environment.
    values = {**settings.model_dump(), "store": name, backend.endpoint: where}
    return backend.resolve()(type(settings).model_validate(values))
