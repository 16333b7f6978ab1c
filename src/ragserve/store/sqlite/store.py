"""The embedded store: one SQLite database per data directory (FTS5 for BM25 inside), a fast BM25
index and an ANN index beside it.

Layout of ``data_dir``::

    ragserve.db (+ -wal, -shm)   collections, documents, chunks (text, offsets, metadata, vector)
                                 and one FTS5 table per collection (``fts_<id>``, external content)
    ann/<id>.hnsw, .json         HNSW index of a large collection + manifest (derived data)
    lexical/<id>/, <id>.json     tantivy BM25 index of a collection + manifest (derived data)
    ragserve.lock                held by the process that has the directory open
    ragserve.clean               written at a clean close, removed at open: no quick_check

One database (not one per collection) because collection create/delete is then one transaction,
there is one file set to back up, and SQLite's single writer is not the ingest bottleneck
(embedding is, by orders of magnitude). Per-collection FTS tables keep BM25 statistics
(document frequencies, average length) per collection, as they must be.

Durability: WAL, ``synchronous=FULL`` by default; every write is one ``BEGIN IMMEDIATE``
transaction, so a document is either entirely there or not at all. The dense index is updated
after the commit and saved on :meth:`SqliteStore.flush` / :meth:`SqliteStore.close`; at open a
missing, stale or corrupt index file is rebuilt from the vectors in SQLite.

Lexical search: FTS5 is the transactional BM25 index, kept in every write's transaction; with
``lexical_index="tantivy"`` (the default) searches go to a tantivy index derived from SQLite
(:mod:`.lexical`: ~100x faster at 100,000 chunks), with ``"fts5"`` to FTS5 itself.

Concurrency: writes take one lock and the writer connection; each reading thread has its own
connection (WAL readers never block the writer). A ``flock`` on ``ragserve.lock`` stops a second
process from opening the same directory, since each process keeps in-memory indexes.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ragserve.errors import (
    CollectionNotFound,
    Conflict,
    DocumentNotFound,
    InvalidInput,
    RagserveError,
    Unavailable,
)
from ragserve.filters import Filter, coerce_filter
from ragserve.store.base import (
    MAX_K,
    ChunkRef,
    CollectionInfo,
    DocumentRef,
    FilterArg,
    ScoredChunk,
    SearchByRefs,
    StoredDocument,
    UpsertOutcome,
    Vectors,
    check_collection_name,
    check_dimension,
    check_document_id,
    check_k,
    check_query_text,
    check_query_vector,
    check_upsert,
)
from ragserve.store.sqlite import ann
from ragserve.store.sqlite.filters import to_sql
from ragserve.store.sqlite.health import (
    StoreHealth,
    check_database,
    guarded,
    take_clean_stamp,
    write_clean_stamp,
)
from ragserve.store.sqlite.index import IndexKeeper
from ragserve.store.sqlite.lexical import LexicalKeeper, tantivy_failure
from ragserve.store.sqlite.meta import AllowedChunks, MetadataKeeper
from ragserve.types import Chunk, Document, JSONDict

if TYPE_CHECKING:
    from ragserve.config import Settings

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
#: Seconds a collection's lexical searches go to FTS5 after its tantivy index failed.
LEXICAL_RETRY = 10.0
FTS_TOKENIZER = "porter unicode61 remove_diacritics 2"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS collections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    embedder TEXT NOT NULL,
    dimension INTEGER NOT NULL,
    created_at REAL NOT NULL,
    generation INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
    doc_id TEXT NOT NULL,
    title TEXT,
    metadata TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (collection_id, doc_id)
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    collection_id INTEGER NOT NULL,
    document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    vector BLOB NOT NULL,
    UNIQUE (document_id, idx)
);
CREATE INDEX IF NOT EXISTS chunks_by_collection ON chunks (collection_id);
CREATE TABLE IF NOT EXISTS collection_options (
    collection_id INTEGER PRIMARY KEY REFERENCES collections(id) ON DELETE CASCADE,
    options TEXT NOT NULL
);
"""

_HIT_SQL = (
    "SELECT c.id, d.doc_id, c.idx, c.text, d.metadata, c.metadata FROM chunks c "
    "JOIN documents d ON d.id = c.document_id "
    "WHERE c.id IN (SELECT value FROM json_each(?)) AND c.collection_id = ?"
)
_VECTOR_SQL = "SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))"
#: Candidates an int8 HNSW index returns per hit wanted (at least ``RESCORE_MIN``), rescored
#: with the float32 vectors in SQLite (docs/store.md: recall against the count).
RESCORE_FACTOR = 2
RESCORE_MIN = 40
#: Entries of the rowid -> (document id, chunk index) cache (about 200 bytes each).
REF_CACHE_SIZE = 200_000
_REF_SQL = (
    "SELECT c.id, d.doc_id, c.idx FROM chunks c "
    "JOIN documents d ON d.id = c.document_id WHERE c.id IN (SELECT value FROM json_each(?))"
)

# Dropped from lexical queries unless nothing else is left (Lucene's English stop set).
_STOP = "a an and are as at be but by for if in into is it no not of on or such that the their"
STOPWORDS = frozenset((_STOP + " then there these they this to was will with").split(" "))
MAX_QUERY_TERMS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


def query_words(text: str) -> list[str]:
    """The words a lexical query searches for: lowercased, de-duplicated, stopwords dropped
    (unless nothing else is left), at most ``MAX_QUERY_TERMS``."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    kept = [w for w in words if w not in STOPWORDS] or words
    return kept[:MAX_QUERY_TERMS]


def fts_match(words: Sequence[str]) -> str:
    """Query words -> an FTS5 query that cannot be a syntax error: quoted terms joined by OR."""
    return " OR ".join(f'"{w}"' for w in words)


def fts_query(text: str) -> str:
    """User text -> its FTS5 query (:func:`query_words`, then :func:`fts_match`)."""
    return fts_match(query_words(text))


#: Windows read per statement by ``chunk_windows`` (4 parameters each).
_WINDOWS_PER_STATEMENT = 200


@dataclass(frozen=True, slots=True)
class _Collection:
    id: int
    name: str
    embedder: str
    dimension: int
    created_at: float


class SqliteStore(SearchByRefs):
    """Embedded store (see the module docstring). Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        exact_search_below: int = 10_000,
        ann_params: ann.AnnParams | None = None,
        synchronous: Literal["NORMAL", "FULL"] = "FULL",
        lexical_index: Literal["tantivy", "fts5"] = "tantivy",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.ann_dir = self.data_dir / "ann"
        self.ann_dir.mkdir(parents=True, exist_ok=True)
        self.exact_search_below = exact_search_below
        self.ann_params = ann_params or ann.AnnParams()
        self._synchronous = synchronous
        self._lock_file = (self.data_dir / "ragserve.lock").open("a+")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise Unavailable(
                f"{self.data_dir} is in use by another process (a ragserve server or command "
                "holds its ragserve.lock): stop it, or use another data directory"
            ) from None
        self.path = self.data_dir / "ragserve.db"
        self.health = StoreHealth(self.path)
        try:
            if not take_clean_stamp(self.path):
                check_database(self.path)
        except RagserveError:
            self._lock_file.close()
            raise
        self._write_lock = threading.RLock()
        #: Chunk rowid -> (document id, chunk index), for turning index hits into refs without
        #: a query per search. Rowids are never reused (AUTOINCREMENT) and a chunk row never
        #: changes, so an entry cannot go wrong; a deleted chunk's entry only lingers (its key
        #: is gone from the indexes, and hydrate drops what no longer exists). Bounded.
        self._ref_cache: dict[int, tuple[str, int]] = {}
        self._cache_lock = threading.Lock()
        #: Collection name -> its row, which never changes while the collection exists (this
        #: process is the only one with the store open: see the lock file). Saves a search four
        #: queries. Dropped on delete; ``_collections_epoch`` keeps a read that raced a delete
        #: from putting the deleted row back.
        self._collections: dict[str, _Collection] = {}
        self._collections_epoch = 0
        self._conns_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._closed = False
        self._writer = self._connect()
        self._keeper = IndexKeeper(
            self._writer, self.ann_dir, self.exact_search_below, self.ann_params
        )
        if lexical_index not in ("tantivy", "fts5"):
            raise InvalidInput(f"unknown lexical index {lexical_index!r}; valid: tantivy, fts5")
        self.lexical_index = lexical_index
        self._lexical = LexicalKeeper(self._writer, self.data_dir / "lexical")
        self._meta = MetadataKeeper(self._writer)
        #: Collection id -> when its tantivy index may be tried again after a failure.
        self._lexical_retry: dict[int, float] = {}
        try:
            self._init_schema()
        except BaseException as exc:
            self.close()
            translated = self.health.translate(exc)
            if translated is None:
                raise
            raise translated from None

    def _init_schema(self) -> None:
        self._writer.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only effective on a new file
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._writer.executescript(_SCHEMA)
        self._writer.execute(
            "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
        (version,) = self._writer.execute(
            "SELECT value FROM meta WHERE key = 'schema_version'"
        ).fetchone()
        if int(version) != SCHEMA_VERSION:
            raise Unavailable(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteStore:
        return cls(
            settings.data_dir,
            exact_search_below=settings.exact_search_below,
            lexical_index=settings.lexical_index,
            ann_params=ann.AnnParams(vectors=settings.ann_vectors),
        )

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        conn.execute("PRAGMA busy_timeout = 30000")
        with self._conns_lock:
            self._conns.append(conn)
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise Unavailable("the store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """The writer connection inside ``BEGIN IMMEDIATE`` (caller holds the write lock).

        Refused (before touching the file) once the database is known to be damaged. A failed
        COMMIT (a full disk) is rolled back; SQLite may have rolled back already.
        """
        if self._closed:
            raise Unavailable("the store is closed")
        self.health.check_writable()
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def write_problem(self) -> str | None:
        """Why writes cannot succeed now (damaged file, full disk), or None."""
        return self.health.problem()

    # ------------------------------------------------------------------ collections

    def _collection(self, conn: sqlite3.Connection, name: str) -> _Collection:
        """The collection's row, from the cache if it has been read since it was created."""
        cached = self._collections.get(name)
        if cached is not None:
            return cached
        epoch = self._collections_epoch
        c = self._collection_row(conn, name)
        with self._cache_lock:
            if epoch == self._collections_epoch:
                self._collections[name] = c
        return c

    def _collection_row(self, conn: sqlite3.Connection, name: str) -> _Collection:
        check_collection_name(name)
        row = conn.execute(
            "SELECT id, name, embedder, dimension, created_at FROM collections WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return _Collection(*row)

    def _info(self, conn: sqlite3.Connection, c: _Collection) -> CollectionInfo:
        (docs,) = conn.execute(
            "SELECT count(*) FROM documents WHERE collection_id = ?", (c.id,)
        ).fetchone()
        (chunks,) = conn.execute(
            "SELECT count(*) FROM chunks WHERE collection_id = ?", (c.id,)
        ).fetchone()
        return CollectionInfo(c.name, c.embedder, c.dimension, c.created_at, docs, chunks)

    @guarded
    def create_collection(self, name: str, embedder: str, dimension: int) -> CollectionInfo:
        check_collection_name(name)
        check_dimension(dimension)
        if not isinstance(embedder, str) or not embedder:
            raise InvalidInput("embedder must be a non-empty string")
        with self._write_lock, self._transaction() as conn:
            row = conn.execute(
                "SELECT embedder, dimension FROM collections WHERE name = ?", (name,)
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) != (embedder, dimension):
                    raise Conflict(
                        f"collection {name!r} exists with embedder {row[0]!r} "
                        f"(dimension {row[1]}), not {embedder!r} (dimension {dimension})"
                    )
            else:
                cur = conn.execute(
                    "INSERT INTO collections (name, embedder, dimension, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (name, embedder, dimension, time.time()),
                )
                conn.execute(
                    f"CREATE VIRTUAL TABLE fts_{int(cur.lastrowid or 0)} USING fts5("
                    f"text, content='chunks', content_rowid='id', tokenize='{FTS_TOKENIZER}')"
                )
            return self._info(conn, self._collection_row(conn, name))  # not cached: uncommitted

    @guarded
    def list_collections(self) -> list[CollectionInfo]:
        conn = self._reader()
        rows = conn.execute(
            "SELECT id, name, embedder, dimension, created_at FROM collections ORDER BY name"
        ).fetchall()
        return [self._info(conn, _Collection(*row)) for row in rows]

    @guarded
    def get_collection(self, name: str) -> CollectionInfo:
        conn = self._reader()
        return self._info(conn, self._collection(conn, name))

    @guarded
    def collection_embedder(self, name: str) -> str:
        return self._collection(self._reader(), name).embedder

    @guarded
    def collection_options(self, name: str) -> JSONDict:
        conn = self._reader()
        c = self._collection(conn, name)
        row = conn.execute(
            "SELECT options FROM collection_options WHERE collection_id = ?", (c.id,)
        ).fetchone()
        return dict(json.loads(row[0])) if row else {}

    @guarded
    def set_collection_options(self, name: str, options: JSONDict) -> None:
        text = json.dumps(dict(options), sort_keys=True)
        with self._write_lock, self._transaction() as conn:
            c = self._collection_row(conn, name)
            conn.execute(
                "INSERT INTO collection_options (collection_id, options) VALUES (?, ?) "
                "ON CONFLICT (collection_id) DO UPDATE SET options = excluded.options",
                (c.id, text),
            )

    @guarded
    def delete_collection(self, name: str) -> None:
        with self._write_lock:
            with self._transaction() as conn:
                c = self._collection(conn, name)
                conn.execute(f"DROP TABLE IF EXISTS fts_{c.id}")
                conn.execute("DELETE FROM chunks WHERE collection_id = ?", (c.id,))
                conn.execute("DELETE FROM documents WHERE collection_id = ?", (c.id,))
                conn.execute("DELETE FROM collection_options WHERE collection_id = ?", (c.id,))
                conn.execute("DELETE FROM collections WHERE id = ?", (c.id,))
            with self._cache_lock:
                self._collections_epoch += 1
                self._collections.pop(name, None)
            self._keeper.drop(c.id)
            self._lexical.drop(c.id)
            self._meta.drop(c.id)
            self._writer.executescript("PRAGMA incremental_vacuum;")  # steps it to the end

    # ------------------------------------------------------------------ documents

    @guarded
    def upsert_document(
        self,
        collection: str,
        document: Document,
        content_hash: str,
        chunks: Sequence[Chunk],
        vectors: Vectors,
    ) -> UpsertOutcome:
        if not isinstance(content_hash, str) or not content_hash:
            raise InvalidInput("content_hash must be a non-empty string")
        with self._write_lock:
            c = self._collection(self._writer, collection)
            matrix = check_upsert(document, chunks, vectors, c.dimension)
            metadata = _dumps(document.metadata, "document metadata")
            chunk_rows = [
                (ch.index, ch.text, ch.start, ch.end, _dumps(ch.metadata, "chunk metadata"))
                for ch in chunks
            ]
            index = self._index(c)
            now = time.time()
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT id FROM documents WHERE collection_id = ? AND doc_id = ?",
                    (c.id, document.id),
                ).fetchone()
                if row is None:
                    outcome: UpsertOutcome = "created"
                    removed = np.zeros(0, dtype=np.int64)
                    cur = conn.execute(
                        "INSERT INTO documents (collection_id, doc_id, title, metadata, "
                        "content_hash, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (c.id, document.id, document.title, metadata, content_hash, now, now),
                    )
                    doc_row = int(cur.lastrowid or 0)
                else:
                    outcome, doc_row = "updated", int(row[0])
                    removed = self._delete_chunks(conn, c.id, doc_row)
                    conn.execute(
                        "UPDATE documents SET title = ?, metadata = ?, content_hash = ?, "
                        "updated_at = ? WHERE id = ?",
                        (document.title, metadata, content_hash, now, doc_row),
                    )
                conn.executemany(
                    "INSERT INTO chunks (collection_id, document_id, idx, text, start_char, "
                    "end_char, metadata, vector) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(c.id, doc_row, *r, matrix[i].tobytes()) for i, r in enumerate(chunk_rows)],
                )
                by_index = dict(
                    conn.execute(
                        "SELECT idx, id FROM chunks WHERE document_id = ?", (doc_row,)
                    ).fetchall()
                )
                added = np.array([by_index[ch.index] for ch in chunks], dtype=np.int64)
                conn.execute(
                    f"INSERT INTO fts_{c.id} (rowid, text) SELECT id, text FROM chunks "
                    "WHERE document_id = ?",
                    (doc_row,),
                )
                conn.execute(
                    "UPDATE collections SET generation = generation + 1 WHERE id = ?", (c.id,)
                )
            self._mirror(c, index, removed, added, matrix, [ch.text for ch in chunks])
            self._mirror_metadata(c, doc_row, metadata, removed, added)
            return outcome

    def _delete_chunks(self, conn: sqlite3.Connection, cid: int, doc_row: int) -> ann.Keys:
        rows = conn.execute(
            "SELECT id, text FROM chunks WHERE document_id = ?", (doc_row,)
        ).fetchall()
        conn.executemany(
            f"INSERT INTO fts_{cid} (fts_{cid}, rowid, text) VALUES ('delete', ?, ?)", rows
        )
        conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc_row,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    @guarded
    def get_document_hash(self, collection: str, document_id: str) -> str | None:
        conn = self._reader()
        c = self._collection(conn, collection)
        row = conn.execute(
            "SELECT content_hash FROM documents WHERE collection_id = ? AND doc_id = ?",
            (c.id, check_document_id(document_id)),
        ).fetchone()
        return None if row is None else str(row[0])

    @guarded
    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        conn = self._reader()
        c = self._collection(conn, collection)
        conn.execute("BEGIN")  # one snapshot for the document and its chunks
        try:
            row = conn.execute(
                "SELECT id, doc_id, title, metadata, content_hash, created_at, updated_at "
                "FROM documents WHERE collection_id = ? AND doc_id = ?",
                (c.id, check_document_id(document_id)),
            ).fetchone()
            if row is None:
                raise DocumentNotFound(f"document {document_id!r} not in {collection!r}")
            chunk_rows = conn.execute(
                "SELECT idx, text, start_char, end_char, metadata FROM chunks "
                "WHERE document_id = ? ORDER BY idx",
                (row[0],),
            ).fetchall()
        finally:
            conn.execute("COMMIT")
        chunks = tuple(
            Chunk(row[1], idx, text, start, end, json.loads(meta))
            for idx, text, start, end, meta in chunk_rows
        )
        return StoredDocument(row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], chunks)

    @guarded
    def delete_document(self, collection: str, document_id: str) -> None:
        check_document_id(document_id)
        with self._write_lock:
            c = self._collection(self._writer, collection)
            index = self._index(c)
            with self._transaction() as conn:
                row = conn.execute(
                    "SELECT id FROM documents WHERE collection_id = ? AND doc_id = ?",
                    (c.id, document_id),
                ).fetchone()
                if row is None:
                    raise DocumentNotFound(f"document {document_id!r} not in {collection!r}")
                removed = self._delete_chunks(conn, c.id, int(row[0]))
                conn.execute("DELETE FROM documents WHERE id = ?", (row[0],))
                conn.execute(
                    "UPDATE collections SET generation = generation + 1 WHERE id = ?", (c.id,)
                )
            empty = np.zeros((0, c.dimension), dtype=np.float32)
            none = np.zeros(0, dtype=np.int64)
            self._mirror(c, index, removed, none, empty, [])
            self._mirror_metadata(c, int(row[0]), None, removed, none)

    @guarded
    def list_documents(
        self, collection: str, where: Mapping[str, str] | None = None
    ) -> list[DocumentRef]:
        conn = self._reader()
        c = self._collection(conn, collection)
        sql_text = "SELECT doc_id, content_hash, metadata FROM documents WHERE collection_id = ?"
        params: list[object] = [c.id]
        for key, value in (where or {}).items():
            sql_text += " AND json_extract(metadata, ?) = ?"
            params += [_json_path(key), value]
        rows = conn.execute(sql_text + " ORDER BY doc_id", params).fetchall()
        return [DocumentRef(r[0], r[1], json.loads(r[2])) for r in rows]

    @guarded
    def chunk_windows(
        self, collection: str, windows: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Chunk, ...]]:
        conn = self._reader()
        c = self._collection(conn, collection)
        if not windows:
            return []
        out: list[list[Chunk]] = [[] for _ in windows]
        conn.execute("BEGIN")  # one snapshot for every window
        try:
            for at in range(0, len(windows), _WINDOWS_PER_STATEMENT):
                part = windows[at : at + _WINDOWS_PER_STATEMENT]
                rows = conn.execute(
                    "WITH w(n, doc_id, first, last) AS (VALUES "
                    + ",".join(["(?, ?, ?, ?)"] * len(part))
                    + ") SELECT w.n, c.idx, c.text, c.start_char, c.end_char, c.metadata "
                    "FROM w JOIN documents d ON d.collection_id = ? AND d.doc_id = w.doc_id "
                    "JOIN chunks c ON c.document_id = d.id AND c.idx BETWEEN w.first AND w.last "
                    "ORDER BY w.n, c.idx",
                    [v for n, w in enumerate(part, start=at) for v in (n, *w)] + [c.id],
                ).fetchall()
                for n, idx, text, start, end, meta in rows:
                    out[n].append(Chunk(windows[n][0], idx, text, start, end, json.loads(meta)))
        finally:
            conn.execute("COMMIT")
        return [tuple(chunks) for chunks in out]

    def export_documents(self, collection: str) -> Iterator[tuple[StoredDocument, Vectors]]:
        """Every document of ``collection`` with its chunks and vectors (for migrations)."""
        try:
            yield from self._export_documents(collection)
        except (sqlite3.Error, OSError) as exc:  # what @guarded does, for a generator
            translated = self.health.translate(exc)
            if translated is None:
                raise
            raise translated from exc

    def _export_documents(self, collection: str) -> Iterator[tuple[StoredDocument, Vectors]]:
        conn = self._reader()
        c = self._collection(conn, collection)
        ids = [
            r[0]
            for r in conn.execute(
                "SELECT doc_id FROM documents WHERE collection_id = ? ORDER BY doc_id", (c.id,)
            ).fetchall()
        ]
        for doc_id in ids:
            conn.execute("BEGIN")  # one snapshot per document
            try:
                row = conn.execute(
                    "SELECT id, doc_id, title, metadata, content_hash, created_at, updated_at "
                    "FROM documents WHERE collection_id = ? AND doc_id = ?",
                    (c.id, doc_id),
                ).fetchone()
                chunk_rows = conn.execute(
                    "SELECT idx, text, start_char, end_char, metadata, vector FROM chunks "
                    "WHERE document_id = ? ORDER BY idx",
                    (row[0] if row else -1,),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            if row is None:  # deleted since the listing
                continue
            chunks = tuple(
                Chunk(doc_id, idx, text, start, end, json.loads(meta))
                for idx, text, start, end, meta, _ in chunk_rows
            )
            blob = b"".join(r[5] for r in chunk_rows)
            vectors = np.frombuffer(blob, dtype=np.float32).reshape(len(chunk_rows), c.dimension)
            doc = StoredDocument(doc_id, row[2], json.loads(row[3]), row[4], row[5], row[6], chunks)
            yield doc, vectors.copy()

    # ------------------------------------------------------------------ search

    @guarded
    def dense_refs(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        check_k(k)
        node = coerce_filter(filter)
        conn = self._reader()
        c = self._collection(conn, collection)
        query = check_query_vector(vector, c.dimension)
        index = self._index(c)
        # int8 vectors: more candidates, rescored with the full-precision vectors.
        fetch = min(MAX_K, max(RESCORE_FACTOR * k, RESCORE_MIN)) if index.quantized else k
        if node is None:
            keys, scores = index.search(query, fetch)
        else:
            allowed = self._allowed(c, node)
            if allowed.count == 0:
                return []
            keys, scores = index.search_filtered(query, fetch, allowed)
        if index.quantized:
            keys, scores = self._rescore(conn, query, keys, k)
        return self._refs(conn, keys.tolist(), scores.tolist())

    def _rescore(
        self, conn: sqlite3.Connection, query: Vectors, keys: ann.Keys, k: int
    ) -> tuple[ann.Keys, Vectors]:
        """The ``k`` best of ``keys`` by cosine with the vectors stored in SQLite."""
        if len(keys) == 0:
            return keys, np.zeros(0, dtype=np.float32)
        rows = conn.execute(_VECTOR_SQL, (json.dumps(keys.tolist()),)).fetchall()
        found = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32)
        vectors = ann.normalize(vectors.reshape(len(rows), len(query)))
        return ann.top_k(found, vectors @ ann.normalize(query[None, :])[0], k)

    @guarded
    def lexical_refs(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        check_k(k)
        words = query_words(check_query_text(query_text))
        node = coerce_filter(filter)
        conn = self._reader()
        c = self._collection(conn, collection)
        if not words:
            return []
        if self.lexical_index == "fts5":
            rows = self._fts5_search(conn, c, words, k, node)
            return self._refs(conn, [r[0] for r in rows], [float(r[1]) for r in rows])
        allowed = None if node is None else self._allowed(c, node)
        if allowed is not None and allowed.count == 0:
            return []
        if time.monotonic() >= self._lexical_retry.get(c.id, 0.0):
            try:
                index = self._lexical.indexes.get(c.id)
                if index is None or index.dirty:
                    with self._write_lock:  # a stable database state while loading or committing
                        index = self._lexical.get(c.id)
                        self._lexical.commit(c.id)
                keys, scores = index.search(words, k, allowed)
                return self._refs(conn, keys, scores)
            except BaseException as exc:
                if not tantivy_failure(exc):
                    raise
                self._lexical_failed(c.id, exc)
        rows = self._fts5_search(conn, c, words, k, node)  # same BM25, from SQLite itself
        return self._refs(conn, [r[0] for r in rows], [float(r[1]) for r in rows])

    def _lexical_failed(self, cid: int, exc: BaseException) -> None:
        """A tantivy index failed (damaged files, full disk): forget it (derived data: rebuilt
        from SQLite at its next use, in ``LEXICAL_RETRY`` seconds); FTS5 answers meanwhile."""
        log.error(
            "lexical index of collection %d failed (%s): FTS5 answers, rebuild in %.0f s",
            cid,
            exc,
            LEXICAL_RETRY,
        )
        with self._write_lock:
            self._lexical.discard(cid)
        self._lexical_retry[cid] = time.monotonic() + LEXICAL_RETRY

    @guarded
    def hydrate(self, collection: str, refs: Sequence[ChunkRef]) -> list[ScoredChunk]:
        conn = self._reader()
        c = self._collection(conn, collection)
        if not refs:
            return []
        keys = json.dumps([ref.key for ref in refs])
        found = {row[0]: row for row in conn.execute(_HIT_SQL, (keys, c.id))}
        out = []
        for ref in refs:
            row = found.get(ref.key)
            if row is not None:  # gone if deleted or replaced since the index was read
                out.append(
                    ScoredChunk(
                        row[1], row[2], row[3], ref.score, json.loads(row[4]), json.loads(row[5])
                    )
                )
        return out

    def _fts5_search(
        self,
        conn: sqlite3.Connection,
        c: _Collection,
        words: list[str],
        k: int,
        node: Filter | None,
    ) -> list[tuple[int, float]]:
        fts = f"fts_{c.id}"
        params: list[object] = [fts_match(words)]
        if node is None:
            sql = f"SELECT rowid, -bm25({fts}) FROM {fts} WHERE {fts} MATCH ?"
        else:
            where = to_sql(node, "d.metadata", params)
            sql = (
                f"SELECT {fts}.rowid, -bm25({fts}) FROM {fts} "
                f"JOIN chunks c ON c.id = {fts}.rowid JOIN documents d ON d.id = c.document_id "
                f"WHERE {fts} MATCH ? AND {where}"
            )
        params.append(k)
        try:
            return conn.execute(f"{sql} ORDER BY bm25({fts}), 1 LIMIT ?", params).fetchall()
        except sqlite3.OperationalError as exc:  # should not happen: the query is sanitized
            raise RagserveError(f"lexical search failed: {exc}") from exc

    def _allowed(self, c: _Collection, node: Filter) -> AllowedChunks:
        """The collection's chunks whose document matches the filter (:mod:`.meta`)."""
        index = self._meta.indexes.get(c.id)
        if index is None:
            with self._write_lock:  # a stable database state while loading
                index = self._meta.get(c.id)
        return index.allowed(node)

    def _refs(
        self, conn: sqlite3.Connection, keys: list[int], scores: list[float]
    ) -> list[ChunkRef]:
        """Index hits as refs (the documents' ids and the chunks' positions; nothing else)."""
        if not keys:
            return []
        cache = self._ref_cache
        hits = list(map(cache.get, keys))
        if None in hits:
            missing = [key for key, hit in zip(keys, hits, strict=True) if hit is None]
            rows = conn.execute(_REF_SQL, (json.dumps(missing),)).fetchall()
            fresh = {key: (doc_id, idx) for key, doc_id, idx in rows}
            hits = [
                fresh.get(key) if hit is None else hit for key, hit in zip(keys, hits, strict=True)
            ]
            with self._cache_lock:
                if len(cache) + len(fresh) > REF_CACHE_SIZE:  # forget the oldest half
                    for old in list(itertools.islice(cache, len(cache) // 2)):
                        del cache[old]
                cache.update(fresh)
        return [
            ChunkRef(key, hit[0], hit[1], score)
            for key, hit, score in zip(keys, hits, scores, strict=True)
            if hit is not None  # None: deleted since the index was read
        ]

    # ------------------------------------------------------------------ dense indexes

    @property
    def _indexes(self) -> dict[int, ann.DenseIndex]:
        return self._keeper.indexes

    def _index(self, c: _Collection) -> ann.DenseIndex:
        index = self._keeper.indexes.get(c.id)
        if index is not None:
            return index
        with self._write_lock:  # a stable database state while loading
            return self._keeper.get(c.id, c.dimension)

    def _mirror(
        self,
        c: _Collection,
        index: ann.DenseIndex,
        removed: ann.Keys,
        added: ann.Keys,
        vectors: Vectors,
        texts: Sequence[str],
    ) -> None:
        """Mirror a committed write in the derived indexes (caller holds the write lock).

        The write is committed: a failure here (a full disk while an index grows into HNSW or
        saves) must not report it as failed. The failing index is dropped instead and rebuilt
        from SQLite at its next use.
        """
        try:
            self._keeper.apply(c.id, c.dimension, index, removed, added, vectors)
        except Exception as exc:  # noqa: BLE001 - derived data; the keeper dropped the index
            log.error("dense index of collection %d dropped after a failure: %s", c.id, exc)
        try:
            self._lexical.apply(c.id, removed, added, texts)
        except BaseException as exc:
            if not tantivy_failure(exc):
                raise
            self._lexical_failed(c.id, exc)

    def _mirror_metadata(
        self, c: _Collection, doc_row: int, metadata: str | None, removed: ann.Keys, added: ann.Keys
    ) -> None:
        """Mirror a committed write in the metadata index (``metadata`` None: a delete); on a
        failure the index is dropped, to be loaded from SQLite again at its next use."""
        try:
            if metadata is None:
                self._meta.delete(c.id, doc_row, removed)
            else:
                self._meta.put(c.id, doc_row, metadata, removed, added)
        except Exception as exc:  # noqa: BLE001 - derived data
            log.error("metadata index of collection %d dropped after a failure: %s", c.id, exc)
            self._meta.drop(c.id)

    @guarded
    def flush(self) -> None:
        """Save every HNSW index changed since it was last saved; commit the lexical indexes."""
        with self._write_lock:
            self._keeper.flush()
            for cid in list(self._lexical.indexes):
                try:
                    self._lexical.commit(cid)
                except BaseException as exc:
                    if not tantivy_failure(exc):
                        raise
                    self._lexical_failed(cid, exc)

    def close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            with suppress(sqlite3.Error, OSError, RagserveError):  # a full disk: rebuilt later
                self.flush()
            self._closed = True
            with self._conns_lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()
            self._keeper.indexes.clear()
            self._meta.indexes.clear()
            self._lexical.close()
            if self.health.damaged is None:
                with suppress(OSError):  # no stamp: the next open checks the file
                    write_clean_stamp(self.path)
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()


def _json_path(key: str) -> str:
    """The JSON path of a top-level metadata key (quoted: any character is allowed)."""
    return "$." + json.dumps(key)


def _dumps(value: Any, what: str) -> str:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serializable: {exc}") from None
