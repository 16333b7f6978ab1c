"""Chunking defaults by measurement: dense nDCG@10 / Recall@100 on SciFact (BEIR) per chunk config.

Run: ``python -m bench.chunking_eval [--data /work/shared/eval/scifact] [--other-docs 1200]``.
Prints one JSON line per configuration, then a summary. Chunk vectors are cached under
``bench/out/chunking/`` keyed by model, configuration and document subset, so a re-run only embeds
what is missing (and an interrupted run loses at most the configuration in progress).

Protocol: each document is ``Document(id, text, title)``; it is chunked with
:func:`ragserve.ingest.chunking.chunk_document` and every chunk embedded with
:func:`~ragserve.ingest.chunking.embedding_text`; queries get the model's query prefix. Search is a
brute-force cosine over all chunk vectors; a document found through several chunks counts once, at
its best rank (:func:`ragserve.evaluation.dedupe`). The ``whole`` configuration is the BEIR
reference protocol (``title + " " + text``, truncated by the model at 512 tokens).

Subset (``--other-docs N``, default 1200; ``0`` means the whole corpus): all test queries, every
document judged for them, and a fixed random sample (seed 0) of N other documents. Fewer distractors
make absolute scores higher than on the full corpus; the comparison between configurations is what
this measures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ragserve.config import Settings
from ragserve.evaluation import beir_scores, load_beir, ndcg_at_k
from ragserve.ingest.chunking import chunk_document, embedding_text
from ragserve.models.embedder import Embedder
from ragserve.models.manager import ModelManager
from ragserve.types import Document

OUT = Path(__file__).parent / "out" / "chunking"
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Config:
    name: str
    chunk_tokens: int  # 0: whole document, BEIR protocol
    overlap: int
    title_prefix: bool


CONFIGS = {
    c.name: c
    for c in (
        Config("256+title", 256, 32, True),
        Config("256", 256, 32, False),
        Config("512+title", 510, 64, True),
        Config("128+title", 128, 16, True),
        Config("whole", 0, 0, True),
        Config("512", 510, 64, False),
        Config("128", 128, 16, False),
        Config("256+title-o0", 256, 0, True),
        Config("256+title-o64", 256, 64, True),
    )
}


def select_docs(
    corpus: list[tuple[str, str, str]], judged: set[str], others: int
) -> list[tuple[str, str, str]]:
    if others <= 0:
        return corpus
    rest = sorted(d[0] for d in corpus if d[0] not in judged)
    keep = judged | set(random.Random(0).sample(rest, min(others, len(rest))))
    return [d for d in corpus if d[0] in keep]


def chunk_texts(
    docs: list[tuple[str, str, str]], embedder: Embedder, config: Config
) -> tuple[list[str], list[str]]:
    """(document id per chunk, text to embed per chunk)."""
    ids: list[str] = []
    texts: list[str] = []
    for doc_id, title, text in docs:
        if config.chunk_tokens == 0:
            ids.append(doc_id)
            texts.append(f"{title} {text}".strip())
            continue
        doc = Document(id=doc_id, text=text, title=title or None)
        for chunk in chunk_document(
            doc,
            embedder.token_spans,
            chunk_tokens=config.chunk_tokens,
            overlap=config.overlap,
            title_prefix=config.title_prefix,
        ):
            ids.append(doc_id)
            texts.append(embedding_text(chunk))
    return ids, texts


def embed_cached(
    embedder: Embedder, texts: list[str], key: str, label: str, *, query: bool = False
) -> Matrix:
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = OUT / f"{key}-{digest}.npy"
    if path.is_file():
        return np.asarray(np.load(path), dtype=np.float32)
    started = time.perf_counter()
    # Long texts first, in slices, so progress shows and batches stay length-homogeneous.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = np.empty((len(texts), embedder.dimension), dtype=np.float32)
    step = 256
    for i in range(0, len(order), step):
        part = order[i : i + step]
        batch = [texts[j] for j in part]
        out[part] = embedder.embed_queries(batch) if query else embedder.embed_documents(batch)
        done = min(i + step, len(order))
        print(
            f"{label}: embedded {done}/{len(texts)} in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def reuse_whole_vectors(root: Path, embedder: Embedder, n_docs: int) -> Matrix | None:
    """Full-corpus ``whole`` vectors already embedded by ``bench.eval_search`` (same texts)."""
    digest = hashlib.sha256((root / "corpus.jsonl").read_bytes()).hexdigest()[:16]
    path = OUT.parent / f"docvec-{embedder.name}-{digest}-{n_docs}.npy"
    return np.asarray(np.load(path), dtype=np.float32) if path.is_file() else None


def per_query_ndcg(run: dict[str, list[str]], qrels: dict[str, dict[str, int]]) -> list[float]:
    return [ndcg_at_k({q: run[q]}, {q: qrels[q]}, 10) for q in sorted(qrels)]


def paired_bootstrap(
    a: list[float], b: list[float], rounds: int = 2000
) -> tuple[float, float, float]:
    """Mean of b - a and its 95% interval over queries resampled with replacement (seed 0)."""
    diff = np.asarray(b) - np.asarray(a)
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), size=(rounds, len(diff)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def search(
    query_vecs: Matrix, chunk_vecs: Matrix, chunk_doc: list[str], depth: int = 1000
) -> list[list[str]]:
    scores = query_vecs @ chunk_vecs.T
    depth = min(depth, scores.shape[1])
    top = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
    runs = []
    for row, cand in zip(scores, top, strict=True):
        ranked = cand[np.argsort(-row[cand], kind="stable")]
        runs.append([chunk_doc[i] for i in ranked])
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/work/shared/eval/scifact"))
    parser.add_argument("--other-docs", type=int, default=1200)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names")
    parser.add_argument(
        "--reference", default="256+title", help="config the others are paired with"
    )
    args = parser.parse_args()

    dataset = load_beir(args.data)
    queries = dataset.test_queries
    qrels = {q: dataset.qrels[q] for q in queries}
    judged = {d for rels in qrels.values() for d in rels}
    docs = select_docs(list(dataset.corpus()), judged, args.other_docs)
    settings = Settings()
    embedder = ModelManager.from_settings(settings).embedder(settings.embedder)
    subset = f"n{len(docs)}-o{args.other_docs}"

    qids = sorted(queries)
    qvecs = embed_cached(
        embedder, [queries[q] for q in qids], f"{embedder.name}-queries", "queries", query=True
    )
    results: list[dict[str, object]] = []
    per_query: dict[str, list[float]] = {}
    for name in args.configs.split(","):
        config = CONFIGS[name]
        started = time.perf_counter()
        chunk_doc, texts = chunk_texts(docs, embedder, config)
        key = f"{embedder.name}-{name}-{subset}"
        reused = None
        if name == "whole" and args.other_docs <= 0:
            reused = reuse_whole_vectors(args.data, embedder, len(docs))
        vecs = reused if reused is not None else embed_cached(embedder, texts, key, name)
        runs = search(qvecs, vecs, chunk_doc)
        run = dict(zip(qids, runs, strict=True))
        row = {
            "config": name,
            "chunk_tokens": config.chunk_tokens,
            "overlap": config.overlap,
            "title_prefix": config.title_prefix,
            "documents": len(docs),
            "chunks": len(texts),
            "queries": len(qids),
            **beir_scores(run, qrels),
            "seconds": round(time.perf_counter() - started, 1),
        }
        results.append(row)
        per_query[name] = per_query_ndcg(run, qrels)
        print(json.dumps(row), flush=True)
    reference = args.reference if args.reference in per_query else next(iter(per_query))
    for row in results:
        diff, low, high = paired_bootstrap(per_query[reference], per_query[str(row["config"])])
        row[f"ndcg@10 - {reference} (95% CI)"] = f"{diff:+.4f} [{low:+.4f}, {high:+.4f}]"
    print(json.dumps({"model": embedder.name, "subset": subset, "results": results}, indent=2))


if __name__ == "__main__":
    main()
