"""The scale-out store: PostgreSQL + pgvector (HNSW) + full-text search, behind the store contract.

Several ragserve processes (stateless API replicas) can share one database: PostgreSQL is the
only state, every write is one transaction, and nothing is cached in the process except the
pgvector version. The schema is created and migrated at open (:mod:`.schema`).

Dense search: ``chunks`` is LIST-partitioned by collection, and each partition carries its own
HNSW index on ``(embedding::vector(<dim>))`` with ``vector_cosine_ops``. An HNSW index must be
over one dimension, and collections have different ones; a partition per collection gives each
its own index (and its own full-text statistics) while the schema stays one set of tables, and
creating or dropping a collection touches only its partition (a partial index on one shared
table would scan the whole table to build, and every insert would test every predicate).
``hnsw.ef_search`` follows ``k``; a filtered search uses pgvector's iterative scan when the
server has it (pgvector >= 0.8) and falls back to an exact scan of the filtered rows whenever
the index returns fewer than ``k`` hits, so filters never under-return.

Lexical search: BM25 (:mod:`.lexical`) over the terms of a generated ``tsvector`` (``english``
configuration: stemming, stop words). Each chunk's terms are written to the collection's
postings partition, and its term and length counts to ``lexical_terms`` / ``lexical_stats``, in
the chunk's own transaction; a search sums BM25 from the postings alone (index-only scans), with
the statistics read from the counters instead of counted.

Errors: connection failures and pool timeouts become :class:`~ragserve.errors.Unavailable`
(HTTP 503); the pool checks connections before handing them out, so after a server restart the
store recovers by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

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
from ragserve.store.postgres import lexical
from ragserve.store.postgres import schema as postgres_schema
from ragserve.store.postgres.sql import query_words, to_sql
from ragserve.types import Chunk, Document, JSONDict

if TYPE_CHECKING:
    from ragserve.config import Settings

Conn = psycopg.Connection[Any]

#: pgvector caps ``hnsw.ef_search`` at 1000; a larger ``k`` is served by an exact scan.
MAX_EF_SEARCH = 1000
MIN_EF_SEARCH = 40
#: Rows an iterative index scan may visit before giving up (then the exact fallback runs).
MAX_SCAN_TUPLES = 20_000


@dataclass(frozen=True, slots=True)
class _Collection:
    id: int
    name: str
    embedder: str
    dimension: int
    created_at: float

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(f"chunks_{self.id}")

    @property
    def vector_type(self) -> sql.Composable:
        return sql.SQL("vector({})").format(sql.Literal(self.dimension))


def _check_text(value: str | None, what: str) -> None:
    if value is not None and "\x00" in value:
        raise InvalidInput(f"{what} must not contain NUL characters (PostgreSQL cannot store them)")


def _jsonb(value: Any, what: str) -> Jsonb:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not JSON-serializable: {exc}") from None
    if "\\u0000" in text:
        raise InvalidInput(f"{what} must not contain NUL characters")
    return Jsonb(value)


class PostgresStore(SearchByRefs):
    """PostgreSQL + pgvector store (see the module docstring). Thread- and process-safe."""

    def __init__(
        self,
        dsn: str,
        *,
        min_connections: int = 1,
        max_connections: int = 8,
        timeout: float = 10.0,
        connect_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.dsn = dsn
        kwargs = dict(connect_kwargs or {})
        try:
            with psycopg.connect(dsn, connect_timeout=int(max(timeout, 2)), **kwargs) as conn:
                self.pgvector_version = postgres_schema.pgvector_version(conn)
                postgres_schema.migrate(conn)
        except psycopg.OperationalError as exc:
            raise Unavailable(f"cannot reach PostgreSQL: {_first_line(exc)}") from exc
        self.iterative_scan = self.pgvector_version >= (0, 8)
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            dsn,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"connect_timeout": int(max(timeout, 2)), **kwargs},
            configure=register_vector,
            check=ConnectionPool.check_connection,
            timeout=timeout,
            name="ragserve",
            open=False,
        )
        self._pool.open(wait=False)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresStore:
        if settings.postgres_dsn is None:
            raise InvalidInput("the postgres store needs RAGSERVE_POSTGRES_DSN")
        return cls(settings.postgres_dsn.get_secret_value())

    # ------------------------------------------------------------------ connections

    @contextmanager
    def _conn(self) -> Iterator[Conn]:
        """A pooled connection inside one transaction; database errors translated."""
        if self._closed:
            raise Unavailable("the store is closed")
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise Unavailable("PostgreSQL is unavailable (no connection in time)") from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(f"PostgreSQL is unavailable: {_first_line(exc)}") from exc
        except psycopg.errors.ForeignKeyViolation as exc:
            raise CollectionNotFound("the collection was deleted during the write") from exc
        except psycopg.errors.UndefinedTable as exc:
            raise CollectionNotFound("the collection was deleted during the operation") from exc
        except psycopg.DataError as exc:
            raise InvalidInput(f"rejected by PostgreSQL: {_first_line(exc)}") from exc
        except psycopg.Error as exc:
            raise RagserveError(f"PostgreSQL error: {_first_line(exc)}") from exc

    # ------------------------------------------------------------------ collections

    def _collection(self, conn: Conn, name: str) -> _Collection:
        check_collection_name(name)
        row = conn.execute(
            "SELECT id, name, embedder, dimension, created_at FROM collections WHERE name = %s",
            (name,),
        ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {name!r} does not exist")
        return _Collection(*row)

    def _info(self, conn: Conn, c: _Collection) -> CollectionInfo:
        row = conn.execute(
            sql.SQL(
                "SELECT (SELECT count(*) FROM documents WHERE collection_id = %s), "
                "(SELECT count(*) FROM {})"
            ).format(c.table),
            (c.id,),
        ).fetchone()
        assert row is not None
        return CollectionInfo(c.name, c.embedder, c.dimension, c.created_at, row[0], row[1])

    def create_collection(self, name: str, embedder: str, dimension: int) -> CollectionInfo:
        check_collection_name(name)
        check_dimension(dimension)
        if not isinstance(embedder, str) or not embedder:
            raise InvalidInput("embedder must be a non-empty string")
        with self._conn() as conn:
            row = conn.execute(
                "INSERT INTO collections (name, embedder, dimension, created_at) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, embedder, dimension, time.time()),
            ).fetchone()
            c = self._collection(conn, name)
            if row is None:
                if (c.embedder, c.dimension) != (embedder, dimension):
                    raise Conflict(
                        f"collection {name!r} exists with embedder {c.embedder!r} "
                        f"(dimension {c.dimension}), not {embedder!r} (dimension {dimension})"
                    )
            else:
                conn.execute(
                    sql.SQL("CREATE TABLE {} PARTITION OF chunks FOR VALUES IN ({})").format(
                        c.table, sql.Literal(c.id)
                    )
                )
                conn.execute(
                    sql.SQL(
                        "CREATE INDEX {} ON {} USING hnsw ((embedding::{}) vector_cosine_ops)"
                    ).format(sql.Identifier(f"chunks_{c.id}_hnsw"), c.table, c.vector_type)
                )
                lexical.create_partition(conn, c.id)
            return self._info(conn, c)

    def list_collections(self) -> list[CollectionInfo]:
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, name, embedder, dimension, created_at FROM collections ORDER BY name"
            ).fetchall()
            return [self._info(conn, _Collection(*row)) for row in rows]

    def get_collection(self, name: str) -> CollectionInfo:
        with self._conn() as conn:
            return self._info(conn, self._collection(conn, name))

    def collection_embedder(self, name: str) -> str:
        with self._conn() as conn:
            return self._collection(conn, name).embedder

    def collection_options(self, name: str) -> JSONDict:
        with self._conn() as conn:
            c = self._collection(conn, name)
            row = conn.execute(
                "SELECT options FROM collection_options WHERE collection_id = %s", (c.id,)
            ).fetchone()
            return dict(row[0]) if row else {}

    def set_collection_options(self, name: str, options: JSONDict) -> None:
        with self._conn() as conn:
            c = self._collection(conn, name)
            conn.execute(
                "INSERT INTO collection_options (collection_id, options) VALUES (%s, %s) "
                "ON CONFLICT (collection_id) DO UPDATE SET options = excluded.options",
                (c.id, Jsonb(dict(options))),
            )

    def delete_collection(self, name: str) -> None:
        with self._conn() as conn:
            c = self._collection(conn, name)
            conn.execute("SELECT id FROM collections WHERE id = %s FOR UPDATE", (c.id,))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(c.table))
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(lexical.postings_table(c.id)))
            conn.execute("DELETE FROM collections WHERE id = %s", (c.id,))

    # ------------------------------------------------------------------ documents

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
        metadata = _jsonb(document.metadata, "document metadata")
        _check_text(document.title, "the title")
        _check_text(document.id, "the document id")
        rows = []
        for ch in chunks:
            _check_text(ch.text, "chunk text")
            rows.append(
                (ch.index, ch.text, ch.start, ch.end, _jsonb(ch.metadata, "chunk metadata"))
            )
        with self._conn() as conn:
            c = self._collection(conn, collection)
            matrix = check_upsert(document, chunks, vectors, c.dimension)
            now = time.time()
            row = conn.execute(
                "INSERT INTO documents AS d (collection_id, doc_id, title, metadata, "
                "content_hash, created_at, updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (collection_id, doc_id) DO UPDATE SET title = excluded.title, "
                "metadata = excluded.metadata, content_hash = excluded.content_hash, "
                "updated_at = excluded.updated_at RETURNING d.id, (xmax = 0)",
                (c.id, document.id, document.title, metadata, content_hash, now, now),
            ).fetchone()
            assert row is not None
            doc_row, inserted = int(row[0]), bool(row[1])
            delta = lexical.Delta()
            if not inserted:
                delta = self._unindex(conn, c, doc_row)
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        sql.SQL(
                            "INSERT INTO {} (collection_id, document_id, idx, text, start_char, "
                            "end_char, metadata, embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                        ).format(c.table),
                        [(c.id, doc_row, *r, matrix[i]) for i, r in enumerate(rows)],
                    )
            delta.chunks += len(rows)
            lexical.index_document(conn, c.id, c.table, doc_row, delta)
            return "created" if inserted else "updated"

    @staticmethod
    def _unindex(conn: Conn, c: _Collection, doc_row: int) -> lexical.Delta:
        """Delete a document's chunks and their postings; what the counters lose."""
        delta = lexical.unindex_document(conn, c.id, doc_row)
        cur = conn.execute(
            sql.SQL("DELETE FROM {} WHERE document_id = %s").format(c.table), (doc_row,)
        )
        delta.chunks -= cur.rowcount
        return delta

    def get_document_hash(self, collection: str, document_id: str) -> str | None:
        check_document_id(document_id)
        with self._conn() as conn:
            c = self._collection(conn, collection)
            row = conn.execute(
                "SELECT content_hash FROM documents WHERE collection_id = %s AND doc_id = %s",
                (c.id, document_id),
            ).fetchone()
            return None if row is None else str(row[0])

    def get_document(self, collection: str, document_id: str) -> StoredDocument:
        check_document_id(document_id)
        with self._conn() as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            c = self._collection(conn, collection)
            doc, _ = self._read_document(conn, c, document_id, with_vectors=False)
            return doc

    def list_documents(
        self, collection: str, where: Mapping[str, str] | None = None
    ) -> list[DocumentRef]:
        with self._conn() as conn:
            c = self._collection(conn, collection)
            rows = conn.execute(
                "SELECT doc_id, content_hash, metadata FROM documents "
                "WHERE collection_id = %s AND metadata @> %s::jsonb ORDER BY doc_id",
                (c.id, Jsonb(dict(where or {}))),
            ).fetchall()
        return [DocumentRef(r[0], r[1], r[2]) for r in rows]

    def chunk_windows(
        self, collection: str, windows: Sequence[tuple[str, int, int]]
    ) -> list[tuple[Chunk, ...]]:
        with self._conn() as conn:
            c = self._collection(conn, collection)
            if not windows:
                return []
            rows = conn.execute(
                sql.SQL(
                    "SELECT w.n, c.idx, c.text, c.start_char, c.end_char, c.metadata "
                    "FROM unnest(%s::text[], %s::integer[], %s::integer[]) "
                    "WITH ORDINALITY AS w(doc_id, first, last, n) "
                    "JOIN documents d ON d.collection_id = %s AND d.doc_id = w.doc_id "
                    "JOIN {t} c ON c.document_id = d.id AND c.idx BETWEEN w.first AND w.last "
                    "ORDER BY w.n, c.idx"
                ).format(t=c.table),
                (
                    [w[0] for w in windows],
                    [w[1] for w in windows],
                    [w[2] for w in windows],
                    c.id,
                ),
            ).fetchall()
        out: list[list[Chunk]] = [[] for _ in windows]
        for n, idx, text, start, end, meta in rows:
            out[n - 1].append(Chunk(windows[n - 1][0], idx, text, start, end, meta))
        return [tuple(chunks) for chunks in out]

    def _read_document(
        self, conn: Conn, c: _Collection, document_id: str, *, with_vectors: bool
    ) -> tuple[StoredDocument, Vectors]:
        row = conn.execute(
            "SELECT id, doc_id, title, metadata, content_hash, created_at, updated_at "
            "FROM documents WHERE collection_id = %s AND doc_id = %s",
            (c.id, document_id),
        ).fetchone()
        if row is None:
            raise DocumentNotFound(f"document {document_id!r} not in {c.name!r}")
        columns = "idx, text, start_char, end_char, metadata" + (
            ", embedding" if with_vectors else ""
        )
        chunk_rows = conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE document_id = %s ORDER BY idx").format(
                sql.SQL(columns), c.table
            ),
            (row[0],),
        ).fetchall()
        chunks = tuple(Chunk(row[1], r[0], r[1], r[2], r[3], r[4]) for r in chunk_rows)
        vectors = (
            np.array([_numpy(r[5]) for r in chunk_rows], np.float32).reshape(-1, c.dimension)
            if with_vectors
            else np.zeros((0, c.dimension), np.float32)
        )
        doc = StoredDocument(row[1], row[2], row[3], row[4], row[5], row[6], chunks)
        return doc, vectors

    def delete_document(self, collection: str, document_id: str) -> None:
        check_document_id(document_id)
        with self._conn() as conn:
            c = self._collection(conn, collection)
            row = conn.execute(
                "SELECT id FROM documents WHERE collection_id = %s AND doc_id = %s FOR UPDATE",
                (c.id, document_id),
            ).fetchone()
            if row is None:
                raise DocumentNotFound(f"document {document_id!r} not in {collection!r}")
            lexical.apply(conn, c.id, self._unindex(conn, c, int(row[0])))
            conn.execute("DELETE FROM documents WHERE id = %s", (row[0],))

    def export_documents(self, collection: str) -> Iterator[tuple[StoredDocument, Vectors]]:
        """Every document of ``collection`` with its chunks and their vectors, by document id."""
        with self._conn() as conn:
            c = self._collection(conn, collection)
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT doc_id FROM documents WHERE collection_id = %s ORDER BY doc_id",
                    (c.id,),
                )
            ]
        for doc_id in ids:
            with self._conn() as conn:
                try:
                    yield self._read_document(conn, c, doc_id, with_vectors=True)
                except DocumentNotFound:
                    continue  # deleted since the listing

    # ------------------------------------------------------------------ search

    def dense_refs(
        self, collection: str, vector: Vectors, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        check_k(k)
        node = coerce_filter(filter)
        with self._conn() as conn:
            c = self._collection(conn, collection)
            query = check_query_vector(vector, c.dimension)
            refs: list[ChunkRef] = []
            if k <= MAX_EF_SEARCH:
                conn.execute(
                    "SELECT set_config('hnsw.ef_search', %s, true)",
                    (str(max(MIN_EF_SEARCH, k)),),
                )
                if node is not None and self.iterative_scan:
                    conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
                    conn.execute(
                        "SELECT set_config('hnsw.max_scan_tuples', %s, true)",
                        (str(MAX_SCAN_TUPLES),),
                    )
                refs = self._dense(conn, c, query, k, node, indexed=True)
            if len(refs) < k:  # the index ran short (filter, k > ef_search): exact scan
                refs = self._dense(conn, c, query, k, node, indexed=False)
            return refs

    def _dense(
        self,
        conn: Conn,
        c: _Collection,
        query: Vectors,
        k: int,
        node: Filter | None,
        *,
        indexed: bool,
    ) -> list[ChunkRef]:
        # The index matches only the exact expression ``embedding::vector(dim)``; the exact
        # scan orders by the uncast column, which no index provides.
        column = (
            sql.SQL("(c.embedding::{})").format(c.vector_type)
            if indexed
            else sql.SQL("c.embedding")
        )
        params: list[object] = [query]
        where: sql.Composable = sql.SQL("")
        if node is not None:
            where = sql.SQL("WHERE {}").format(sql.SQL(to_sql(node, "d.metadata", params)))
        params.append(k)
        inner = sql.SQL(
            "SELECT d.doc_id, c.idx, c.document_id, {col} <=> %s AS dist "
            "FROM {table} c JOIN documents d ON d.id = c.document_id {where} "
            "ORDER BY dist LIMIT %s"
        ).format(col=column, table=c.table, where=where)
        # relaxed_order may return hits slightly out of order: sort them again.
        rows = conn.execute(inner, params).fetchall()
        rows.sort(key=lambda r: (r[3], r[0], r[1]))
        return [_ref(r, 1.0 - float(r[3])) for r in rows]

    def lexical_refs(
        self, collection: str, query_text: str, k: int, filter: FilterArg = None
    ) -> list[ChunkRef]:
        check_k(k)
        words = query_words(check_query_text(query_text))
        node = coerce_filter(filter)
        with self._conn() as conn:
            c = self._collection(conn, collection)
            if not words:
                return []
            params: list[object] = []
            where = None if node is None else to_sql(node, "d.metadata", params)
            rows = lexical.search(conn, c.id, words, k, where, params)
            return [_ref(r, float(r[3])) for r in rows]

    def hydrate(self, collection: str, refs: Sequence[ChunkRef]) -> list[ScoredChunk]:
        with self._conn() as conn:
            c = self._collection(conn, collection)
            if not refs:
                return []
            keys = [cast(tuple[int, int], ref.key) for ref in refs]
            rows = conn.execute(
                sql.SQL(
                    "SELECT c.document_id, c.idx, c.text, d.metadata, c.metadata "
                    "FROM {t} c JOIN documents d ON d.id = c.document_id "
                    "WHERE (c.document_id, c.idx) IN "
                    "(SELECT * FROM unnest(%s::bigint[], %s::integer[]))"
                ).format(t=c.table),
                ([k[0] for k in keys], [k[1] for k in keys]),
            ).fetchall()
            found = {(int(r[0]), int(r[1])): r for r in rows}
            out = []
            for ref, key in zip(refs, keys, strict=True):
                row = found.get(key)
                if row is not None:  # gone if deleted since the index was read
                    out.append(
                        ScoredChunk(
                            ref.document_id, ref.chunk_index, row[2], ref.score, row[3], row[4]
                        )
                    )
            return out

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.close()


def _ref(row: tuple[Any, ...], score: float) -> ChunkRef:
    """A (doc_id, idx, document row id, ...) search row as a ref keyed by (row id, idx)."""
    return ChunkRef((int(row[2]), int(row[1])), row[0], int(row[1]), score)


def _numpy(value: Any) -> Vectors:
    """A vector column value (pgvector's ``Vector``, or an array) as float32."""
    to_numpy = getattr(value, "to_numpy", None)
    return np.asarray(to_numpy() if to_numpy else value, dtype=np.float32)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
