"""Schema of the PostgreSQL store, created and versioned by the service (never by hand).

``schema_version`` holds one row per applied migration. :func:`migrate` runs at every open: it
takes a transaction-level advisory lock, so several processes starting together apply each
migration exactly once (the others wait, then see it applied), and refuses a database whose
schema is newer than this code.

Layout (version 1)::

    collections (id, name UNIQUE, embedder, dimension, created_at)
    documents   (id, collection_id -> collections ON DELETE CASCADE, doc_id, title,
                 metadata jsonb [GIN jsonb_path_ops], content_hash, created_at, updated_at,
                 UNIQUE (collection_id, doc_id))
    chunks      LIST-partitioned by collection_id: one partition ``chunks_<id>`` per collection
                (document_id -> documents ON DELETE CASCADE, idx, text, start_char, end_char,
                 metadata jsonb, embedding vector, tsv tsvector GENERATED [GIN],
                 PRIMARY KEY (collection_id, document_id, idx))

Version 2 adds ``collection_options (collection_id -> collections ON DELETE CASCADE, options
jsonb)``: a collection's own defaults (its fusion).

Version 3 (BM25 at index speed: :mod:`.lexical`) adds ``postings`` (LIST-partitioned like
``chunks``: ``postings_<id>`` rows ``(collection_id, document_id, idx, term, tf, dl)``, indexes
``(term) INCLUDE (document_id, idx, tf, dl)`` and ``(document_id)``),
``lexical_terms (collection_id, term, df)`` and ``lexical_stats (collection_id, chunks,
tokens)``, fills them from the chunks of every existing
collection, and drops the GIN index on ``tsv`` (searches no longer use it).

Each partition gets its own HNSW index on ``(embedding::vector(<dimension>))`` with
``vector_cosine_ops`` when the collection is created (see ``postgres.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from ragserve.errors import Unavailable
from ragserve.store.postgres import lexical

#: Key of the advisory lock that serializes migrations (any constant bigint; "ragserve").
MIGRATION_LOCK = 0x7261677365727665


def _postings(conn: psycopg.Connection[Any]) -> None:
    conn.execute(
        """
        CREATE TABLE lexical_stats (
            collection_id integer PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
            chunks bigint NOT NULL,
            tokens bigint NOT NULL
        );
        CREATE TABLE lexical_terms (
            collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            term text NOT NULL,
            df integer NOT NULL,
            PRIMARY KEY (collection_id, term)
        );
        CREATE TABLE postings (
            collection_id integer NOT NULL,
            document_id bigint NOT NULL,
            idx integer NOT NULL,
            term text NOT NULL,
            tf integer NOT NULL,
            dl integer NOT NULL
        ) PARTITION BY LIST (collection_id);
        CREATE INDEX postings_term ON postings (term) INCLUDE (document_id, idx, tf, dl);
        CREATE INDEX postings_document ON postings (document_id);
        DROP INDEX IF EXISTS chunks_tsv;
        """
    )
    for (collection_id,) in conn.execute("SELECT id FROM collections ORDER BY id").fetchall():
        lexical.index_collection(conn, collection_id, sql.Identifier(f"chunks_{collection_id}"))


#: (version, DDL script or a function of the connection), applied in order, each once.
MIGRATIONS: list[tuple[int, str | Callable[[psycopg.Connection[Any]], None]]] = [
    (
        1,
        """
        CREATE EXTENSION IF NOT EXISTS vector;
        CREATE TABLE collections (
            id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            name text NOT NULL UNIQUE,
            embedder text NOT NULL,
            dimension integer NOT NULL CHECK (dimension BETWEEN 1 AND 8192),
            created_at double precision NOT NULL
        );
        CREATE TABLE documents (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            collection_id integer NOT NULL REFERENCES collections (id) ON DELETE CASCADE,
            doc_id text NOT NULL,
            title text,
            metadata jsonb NOT NULL,
            content_hash text NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            UNIQUE (collection_id, doc_id)
        );
        CREATE INDEX documents_metadata ON documents USING gin (metadata jsonb_path_ops);
        CREATE TABLE chunks (
            collection_id integer NOT NULL,
            document_id bigint NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
            idx integer NOT NULL,
            text text NOT NULL,
            start_char integer NOT NULL,
            end_char integer NOT NULL,
            metadata jsonb NOT NULL,
            embedding vector NOT NULL,
            tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
            PRIMARY KEY (collection_id, document_id, idx)
        ) PARTITION BY LIST (collection_id);
        CREATE INDEX chunks_document ON chunks (document_id);
        CREATE INDEX chunks_tsv ON chunks USING gin (tsv);
        """,
    ),
    (
        2,
        """
        CREATE TABLE collection_options (
            collection_id integer PRIMARY KEY REFERENCES collections (id) ON DELETE CASCADE,
            options jsonb NOT NULL
        );
        """,
    ),
    (3, _postings),
]

LATEST = MIGRATIONS[-1][0]


#: HNSW indexes came with pgvector 0.5.0 (iterative scans, used when there, with 0.8.0).
MIN_PGVECTOR = (0, 5)


def parse_version(text: str) -> tuple[int, int]:
    """``"0.8.5"`` -> ``(0, 8)``."""
    parts = [int(p) if p.isdigit() else 0 for p in [*text.split("."), "0", "0"][:2]]
    return parts[0], parts[1]


def check_pgvector(version: str | None) -> tuple[int, int]:
    """The (major, minor) of pgvector ``version`` (installed, else the server's default), or
    :class:`Unavailable` naming what is needed."""
    need = ".".join(map(str, MIN_PGVECTOR))
    if version is None:
        raise Unavailable(
            f"the PostgreSQL server has no pgvector extension: ragserve needs pgvector >= {need}"
        )
    found = parse_version(version)
    if found < MIN_PGVECTOR:
        raise Unavailable(
            f"pgvector {version} is too old: ragserve needs pgvector >= {need} (HNSW indexes; "
            ">= 0.8 also gives filtered searches iterative index scans)"
        )
    return found


def pgvector_version(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    """The pgvector this database has (or would get), checked by :func:`check_pgvector`."""
    row = conn.execute(
        "SELECT coalesce((SELECT extversion FROM pg_extension WHERE extname = 'vector'), "
        "(SELECT default_version FROM pg_available_extensions WHERE name = 'vector'))"
    ).fetchone()
    conn.rollback()
    return check_pgvector(None if row is None or row[0] is None else str(row[0]))


def migrate(conn: psycopg.Connection[Any]) -> int:
    """Bring the schema to :data:`LATEST`; returns the version found before. Autocommit off."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        if found > LATEST:
            raise Unavailable(
                f"the database schema is version {found}, newer than this ragserve ({LATEST}): "
                "upgrade ragserve"
            )
        for version, script in MIGRATIONS:
            if version > found:
                if callable(script):
                    script(conn)
                else:
                    conn.execute(script)  # trusted, constant DDL
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    return found
