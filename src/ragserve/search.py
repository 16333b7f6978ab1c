"""Retrieval: dense, lexical (BM25) or hybrid (the two fused: :mod:`ragserve.fusion`), optionally
reranked.

The one entry point is :meth:`Searcher.search` (a collection name and a :class:`SearchRequest`
in, a :class:`SearchResult` out); the HTTP layer maps its JSON onto these dataclasses.

Reranking. A cross-encoder trained on MS MARCO does not transfer evenly: on SciFact, ordering
the hybrid top 20 by its logits alone drops nDCG@10 from 0.728 to 0.689. So the reranker is
fused as *one more ranked list* over the reranked head: the top ``rerank_top_n`` candidates are
ranked by their fused score, by dense score, by BM25 score and by reranker logit, and the ranks
are combined with RRF (constant ``rerank_rrf_k``, weights from :func:`head_signals`); the rest
keep their order below them. Figures in ``docs/store.md`` ("Fusion").
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ragserve.context import ExpandSpec, expand
from ragserve.errors import ClientGone, InvalidInput
from ragserve.filters import Filter, parse_filter
from ragserve.fusion import Candidate as _Candidate
from ragserve.fusion import FusionSpec, fuse
from ragserve.highlight import HighlightSpec, highlight, query_terms
from ragserve.models.embedder import Embedder
from ragserve.models.reranker import Reranker
from ragserve.store.base import MAX_K, ChunkRef, ScoredChunk, Store
from ragserve.types import JSONDict

Mode = Literal["dense", "lexical", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "lexical", "hybrid")
STAGES = ("embed", "dense", "lexical", "fuse", "rerank", "total")

#: Candidates a reranked search gives the cross-encoder unless it says otherwise.
RERANK_TOP_N = 20


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """One search in one collection. Defaults are the measured ones (see ``docs/store.md``)."""

    query: str
    top_k: int = 10
    mode: Mode = "hybrid"
    filter: Mapping[str, Any] | None = None
    #: Cross-encoder over the top ``rerank_top_n`` candidates (needs a reranker).
    rerank: bool = False
    rerank_top_n: int = RERANK_TOP_N
    #: One hit per document: its best chunk.
    collapse: bool = False
    #: Candidates per side of a hybrid search (at least ``top_k``). None: 100 with rerank, 50
    #: without. Fewer cost less (0.79 against 1.10 ms per search for 50 and 100) and leave
    #: hybrid nDCG@10 as it is (SciFact: 0.7288 at 50, 0.7257 at 100); the reranked head's
    #: fusion needs more (0.7404 at 100, 0.7353 at 50): docs/store.md.
    dense_candidates: int | None = None
    lexical_candidates: int | None = None
    #: How a hybrid search fuses its two legs (method, weights, RRF k); None: the searcher's
    #: default (``Settings.fusion_*``). See :mod:`ragserve.fusion`.
    fusion: FusionSpec | None = None
    #: Characters of each passage given to the reranker (it also truncates by tokens).
    rerank_max_chars: int = 2000
    #: Fusion of the reranked head: weight of the retrieval ranks (times each side's weight),
    #: weight of the reranker's rank, and the RRF constant (see :func:`rerank_fuse`).
    rerank_retrieval_weight: float = 1.0
    rerank_weight: float = 1.0
    rerank_rrf_k: int = 5
    #: Hits skipped before the page: pages of one query are slices of one ranking (below).
    offset: int = 0
    #: Per hit, each leg's rank and score, the fused and reranked ones (``SearchHit.explain``).
    explain: bool = False
    #: Per hit, its best passages with the offsets of matched query terms
    #: (:mod:`ragserve.highlight`).
    highlight: HighlightSpec | None = None
    #: Per hit, its neighbouring chunks or its section as one text (:mod:`ragserve.context`).
    expand: ExpandSpec | None = None
    #: True once nobody waits for the answer (the HTTP client left): the search stops before
    #: its costliest stage, the rerank, with :class:`~ragserve.errors.ClientGone`.
    cancelled: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SearchHit:
    document_id: str
    chunk_id: str
    chunk_index: int
    text: str
    #: Final score of this search (cosine, -bm25, RRF or rerank fusion: compare within one).
    score: float
    rank: int
    metadata: JSONDict = field(default_factory=dict)
    chunk_metadata: JSONDict = field(default_factory=dict)
    #: The evidence behind ``score``: "dense", "lexical", "fused", "rerank" (raw logit).
    scores: Mapping[str, float] = field(default_factory=dict)
    #: With ``explain``: {leg: {"rank", "score"}} for "dense", "lexical" and "fused" (ranks
    #: from 1 in that list; a leg that did not return the chunk is absent), and "rerank":
    #: {"rank", "logit"} for a hit in the reranked head.
    explain: JSONDict | None = None
    #: With ``highlight``: passages, best first (see :func:`ragserve.highlight.highlight`).
    highlights: list[JSONDict] | None = None
    #: With ``expand``: the merged context (see :func:`ragserve.context.expand`).
    context: JSONDict | None = None


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: tuple[SearchHit, ...]
    #: Milliseconds per stage: embed, dense, lexical, fuse, rerank, total (0 if not run).
    timings_ms: Mapping[str, float]
    mode: Mode
    reranked: bool
    #: Hybrid only: the fusion used, with the weight each leg got (given or adaptive).
    fusion: Mapping[str, Any] | None = None
    #: The ``offset`` of the next page, None when this page ends the ranking.
    next_offset: int | None = None
    #: With ``explain``: how the ranking was made (see :meth:`Searcher.search`).
    explain: JSONDict | None = None


def rrf(rankings: Sequence[tuple[Sequence[ChunkRef], float, str]], k: int) -> list[_Candidate]:
    """Weighted reciprocal rank fusion, ``sum(weight / (k + rank))`` (ranks from 1).

    ``rankings``: (hits best first, weight, name); each hit's own score is kept under ``name``.
    Ties are broken by chunk id so results are deterministic. (:func:`ragserve.fusion.fuse`
    with ``method="rrf"``.)
    """
    spec = FusionSpec("rrf", {name: w for _, w, name in rankings}, k)
    return fuse([(name, hits) for hits, _, name in rankings], spec).candidates


def _side(req: SearchRequest, candidates: int | None) -> int:
    """Candidates from one side of a hybrid search (see :class:`SearchRequest`)."""
    if candidates is not None:
        return candidates
    return 100 if req.rerank else 50


def _ranks(values: Sequence[float]) -> npt.NDArray[np.int64]:
    """1-based ranks, best (highest) first; ties keep the given order."""
    order = np.argsort(-np.asarray(values, dtype=np.float64), kind="stable")
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def rerank_fuse(
    candidates: list[_Candidate],
    logits: Sequence[float],
    *,
    signals: Mapping[str, float],
    rerank_weight: float,
    k: int,
    missing: Literal["worst", "skip"] = "worst",
) -> list[_Candidate]:
    """Reciprocal rank fusion over the reranked head: the reranker is one more ranked list.

    For the first ``len(logits)`` candidates, each retrieval signal in ``signals`` (name ->
    weight; "dense", "lexical") ranks the head by that signal's own score, the reranker ranks it
    by its logits, and ``score = sum(weight / (k + rank))``. A candidate a signal did not find
    ranks last for it (``missing="worst"``) or gets nothing from it (``"skip"``). Candidates
    beyond the head keep their order below it.
    """
    n = len(logits)
    head, tail = candidates[:n], candidates[n:]
    total = rerank_weight / (k + _ranks(logits).astype(np.float64))
    for name, weight in signals.items():
        values = [c.scores.get(name) for c in head]
        if weight == 0 or all(v is None for v in values):
            continue
        found = np.array([v is not None for v in values])
        ranks = _ranks([v if v is not None else -np.inf for v in values])
        contribution = weight / (k + ranks.astype(np.float64))
        total += contribution if missing == "worst" else np.where(found, contribution, 0.0)
    for i, cand in enumerate(head):
        cand.scores["rerank"] = float(logits[i])
        cand.score = float(total[i])
    head.sort(key=lambda c: (-c.score, c.chunk.chunk_id))
    floor = min((c.score for c in head), default=1.0)
    for j, cand in enumerate(tail):  # strictly below the head, in their retrieval order
        cand.score = floor * (len(tail) - j) / (len(tail) + 1)
    return head + tail


def head_signals(
    mode: Mode, weights: Mapping[str, float], retrieval_weight: float
) -> dict[str, float]:
    """Weights of the retrieval ranks inside the reranked head (see :func:`rerank_fuse`).

    Hybrid: the head is ranked by its fused score (weight 2, the two legs' share) and, at a
    quarter of that, by each leg's own score in proportion to its fusion weight (0.5 a leg at
    equal weights). Ranking the head by the legs alone, as before score fusion, threw away what
    min-max fusion had gained: SciFact (first 100 test queries) 0.7859 against 0.8059 without
    rerank; with the fused rank 0.8056, ArguAna (first 80) 0.5591 against 0.5576
    (docs/store.md, "Fusion"). Dense or lexical: that leg at 1.0 (the other has no scores and
    is skipped).
    """
    if mode != "hybrid" or not weights:
        return {"dense": retrieval_weight, "lexical": retrieval_weight}
    total = sum(weights.values()) or 1.0
    out = {"fused": 2.0 * retrieval_weight}
    out.update({n: 0.5 * 2.0 * w / total * retrieval_weight for n, w in weights.items()})
    return out


def collapse_documents(candidates: list[_Candidate]) -> list[_Candidate]:
    """Keep each document's best-ranked chunk only."""
    seen: set[str] = set()
    out = []
    for cand in candidates:
        if cand.chunk.document_id not in seen:
            seen.add(cand.chunk.document_id)
            out.append(cand)
    return out


class Searcher:
    """Searches one store with one embedder (and optionally a reranker). Thread-safe if they are."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
        *,
        max_k: int = 1000,
        max_candidates: int = 1000,
        fusion: FusionSpec | None = None,
        hybrid_instruction: bool = True,
    ) -> None:
        self.store = store
        #: Whether a hybrid search's query gets the embedder's query instruction (where the
        #: model's spec marks it optional); dense searches always do. Dense ranking leans on it
        #: (SciFact nDCG@10 0.7159 with, 0.7076 without); in hybrid, BM25 makes up for it
        #: (0.7221 / 0.7220) and queries are 8 tokens shorter.
        self.hybrid_instruction = hybrid_instruction
        #: The fusion of a hybrid search whose request names none.
        self.fusion = (fusion or FusionSpec()).check()
        self.embedder = embedder
        self.reranker = reranker
        self.max_k = max_k
        self.max_candidates = max_candidates

    def _check(self, req: SearchRequest) -> Filter | None:
        if req.mode not in MODES:
            raise InvalidInput(f"unknown search mode {req.mode!r}; valid: {', '.join(MODES)}")
        if not isinstance(req.query, str):
            raise InvalidInput("query must be a string")
        _int_in("top_k", req.top_k, 1, self.max_k)
        _int_in("offset", req.offset, 0, self.max_candidates)
        if req.highlight is not None:
            if not isinstance(req.highlight, HighlightSpec):
                raise InvalidInput("highlight must be a HighlightSpec")
            req.highlight.check()
        if req.expand is not None:
            if not isinstance(req.expand, ExpandSpec):
                raise InvalidInput("expand must be an ExpandSpec")
            req.expand.check()
        for name in ("dense_candidates", "lexical_candidates"):
            if getattr(req, name) is not None:
                _int_in(name, getattr(req, name), 1, self.max_candidates)
        _int_in("rerank_top_n", req.rerank_top_n, 1, self.max_candidates)
        _int_in("rerank_rrf_k", req.rerank_rrf_k, 0, 10_000)
        _int_in("rerank_max_chars", req.rerank_max_chars, 1, 1_000_000)
        if req.fusion is not None:
            if not isinstance(req.fusion, FusionSpec):
                raise InvalidInput("fusion must be a FusionSpec")
            req.fusion.check()
        for name in ("rerank_retrieval_weight", "rerank_weight"):
            value = getattr(req, name)
            if not isinstance(value, int | float) or not 0 <= value <= 1000:
                raise InvalidInput(f"{name} must be a number between 0 and 1000")
        return parse_filter(req.filter)

    def _present(
        self, collection: str, wanted: list[_Candidate], chunks: dict[str, ScoredChunk]
    ) -> list[_Candidate]:
        """Read the chunks of ``wanted`` not in ``chunks`` yet into it; return those of
        ``wanted`` that still exist (one deleted since the index was read drops out)."""
        missing = [c.chunk for c in wanted if c.chunk.chunk_id not in chunks]
        if missing:
            for chunk in self.store.hydrate(collection, missing):
                chunks[chunk.chunk_id] = chunk
        return [c for c in wanted if c.chunk.chunk_id in chunks]

    def search(
        self,
        collection: str,
        req: SearchRequest,
        *,
        embedder: Embedder | None = None,
        reranker: Reranker | None = None,
    ) -> SearchResult:
        """Run ``req`` on ``collection``.

        ``embedder`` / ``reranker`` override the searcher's own (e.g. the service's served
        models for the collection's embedder); one of each must be available for the modes
        that need it.
        """
        started = time.perf_counter()
        node = self._check(req)
        embedder = embedder or self.embedder
        reranker = reranker or self.reranker
        if req.mode != "lexical" and embedder is None:
            raise InvalidInput(f"{req.mode} search needs an embedder, and none is configured")
        if req.rerank and reranker is None:
            raise InvalidInput("reranking was requested but no reranker is configured")
        timings = dict.fromkeys(STAGES, 0.0)
        # Enough candidates for the page, the reranker and collapsing chunks into documents.
        # One leg's ranking is a prefix of a deeper one, so its depth follows the page; a fused
        # ranking depends on its legs' depth (normalisation, who is missing from a leg), so its
        # depth ignores ``offset``: every page of a query is a slice of the same fused list.
        need = max(req.top_k, req.rerank_top_n if req.rerank else 0)
        # (+1: one more than the page shows whether another page follows.)
        single = max(need, req.offset + req.top_k + 1)
        if req.collapse:
            need = min(need * 3, self.max_candidates)
            single = min(single * 3, max(self.max_candidates, single))
        legs: list[tuple[str, Sequence[ChunkRef]]] = []
        depth: dict[str, int] = {}
        if req.mode in ("dense", "hybrid") and embedder is not None:
            t = time.perf_counter()
            instruction = req.mode == "dense" or self.hybrid_instruction
            vector = embedder.embed_queries([req.query], instruction=instruction)[0]
            timings["embed"] = _ms(t)
            t = time.perf_counter()
            count = single if req.mode == "dense" else max(need, _side(req, req.dense_candidates))

            def dense(k: int) -> list[ChunkRef]:
                return self.store.dense_refs(collection, vector, k, node)

            refs = _whole_ties(dense, count) if req.mode == "dense" else dense(count)
            legs.append(("dense", refs))
            depth["dense"] = max(count, len(refs))
            timings["dense"] = _ms(t)
        if req.mode in ("lexical", "hybrid"):
            t = time.perf_counter()
            count = (
                single if req.mode == "lexical" else max(need, _side(req, req.lexical_candidates))
            )

            def lexical(k: int) -> list[ChunkRef]:
                return self.store.lexical_refs(collection, req.query, k, node)

            refs = _whole_ties(lexical, count) if req.mode == "lexical" else lexical(count)
            legs.append(("lexical", refs))
            depth["lexical"] = max(count, len(refs))
            timings["lexical"] = _ms(t)

        t = time.perf_counter()
        weights: Mapping[str, float] = {}
        fusion_info: dict[str, Any] | None = None
        if req.mode == "hybrid":
            spec = req.fusion or self.fusion
            fused = fuse(legs, spec, query=req.query)
            candidates, weights = fused.candidates, fused.weights
            fusion_info = {
                "method": spec.method,
                "k": spec.k,
                "adaptive": spec.weights is None,
                "weights": {n: round(w, 4) for n, w in weights.items()},
            }
        else:
            name, only = legs[0]
            candidates = [_Candidate(h, h.score, {name: h.score}) for h in only]
        if req.collapse:
            candidates = collapse_documents(candidates)
        timings["fuse"] = _ms(t)
        ranks: dict[str, dict[Hashable, int]] = {}
        if req.explain:
            ranks = {name: _first_ranks(hits) for name, hits in legs}
            if req.mode == "hybrid":
                ranks["fused"] = {c.chunk.key: i for i, c in enumerate(candidates, start=1)}

        # Texts and metadata are read only for the chunks that need them: the reranked head and
        # the returned page (not the hundreds of candidates fusion looked at).
        chunks: dict[str, ScoredChunk] = {}
        rerank_info: JSONDict | None = None
        if req.rerank and reranker is not None and candidates:
            if req.cancelled is not None and req.cancelled():
                raise ClientGone("the client left before its search was reranked")
            t = time.perf_counter()
            candidates = (
                self._present(collection, candidates[: req.rerank_top_n], chunks)
                + (candidates[req.rerank_top_n :])
            )
            head = candidates[: req.rerank_top_n]
            passages = [chunks[c.chunk.chunk_id].text[: req.rerank_max_chars] for c in head]
            pairs = [(req.query, p) for p in passages]
            logits = [float(x) for x in reranker.score_pairs(pairs)]
            signals = head_signals(req.mode, weights, req.rerank_retrieval_weight)
            if req.explain:
                by_logit = _ranks(logits)
                ranks["rerank"] = {c.chunk.key: int(r) for c, r in zip(head, by_logit, strict=True)}
                rerank_info = {
                    "top_n": len(head),
                    "k": req.rerank_rrf_k,
                    "weights": {n: round(w, 4) for n, w in signals.items()}
                    | {"rerank": req.rerank_weight},
                }
            candidates = rerank_fuse(
                candidates, logits, signals=signals, rerank_weight=req.rerank_weight,
                k=req.rerank_rrf_k,
            )  # fmt: skip
            timings["rerank"] = _ms(t)

        end = req.offset + req.top_k
        page = self._present(collection, candidates[req.offset : end], chunks)
        stored = [chunks[c.chunk.chunk_id] for c in page]
        highlights: list[list[JSONDict] | None] = [None] * len(page)
        if req.highlight is not None:
            t = time.perf_counter()
            terms = query_terms(req.query)
            highlights = [highlight(sc.text, terms, req.highlight) for sc in stored]
            timings["highlight"] = _ms(t)
        contexts: list[JSONDict | None] = [None] * len(page)
        if req.expand is not None and page:
            t = time.perf_counter()
            spec_e = req.expand
            windows = self.store.chunk_windows(
                collection,
                [(c.chunk.document_id, *spec_e.window(c.chunk.chunk_index)) for c in page],
            )
            contexts = [
                expand(c.chunk.chunk_index, sc.text, w, spec_e)
                for c, sc, w in zip(page, stored, windows, strict=True)
            ]
            timings["expand"] = _ms(t)
        hits = [
            SearchHit(
                document_id=c.chunk.document_id,
                chunk_id=c.chunk.chunk_id,
                chunk_index=c.chunk.chunk_index,
                text=sc.text,
                score=float(c.score),
                rank=rank,
                metadata=sc.metadata,
                chunk_metadata=sc.chunk_metadata,
                scores=dict(c.scores),
                explain=_explain_hit(c, ranks) if req.explain else None,
                highlights=hl,
                context=ctx,
            )
            for rank, c, sc, hl, ctx in zip(
                itertools.count(req.offset + 1), page, stored, highlights, contexts
            )
        ]
        explain: JSONDict | None = None
        if req.explain:
            explain = {
                "mode": req.mode,
                "legs": {n: {"depth": depth[n], "returned": len(h)} for n, h in legs},
                "fusion": fusion_info,
                "collapse": req.collapse,
                "rerank": rerank_info,
            }
        timings["total"] = _ms(started)
        return SearchResult(
            tuple(hits),
            timings,
            req.mode,
            reranked=req.rerank,
            fusion=fusion_info,
            next_offset=end if len(candidates) > end else None,
            explain=explain,
        )


def _whole_ties(fetch: Callable[[int], list[ChunkRef]], want: int) -> list[ChunkRef]:
    """At least ``want`` of one leg's best (all if fewer exist), best first, none of them from
    a tied group cut short by the store's ``k``.

    Which chunks of a tied group a store returns at its cut-off is its own business; without
    this, a page could differ between a search that asks for it alone and one that asks for
    more (pagination). One extra chunk is asked for, so without a tie at the cut-off it costs
    one store call, as before."""
    k = min(want + 1, MAX_K)
    while True:
        refs = fetch(k)
        if len(refs) < k or k >= MAX_K:
            break
        last = refs[-1].score
        kept = [r for r in refs if r.score != last]
        if len(kept) >= want:
            refs = kept
            break
        k = min(k * 4, MAX_K)
    return sorted(refs, key=lambda r: -r.score)  # stable: ties keep the store's order


def _first_ranks(hits: Sequence[ChunkRef]) -> dict[Hashable, int]:
    """Each chunk's rank (from 1) in one leg's list; a chunk listed twice keeps its first."""
    out: dict[Hashable, int] = {}
    for rank, hit in enumerate(hits, start=1):
        out.setdefault(hit.key, rank)
    return out


def _explain_hit(c: _Candidate, ranks: Mapping[str, Mapping[Hashable, int]]) -> JSONDict:
    out: JSONDict = {}
    for name, by_key in ranks.items():
        rank = by_key.get(c.chunk.key)
        if rank is None or name not in c.scores:
            continue
        value = "logit" if name == "rerank" else "score"
        out[name] = {"rank": rank, value: float(c.scores[name])}
    return out


def _int_in(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidInput(f"{name} must be an integer between {lo} and {hi}, got {value!r}")


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 3)
