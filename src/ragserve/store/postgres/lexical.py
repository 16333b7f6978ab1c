"""BM25 on PostgreSQL: postings and statistics written with the chunks, scored in one query.

Write side (:func:`index_document`, :func:`unindex_document`, :func:`index_collection`): every
chunk's ``tsv`` (the generated ``to_tsvector('english', text)``) is unnested into
``postings_<collection>`` rows ``(document_id, idx, term, tf, dl)`` (``dl``: the chunk's length
in indexed tokens), under an index ``(term) INCLUDE (document_id, idx, tf, dl)`` that answers a
term's postings without touching the table. The same transaction keeps the collection's
statistics: ``lexical_terms`` (a document frequency per term) and ``lexical_stats`` (chunks,
tokens). A replaced or deleted document's postings go with its chunks; the counters move by the
net difference, terms in sorted order and the collection's row last, so concurrent writers
cannot deadlock on them (they queue on the terms they share, at the end of their transactions).

Read side (:func:`search`): exact BM25 (k1 1.2, b 0.75, Lucene's idf; the document frequencies
and mean length of the moment, read from the counters, O(1)) of every chunk holding a query
term, summed from the postings alone: one index-only scan per term and a hash aggregate, no
``tsvector`` read, no document frequency counted at query time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

K1 = 1.2
B = 0.75

Conn = psycopg.Connection[Any]

#: Postings of the chunks of ``{t}`` selected by ``{where}`` (a condition on ``c``) into ``{p}``.
_INSERT_POSTINGS = (
    "INSERT INTO {p} (collection_id, document_id, idx, term, tf, dl) "
    "SELECT c.collection_id, c.document_id, c.idx, u.lexeme, cardinality(u.positions), "
    "sum(cardinality(u.positions)) OVER (PARTITION BY c.document_id, c.idx) "
    "FROM {t} c CROSS JOIN LATERAL unnest(c.tsv) AS u WHERE {where}"
)


def postings_table(collection_id: int) -> sql.Identifier:
    return sql.Identifier(f"postings_{collection_id}")


def create_partition(conn: Conn, collection_id: int) -> None:
    """The collection's empty postings partition and its statistics row."""
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF postings FOR VALUES IN ({})").format(
            postings_table(collection_id), sql.Literal(collection_id)
        )
    )
    conn.execute(
        "INSERT INTO lexical_stats (collection_id, chunks, tokens) VALUES (%s, 0, 0)",
        (collection_id,),
    )


def index_collection(conn: Conn, collection_id: int, chunks: sql.Identifier) -> None:
    """Postings and statistics of every chunk already in ``chunks`` (schema migration 3)."""
    create_partition(conn, collection_id)
    p = postings_table(collection_id)
    conn.execute(sql.SQL(_INSERT_POSTINGS).format(p=p, t=chunks, where=sql.SQL("TRUE")))
    conn.execute(
        sql.SQL(
            "INSERT INTO lexical_terms (collection_id, term, df) "
            "SELECT %s, term, count(*) FROM {p} GROUP BY term ORDER BY term"
        ).format(p=p),
        (collection_id,),
    )
    conn.execute(
        sql.SQL(
            "UPDATE lexical_stats SET chunks = (SELECT count(*) FROM {t}), "
            "tokens = (SELECT coalesce(sum(dl), 0) FROM (SELECT DISTINCT document_id, idx, dl "
            "FROM {p}) s) WHERE collection_id = %s"
        ).format(t=chunks, p=p),
        (collection_id,),
    )


@dataclass
class Delta:
    """Net change of a collection's lexical counters (document frequencies, tokens, chunks)."""

    terms: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    chunks: int = 0

    def add(self, rows: Iterable[tuple[int, str, int]], sign: int) -> None:
        """Postings rows ``(idx, term, dl)`` added (``sign`` 1) or removed (-1)."""
        lengths: dict[int, int] = {}
        for idx, term, dl in rows:
            self.terms[term] = self.terms.get(term, 0) + sign
            lengths[idx] = dl
        self.tokens += sign * sum(lengths.values())


def unindex_document(conn: Conn, collection_id: int, doc_row: int) -> Delta:
    """Delete document ``doc_row``'s postings; what the counters lose (see :func:`apply`)."""
    rows = conn.execute(
        sql.SQL("DELETE FROM {} WHERE document_id = %s RETURNING idx, term, dl").format(
            postings_table(collection_id)
        ),
        (doc_row,),
    ).fetchall()
    delta = Delta()
    delta.add(rows, -1)
    return delta


def index_document(
    conn: Conn, collection_id: int, chunks: sql.Identifier, doc_row: int, delta: Delta
) -> None:
    """Postings of document ``doc_row``'s chunks now in ``chunks``, and the collection's counters
    moved by them plus ``delta`` (what :func:`unindex_document` removed, the chunk count)."""
    rows = conn.execute(
        sql.SQL(_INSERT_POSTINGS + " RETURNING idx, term, dl").format(
            p=postings_table(collection_id), t=chunks, where=sql.SQL("c.document_id = %s")
        ),
        (doc_row,),
    ).fetchall()
    delta.add(rows, 1)
    apply(conn, collection_id, delta)


def apply(conn: Conn, collection_id: int, delta: Delta) -> None:
    """Move the collection's counters by ``delta``: terms in sorted order, then the collection's
    row (the same lock order in every writer)."""
    changed = sorted((t, n) for t, n in delta.terms.items() if n != 0)
    if changed:
        conn.execute(
            "INSERT INTO lexical_terms AS l (collection_id, term, df) "
            "SELECT %s, t, n FROM unnest(%s::text[], %s::integer[]) AS d(t, n) ORDER BY t "
            "ON CONFLICT (collection_id, term) DO UPDATE SET df = l.df + excluded.df",
            (collection_id, [t for t, _ in changed], [n for _, n in changed]),
        )
    if delta.tokens or delta.chunks:
        conn.execute(
            "UPDATE lexical_stats SET chunks = chunks + %s, tokens = tokens + %s "
            "WHERE collection_id = %s",
            (delta.chunks, delta.tokens, collection_id),
        )


# --------------------------------------------------------------------------- search

# float8 constants throughout: numeric arithmetic in the aggregate doubled its cost.
_SEARCH = (
    "WITH st AS MATERIALIZED (SELECT chunks::float8 AS n, tokens::float8 / chunks AS avgdl "
    "  FROM lexical_stats WHERE collection_id = %s AND chunks > 0 AND tokens > 0), "
    "q AS MATERIALIZED (SELECT l.term, "
    "  ln(1::float8 + (st.n - l.df + 0.5::float8) / (l.df + 0.5::float8)) AS idf "
    "  FROM st, unnest(tsvector_to_array(to_tsvector('english', %s))) AS t(term) "
    "  JOIN lexical_terms l ON l.collection_id = %s AND l.term = t.term WHERE l.df > 0), "
    "top AS (SELECT p.document_id, p.idx, sum(q.idf * p.tf * {k1p1} / "
    "  (p.tf + {k1b0} + {k1b} * p.dl / st.avgdl)) AS score "
    "  FROM st, q JOIN {p} p ON p.term = q.term {join} "
    "  GROUP BY p.document_id, p.idx ORDER BY score DESC, p.document_id, p.idx LIMIT %s) "
    "SELECT d.doc_id, top.idx, top.document_id, top.score "
    "FROM top JOIN documents d ON d.id = top.document_id "
    "ORDER BY top.score DESC, top.document_id, top.idx"
)


def search(
    conn: Conn,
    collection_id: int,
    words: Sequence[str],
    k: int,
    where: str | None = None,
    params: Sequence[object] = (),
) -> list[tuple[Any, ...]]:
    """The BM25 top ``k`` of the collection for ``words`` (the lexemes
    ``to_tsvector('english', ...)`` makes of them), as rows ``(doc_id, idx, document row id,
    score)``, best first (ties: document row, idx). ``where`` (with ``params``) restricts the
    documents (``d``: the ``documents`` row), e.g. a metadata filter."""
    join: sql.Composable = sql.SQL("")
    if where is not None:
        join = sql.SQL("JOIN documents d ON d.id = p.document_id WHERE {}").format(sql.SQL(where))
    query = sql.SQL(_SEARCH).format(
        k1p1=sql.SQL(f"{K1 + 1.0!r}::float8"),
        k1b0=sql.SQL(f"{K1 * (1.0 - B)!r}::float8"),
        k1b=sql.SQL(f"{K1 * B!r}::float8"),
        p=postings_table(collection_id),
        join=join,
    )
    args = [collection_id, " ".join(words), collection_id, *params, k]
    return conn.execute(query, args).fetchall()
