"""BM25 on PostgreSQL (:mod:`ragserve.store.postgres.lexical`): searches return the top k of a
brute-force BM25 over the lexemes PostgreSQL made (filtered or not); the counters written with
the chunks agree with a recount after inserts, replacements and deletions; a database of schema
version 2 is migrated at open (postings built from its chunks) and searches the same."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from ragserve.types import Chunk, Document
from tests.fakes import random_unit

psycopg = pytest.importorskip("psycopg")
from ragserve.store.postgres import schema as postgres_schema  # noqa: E402
from ragserve.store.postgres.store import PostgresStore  # noqa: E402

DIM = 8
Key = tuple[int, int]
Corpus = dict[Key, dict[str, int]]  # chunk -> term -> tf


def brute_top(corpus: Corpus, terms: Sequence[str], k: int) -> list[tuple[Key, float]]:
    """BM25 of every chunk holding a query term (k1 1.2, b 0.75, Lucene's idf)."""
    n = len(corpus)
    avgdl = sum(sum(tfs.values()) for tfs in corpus.values()) / n
    df = {t: sum(1 for tfs in corpus.values() if t in tfs) for t in terms}
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms if df[t]}
    scores = {}
    for key, tfs in corpus.items():
        dl = sum(tfs.values())
        parts = [
            idf[t] * tfs[t] * (K1 + 1) / (tfs[t] + K1 * (1 - B + B * dl / avgdl))
            for t in sorted(idf)
            if t in tfs
        ]
        if parts:
            scores[key] = sum(parts)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


# --------------------------------------------------------------------------- on a real server

pytestmark = pytest.mark.postgres
K1, B = 1.2, 0.75


def _ingest(store: PostgresStore, docs: dict[str, list[str]], bucket: dict[str, int]) -> None:
    for i, (doc_id, texts) in enumerate(docs.items()):
        chunks = [Chunk(doc_id, j, t) for j, t in enumerate(texts)]
        store.upsert_document(
            "c",
            Document(doc_id, "", metadata={"bucket": bucket[doc_id]}),
            str(hash(tuple(texts))),
            chunks,
            random_unit(len(chunks), DIM, seed=i),
        )


def _db_corpus(dsn: str, where: str = "TRUE") -> Corpus:
    """Each chunk's lexemes and their counts, as PostgreSQL made them."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.document_id, c.idx, u.lexeme, cardinality(u.positions) FROM chunks c "
            "JOIN documents d ON d.id = c.document_id CROSS JOIN LATERAL unnest(c.tsv) u "
            f"WHERE {where}"
        ).fetchall()
    corpus: Corpus = {}
    for doc, idx, lexeme, tf in rows:
        corpus.setdefault((doc, idx), {})[lexeme] = tf
    return corpus


def _lexemes(dsn: str, text: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT tsvector_to_array(to_tsvector('english', %s))", (text,)
        ).fetchone()
    assert row is not None
    return sorted(row[0])


def counters_agree(dsn: str) -> None:
    """lexical_terms / lexical_stats equal a recount of the chunks (zero rows allowed)."""
    with psycopg.connect(dsn) as conn:
        stats = conn.execute(
            "SELECT s.chunks, s.tokens, (SELECT count(*) FROM chunks c "
            "  WHERE c.collection_id = s.collection_id), "
            "(SELECT coalesce(sum(cardinality(u.positions)), 0) FROM chunks c, unnest(c.tsv) u "
            "  WHERE c.collection_id = s.collection_id) FROM lexical_stats s"
        ).fetchall()
        counted = dict(
            conn.execute(
                "SELECT c.collection_id || u.lexeme, count(*) FROM chunks c, unnest(c.tsv) u "
                "GROUP BY 1"
            ).fetchall()
        )
        kept = dict(
            conn.execute(
                "SELECT collection_id || term, df FROM lexical_terms WHERE df <> 0"
            ).fetchall()
        )
        postings = conn.execute("SELECT count(*) FROM postings").fetchone()
    assert [(s[0], s[1]) for s in stats] == [(s[2], s[3]) for s in stats]
    assert kept == counted
    assert postings is not None and postings[0] == sum(counted.values())


WORDS = "apple banana cherry date elder fig grape honeydew kiwi lemon mango nut olive".split()  # noqa: SIM905


def _random_docs(rng: random.Random, n: int) -> dict[str, list[str]]:
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    return {
        f"d{i}": [
            " ".join(rng.choices(WORDS, weights, k=rng.randint(1, 25)))
            for _ in range(rng.randint(1, 3))
        ]
        for i in range(n)
    }


def test_search_is_the_brute_force_bm25_top_k(postgres_dsn: str) -> None:
    rng = random.Random(7)
    docs = _random_docs(rng, 300)
    bucket = {d: i % 5 for i, d in enumerate(docs)}
    store = PostgresStore(postgres_dsn)
    try:
        store.create_collection("c", "fake", DIM)
        _ingest(store, docs, bucket)
        corpus = _db_corpus(postgres_dsn)
        allowed = _db_corpus(postgres_dsn, "d.metadata @> '{\"bucket\": 2}'")
        for query in ["apple", "lemon olive nut", "kiwi banana apple", "honeydew mango"]:
            terms = _lexemes(postgres_dsn, query)
            for k in (1, 5, 20):
                refs = store.lexical_refs("c", query, k)
                want = brute_top(corpus, terms, k)
                assert [r.key for r in refs] == [key for key, _ in want]
                assert [r.score for r in refs] == pytest.approx([s for _, s in want])
                got = store.lexical_refs("c", query, k, {"bucket": 2})
                want = [
                    (key, s) for key, s in brute_top(corpus, terms, len(corpus)) if key in allowed
                ][:k]
                assert [r.key for r in got] == [key for key, _ in want]
                assert [r.score for r in got] == pytest.approx([s for _, s in want])
    finally:
        store.close()


def test_counters_follow_inserts_replacements_and_deletions(postgres_dsn: str) -> None:
    rng = random.Random(3)
    store = PostgresStore(postgres_dsn)
    try:
        store.create_collection("c", "fake", DIM)
        store.create_collection("other", "fake", DIM)
        docs = _random_docs(rng, 40)
        _ingest(store, docs, dict.fromkeys(docs, 0))
        counters_agree(postgres_dsn)
        _ingest(store, {d: docs[d] for d in list(docs)[:5]}, dict.fromkeys(docs, 1))  # same
        replaced = _random_docs(random.Random(4), 20)
        _ingest(store, replaced, dict.fromkeys(replaced, 0))
        store.upsert_document("c", Document("d3", ""), "empty", [], random_unit(0, DIM))
        for doc_id in ("d1", "d7", "d39"):
            store.delete_document("c", doc_id)
        counters_agree(postgres_dsn)
        assert store.lexical_search("c", "apple", 100)
        store.delete_collection("other")
        counters_agree(postgres_dsn)
    finally:
        store.close()


def test_a_version_2_database_is_migrated_and_searches_the_same(postgres_dsn: str) -> None:
    """Postings and counters are built at open from the chunks a version-2 store wrote."""
    docs = _random_docs(random.Random(11), 60)
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, "
            "applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for version, script in postgres_schema.MIGRATIONS[:2]:
            assert isinstance(script, str)
            conn.execute(script)
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        cid = conn.execute(
            "INSERT INTO collections (name, embedder, dimension, created_at) "
            "VALUES ('c', 'fake', %s, 0) RETURNING id",
            (DIM,),
        ).fetchone()[0]
        conn.execute(f"CREATE TABLE chunks_{cid} PARTITION OF chunks FOR VALUES IN ({cid})")
        for doc_id, texts in docs.items():
            row = conn.execute(
                "INSERT INTO documents (collection_id, doc_id, metadata, content_hash, "
                "created_at, updated_at) VALUES (%s, %s, '{}', 'h', 0, 0) RETURNING id",
                (cid, doc_id),
            ).fetchone()
            for j, text in enumerate(texts):
                conn.execute(
                    "INSERT INTO chunks (collection_id, document_id, idx, text, start_char, "
                    "end_char, metadata, embedding) VALUES (%s, %s, %s, %s, 0, 0, '{}', %s)",
                    (cid, row[0], j, text, str([0.5] * DIM)),
                )
    store = PostgresStore(postgres_dsn)
    try:
        counters_agree(postgres_dsn)
        corpus = _db_corpus(postgres_dsn)
        got = store.lexical_refs("c", "cherry fig", 10)
        terms = _lexemes(postgres_dsn, "cherry fig")
        want = brute_top(corpus, terms, 10)
        assert [(r.key, r.score) for r in got] == [(key, pytest.approx(s)) for key, s in want]
        store.upsert_document(
            "c", Document("new", ""), "h2", [Chunk("new", 0, "fig fig fig")], random_unit(1, DIM)
        )
        counters_agree(postgres_dsn)
        assert store.lexical_search("c", "fig", 1)[0].document_id == "new"
    finally:
        store.close()
