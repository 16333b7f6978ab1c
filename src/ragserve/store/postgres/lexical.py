"""BM25 on PostgreSQL: postings written with the chunks, exact top-k with a bounded read.

Write side (:func:`index_document`, :func:`unindex_document`, :func:`index_collection`): every
chunk's ``tsv`` (the generated ``to_tsvector('english', text)``) is unnested into
``postings_<collection>`` rows ``(document_id, idx, term, tf, dl, w)``: ``dl`` is the chunk's
length in indexed tokens and ``w`` its BM25 term weight (k1 1.2, b 0.75) with the collection's
mean length *at write time*, ``a_w``; the index ``(term, w DESC, ...)`` serves each term's
postings best first. The same transaction keeps the collection's statistics: ``lexical_terms``
(a document frequency per term) and ``lexical_stats`` (chunks, tokens, and ``min_avgdl``, the
least ``a_w`` ever used). A replaced or deleted document's postings go with its chunks; the
counters move by the net difference, terms in sorted order and the collection's row last, so
concurrent writers cannot deadlock on them (they queue on shared terms at the end of their
transactions only).

Read side (:func:`bm25_top`): BM25 with the mean length and document frequencies of the moment
(Lucene's idf), computed from ``tf`` and ``dl``, so ``w`` only orders the reads. Each query
term's postings are read best first down to a depth (``LIST_DEPTH``), not all of them; a chunk
seen in some lists but not in others is rescored from its own ``tsv`` (by primary key); the
result is returned only when it is provably the exact top k: no chunk left unseen or unrescored
can score above the k-th. Otherwise the lists are read deeper, at last in full. The bound: with
``c = k1 (1 - b)``, ``x = k1 b dl``, the weight at mean length ``A`` is
``tf (k1 + 1) / (tf + c + x / A) <= w * max(1, A / a_w)``, so an unseen posting of a term whose
list stopped at weight ``w_c`` adds at most ``idf * w_c * max(1, A / min_avgdl)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

K1 = 1.2
B = 0.75
#: Postings read per query term at first (at least 4 x k); 4x deeper each time the bound fails.
LIST_DEPTH = 256
#: Beyond this depth a term's postings are read in full.
MAX_LIST_DEPTH = 16_384

Key = tuple[int, int]  # (document row id, chunk idx)
Conn = psycopg.Connection[Any]

#: Postings of the chunks of ``{t}`` selected by ``{where}`` (a condition on ``c``) into
#: ``{p}``, weighted with the mean length given (NULL: these chunks' own). Rows: (idx, term, dl,
#: the mean length used).
_INSERT_POSTINGS = (
    "WITH src AS (SELECT c.collection_id, c.document_id, c.idx, u.lexeme AS term, "
    "  cardinality(u.positions) AS tf, "
    "  sum(cardinality(u.positions)) OVER (PARTITION BY c.document_id, c.idx) AS dl "
    "  FROM {t} c CROSS JOIN LATERAL unnest(c.tsv) AS u WHERE {where}), "
    "ref AS (SELECT coalesce(%s::float8, (SELECT avg(dl) FROM (SELECT DISTINCT document_id, "
    "  idx, dl FROM src) s)::float8, 1.0) AS a), "
    "ins AS (INSERT INTO {p} (collection_id, document_id, idx, term, tf, dl, w) "
    "  SELECT src.collection_id, src.document_id, src.idx, src.term, src.tf, src.dl, "
    f"  src.tf * {K1 + 1} / (src.tf + {K1} * ({1 - B} + {B} * src.dl / ref.a)) "
    "  FROM src, ref RETURNING idx, term, dl) "
    "SELECT ins.idx, ins.term, ins.dl, ref.a FROM ins, ref"
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
    first = conn.execute(
        sql.SQL(_INSERT_POSTINGS + " LIMIT 1").format(p=p, t=chunks, where=sql.SQL("TRUE")),
        (None,),
    ).fetchone()
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
            "FROM {p}) s), min_avgdl = %s WHERE collection_id = %s"
        ).format(t=chunks, p=p),
        (None if first is None else first[3], collection_id),
    )


@dataclass
class Delta:
    """Net change of a collection's lexical counters (document frequencies, tokens, chunks)."""

    terms: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    chunks: int = 0
    #: The mean length the postings written were weighted with.
    avgdl: float | None = None

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
    row = conn.execute(
        "SELECT tokens::float8 / chunks FROM lexical_stats "
        "WHERE collection_id = %s AND chunks > 0 AND tokens > 0",
        (collection_id,),
    ).fetchone()
    rows = conn.execute(
        sql.SQL(_INSERT_POSTINGS).format(
            p=postings_table(collection_id), t=chunks, where=sql.SQL("c.document_id = %s")
        ),
        (doc_row, None if row is None else row[0]),
    ).fetchall()
    delta.add([r[:3] for r in rows], 1)
    if rows:
        delta.avgdl = float(rows[0][3])
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
    if delta.tokens or delta.chunks or delta.avgdl is not None:
        conn.execute(
            "UPDATE lexical_stats SET chunks = chunks + %s, tokens = tokens + %s, "
            "min_avgdl = least(min_avgdl, %s) WHERE collection_id = %s",
            (delta.chunks, delta.tokens, delta.avgdl, collection_id),
        )


# --------------------------------------------------------------------------- search


@dataclass(frozen=True, slots=True)
class Collection:
    """What a search needs of a collection: its size, mean length and its terms' frequencies."""

    chunks: int
    tokens: int
    df: Mapping[str, int]
    #: The least mean length any stored weight ``w`` was computed with.
    min_avgdl: float | None = None

    def idf(self, term: str) -> float:
        n, df = self.chunks, self.df[term]
        return math.log(1.0 + (n - df + 0.5) / (df + 0.5))

    @property
    def avgdl(self) -> float:
        return self.tokens / self.chunks if self.chunks and self.tokens else 1.0

    @property
    def slack(self) -> float:
        """How much more than its stored ``w`` a posting can weigh now (float4 rounding
        included)."""
        least = self.min_avgdl or self.avgdl
        return max(1.0, self.avgdl / least) * (1.0 + 1e-5)


def weight(tf: int, dl: int, avgdl: float) -> float:
    """BM25's saturated, length-normalized term frequency."""
    return tf * (K1 + 1.0) / (tf + K1 * (1.0 - B + B * dl / avgdl))


Posting = tuple[Key, int, int, float]  # key, tf, dl, stored weight w
#: term -> its postings best first (``w`` descending), at most ``depth`` (``None``: all).
ReadLists = Callable[[Sequence[str], int | None], Mapping[str, Sequence[Posting]]]
#: keys -> (dl, {term: tf}) for the given terms, read from the chunks themselves.
ReadChunks = Callable[[Sequence[Key], Sequence[str]], Mapping[Key, tuple[int, Mapping[str, int]]]]


def bm25_top(
    stats: Collection,
    k: int,
    read_lists: ReadLists,
    read_chunks: ReadChunks,
    depth: int = LIST_DEPTH,
) -> list[tuple[Key, float]]:
    """The exact BM25 top ``k`` (score descending, then key), reading as few postings as it
    can prove enough (see the module docstring)."""
    terms = sorted(t for t, df in stats.df.items() if df > 0)
    if not terms or k <= 0:
        return []
    idf = {t: stats.idf(t) for t in terms}
    avgdl = stats.avgdl
    limit: int | None = max(depth, 4 * k)
    while True:
        if limit is not None and limit > MAX_LIST_DEPTH:
            limit = None
        lists = read_lists(terms, limit)
        found = _exact_top(lists, terms, idf, (avgdl, stats.slack), k, limit, read_chunks)
        if found is not None:
            return found
        assert limit is not None  # complete lists always prove the result
        limit *= 4


def _exact_top(
    lists: Mapping[str, Sequence[Posting]],
    terms: Sequence[str],
    idf: Mapping[str, float],
    lengths: tuple[float, float],
    k: int,
    limit: int | None,
    read_chunks: ReadChunks,
) -> list[tuple[Key, float]] | None:
    avgdl, slack = lengths
    seen: dict[Key, dict[str, float]] = {}
    bound: dict[str, float] = {}  # truncated term -> the most an unseen posting can add
    for t in terms:
        postings = lists.get(t, ())
        for key, tf, dl, _ in postings:
            seen.setdefault(key, {})[t] = idf[t] * weight(tf, dl, avgdl)
        if limit is not None and len(postings) >= limit:
            bound[t] = idf[t] * postings[-1][3] * slack
    unseen = sum(bound.values())
    lower = {key: sum(parts.values()) for key, parts in seen.items()}
    missing = {key: [t for t in bound if t not in parts] for key, parts in seen.items()}
    upper = {key: lower[key] + sum(bound[t] for t in missing[key]) for key in seen}
    ranked_lower = sorted(lower.values(), reverse=True)
    theta_lower = ranked_lower[k - 1] if len(ranked_lower) >= k else -math.inf
    exact: dict[Key, float] = {key: lower[key] for key in seen if not missing[key]}
    rescore = [key for key in seen if missing[key] and upper[key] >= theta_lower]
    if rescore:
        for key, (dl, tfs) in read_chunks(rescore, list(bound)).items():
            parts = seen[key]
            for t in missing[key]:
                if tfs.get(t, 0) > 0:
                    parts[t] = idf[t] * weight(tfs[t], dl, avgdl)
            exact[key] = 0.0
    # Each chunk's parts summed in one order (sorted terms): equal chunks score equally.
    for key in exact:
        exact[key] = sum(seen[key][t] for t in terms if t in seen[key])
    top = sorted(exact.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    if bound:  # some lists were cut: prove nothing left out can reach the k-th
        if len(top) < k:
            return None
        theta = top[-1][1]
        if unseen >= theta:
            return None
        if any(upper[key] >= theta for key in seen if key not in exact):
            return None
    return top


def read_lists_sql(
    conn: Conn, collection_id: int, where: str | None, params: Sequence[object]
) -> ReadLists:
    """:data:`ReadLists` over a postings partition; ``where`` (with ``params``) restricts the
    documents (``d``: the ``documents`` row), e.g. a metadata filter."""
    join: sql.Composable = sql.SQL("")
    condition: sql.Composable = sql.SQL("")
    if where is not None:
        join = sql.SQL("JOIN documents d ON d.id = p.document_id")
        condition = sql.SQL("AND {}").format(sql.SQL(where))

    def read(terms: Sequence[str], limit: int | None) -> dict[str, list[Posting]]:
        rows = conn.execute(
            sql.SQL(
                "SELECT q.term, p.document_id, p.idx, p.tf, p.dl, p.w "
                "FROM unnest(%s::text[]) AS q(term) CROSS JOIN LATERAL ("
                "  SELECT p.document_id, p.idx, p.tf, p.dl, p.w FROM {p} p {join} "
                "  WHERE p.term = q.term {condition} "
                "  ORDER BY p.w DESC, p.document_id, p.idx LIMIT %s) p"
            ).format(p=postings_table(collection_id), join=join, condition=condition),
            [list(terms), *params, limit],
        ).fetchall()
        out: dict[str, list[Posting]] = {}
        for term, doc, idx, tf, dl, w in rows:
            out.setdefault(term, []).append(((int(doc), int(idx)), int(tf), int(dl), float(w)))
        return out

    return read


def read_chunks_sql(conn: Conn, collection_id: int, chunks: sql.Identifier) -> ReadChunks:
    """:data:`ReadChunks` from the chunks' own ``tsv`` (by primary key)."""

    def read(keys: Sequence[Key], terms: Sequence[str]) -> dict[Key, tuple[int, dict[str, int]]]:
        rows = conn.execute(
            sql.SQL(
                "SELECT c.document_id, c.idx, "
                "(SELECT sum(cardinality(positions)) FROM unnest(c.tsv)), "
                "(SELECT array_agg(ARRAY[lexeme, cardinality(positions)::text]) "
                " FROM unnest(c.tsv) WHERE lexeme = ANY(%s)) "
                "FROM unnest(%s::bigint[], %s::integer[]) AS k(document_id, idx) "
                "JOIN {t} c ON c.collection_id = %s AND c.document_id = k.document_id "
                "AND c.idx = k.idx"
            ).format(t=chunks),
            (list(terms), [k[0] for k in keys], [k[1] for k in keys], collection_id),
        ).fetchall()
        out: dict[Key, tuple[int, dict[str, int]]] = {}
        for doc, idx, dl, pairs in rows:
            tfs = {str(t): int(n) for t, n in (pairs or [])}
            out[(int(doc), int(idx))] = (int(dl or 0), tfs)
        return out

    return read


def query_stats(conn: Conn, collection_id: int, words: Iterable[str]) -> Collection:
    """The collection's counters and the document frequencies of the query's terms (the
    lexemes ``to_tsvector('english', ...)`` makes of ``words``)."""
    rows = conn.execute(
        "SELECT s.chunks, s.tokens, s.min_avgdl, t.term, t.df FROM lexical_stats s "
        "LEFT JOIN LATERAL (SELECT l.term, l.df FROM unnest(tsvector_to_array("
        "  to_tsvector('english', %s))) AS q(term) "
        "  JOIN lexical_terms l ON l.collection_id = s.collection_id AND l.term = q.term) t "
        "ON TRUE WHERE s.collection_id = %s",
        (" ".join(words), collection_id),
    ).fetchall()
    if not rows:
        return Collection(0, 0, {})
    df = {str(r[3]): int(r[4]) for r in rows if r[3] is not None}
    chunks, tokens, least = rows[0][:3]
    return Collection(int(chunks), int(tokens), df, None if least is None else float(least))
