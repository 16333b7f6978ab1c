"""Fusion of ranked candidate lists ("legs": dense, lexical) into one ranking.

Two families, one entry point (:func:`fuse`):

* ``rrf``: weighted reciprocal rank fusion, ``sum(w_leg / (k + rank_leg))``. A candidate a leg
  did not return gets nothing from that leg.
* ``minmax`` / ``zscore`` / ``dbsf``: a convex combination ``sum(w_leg * norm_leg(score))`` of
  each leg's scores normalised per query over the list that leg returned (min-max to [0, 1];
  z-score; distribution-based, ``(s - (mean - 3 sd)) / (6 sd)`` clipped to [0, 1]). A candidate
  a leg did not return scores that leg's *floor*: the normalised score of the last candidate
  the leg did return (it is at best as good as that one, and usually worse).

The default is ``minmax`` with equal weights. Normalising scores instead of ranks is what
makes it hold across collections: a leg whose scores barely separate its candidates (BM25 on a
paragraph-long query, a dense model off its domain) spreads them over [0, 1] by small steps
near the top, so between two strong candidates it moves the sum little and the other leg
decides; RRF gives every leg the same fixed steps per rank whatever its scores say. Measured:
equal-weight RRF is 3 points below dense alone on ArguAna, min-max 0.7 above it, and both are
above dense on SciFact (docs/store.md, "Fusion").

Weights are either given (``FusionSpec.weights``) or chosen per query without labels
(:func:`adaptive_weights`, ``weights=None``, ``"auto"`` over HTTP) from how peaked each leg's
score list is. The weights used are reported with the result (:class:`Fused`,
``SearchResult.fusion``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ragserve.errors import InvalidInput
from ragserve.store.base import ChunkRef

Method = Literal["rrf", "minmax", "zscore", "dbsf"]
METHODS: tuple[Method, ...] = ("rrf", "minmax", "zscore", "dbsf")
LEGS = ("dense", "lexical")


@dataclass(frozen=True, slots=True)
class FusionSpec:
    """How a hybrid search fuses its legs. ``weights=None``: chosen per query (adaptive)."""

    method: Method = "minmax"
    weights: Mapping[str, float] | None = field(
        default_factory=lambda: {"dense": 1.0, "lexical": 1.0}
    )
    #: RRF constant (``rrf`` only).
    k: int = 60

    def check(self) -> FusionSpec:
        if self.method not in METHODS:
            raise InvalidInput(
                f"unknown fusion method {self.method!r}; valid: {', '.join(METHODS)}"
            )
        if not isinstance(self.k, int) or isinstance(self.k, bool) or not 0 <= self.k <= 10_000:
            raise InvalidInput(f"fusion k must be an integer between 0 and 10000, got {self.k!r}")
        if self.weights is not None:
            unknown = set(self.weights) - set(LEGS)
            if unknown:
                raise InvalidInput(
                    f"unknown fusion weight {sorted(unknown)[0]!r}; valid: {', '.join(LEGS)}"
                )
            for name, w in self.weights.items():
                if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 1000:
                    raise InvalidInput(f"fusion weight {name!r} must be a number in [0, 1000]")
                if math.isnan(w):
                    raise InvalidInput(f"fusion weight {name!r} must be a number in [0, 1000]")
            if not any(self.weights.get(n, 0) > 0 for n in LEGS):
                raise InvalidInput("at least one fusion weight must be above 0")
        return self

    def as_dict(self) -> dict[str, object]:
        return {
            "method": self.method,
            "weights": dict(self.weights) if self.weights is not None else "auto",
            "k": self.k,
        }


def parse_fusion(
    value: Mapping[str, object] | FusionSpec | None, default: FusionSpec
) -> FusionSpec:
    """A :class:`FusionSpec` from a request's ``fusion`` mapping; missing keys from ``default``."""
    if value is None:
        return default
    if isinstance(value, FusionSpec):
        return value.check()
    unknown = set(value) - {"method", "weights", "k"}
    if unknown:
        raise InvalidInput(
            f"unknown fusion option {sorted(unknown)[0]!r}; valid: method, weights, k"
        )
    weights = value.get("weights", default.weights)
    if weights == "auto":
        weights = None
    if weights is not None and not isinstance(weights, Mapping):
        raise InvalidInput(
            'fusion weights must be an object like {"dense": 0.7, "lexical": 0.3} or "auto"'
        )
    return FusionSpec(
        method=value.get("method", default.method),  # type: ignore[arg-type]
        weights=dict(weights) if weights is not None else None,
        k=value.get("k", default.k),  # type: ignore[arg-type]
    ).check()


def parse_fusion_text(text: str) -> FusionSpec:
    """A :class:`FusionSpec` from ``METHOD[:auto|:dense=W,lexical=W,k=K]`` (no weights: equal),
    as the CLI takes it: ``rrf:k=60,dense=1,lexical=1``, ``minmax:dense=0.8,lexical=0.2``,
    ``minmax:auto``."""
    method, _, opts = text.strip().partition(":")
    if method not in METHODS:
        raise InvalidInput(
            f"unknown fusion {text!r}: a method ({', '.join(METHODS)}) with options, "
            "e.g. minmax:dense=0.8,lexical=0.2"
        )
    weights: dict[str, float] | None = {}
    k = 60
    for part in filter(None, (p.strip() for p in opts.split(","))):
        if part == "auto":
            weights = None
            continue
        key, eq, value = part.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not eq or number != number:
            raise InvalidInput(f"bad option {part!r} in {text!r}: expected name=number")
        if key == "k":
            k = int(number)
        elif weights is not None:
            weights[key] = number
    if weights == {}:
        weights = {"dense": 1.0, "lexical": 1.0}
    return FusionSpec(method, weights, k).check()


def settings_fusion(settings: Any) -> FusionSpec:
    """The default :class:`FusionSpec` of a :class:`~ragserve.config.Settings`."""
    weights = settings.fusion_weights
    return FusionSpec(settings.fusion_method, dict(weights) if weights else None, settings.fusion_k)


@dataclass(slots=True)
class Candidate:
    chunk: ChunkRef
    score: float = 0.0
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Fused:
    candidates: list[Candidate]
    #: The weight each leg got (given or adaptive), for ``explain`` and the rerank head.
    weights: Mapping[str, float]


# ---------------------------------------------------------------- adaptive weights

_TOKEN = re.compile(r"\w+", re.UNICODE)

#: How much of a leg's score list its peakedness is read from (the candidates fusion sees).
PEAK_DEPTH = 50
#: Bounds on one leg's peakedness: a flat list still counts a little, an outlier not without end.
PEAK_MIN, PEAK_MAX = 0.5, 10.0


def query_tokens(query: str) -> int:
    return len(_TOKEN.findall(query))


def peakedness(scores: Sequence[float]) -> float:
    """How far a leg's best score stands above the rest of its list, in standard deviations
    (``(s_1 - mean) / sd`` over the first :data:`PEAK_DEPTH` scores), clipped to
    [:data:`PEAK_MIN`, :data:`PEAK_MAX`]. A list with fewer than two distinct scores: PEAK_MIN."""
    s = np.asarray(scores[:PEAK_DEPTH], dtype=np.float64)
    if s.size < 2:
        return PEAK_MIN
    sd = float(s.std())
    if sd <= 1e-12:
        return PEAK_MIN
    return float(np.clip((s.max() - s.mean()) / sd, PEAK_MIN, PEAK_MAX))


def adaptive_weights(legs: Mapping[str, Sequence[float]], tokens: int = 0) -> dict[str, float]:
    """Each leg's weight for one query, without labels (``weights: "auto"``), summing to 1.

    A leg's weight is proportional to its :func:`peakedness`: a leg whose best candidates stand
    out from the rest of its list has found something specific, one whose scores fall off
    gently has not (the query-performance-prediction signal behind NQC/WIG). Only the legs'
    own score lists are used, so nothing depends on the collection or on labels. ``tokens``
    (the query's length) is accepted for callers that pass it but not used: down-weighting
    BM25 on long queries was measured and lost on both data sets (docs/store.md).
    An empty leg gets weight 0.
    """
    raw = {name: peakedness(scores) if len(scores) else 0.0 for name, scores in legs.items()}
    total = sum(raw.values())
    if total <= 0:
        return {name: 1.0 / max(len(legs), 1) for name in legs}
    return {name: w / total for name, w in raw.items()}


# ---------------------------------------------------------------- fusion


def _normalise(
    scores: npt.NDArray[np.float64], method: Method
) -> tuple[npt.NDArray[np.float64], float]:
    """(normalised scores, the floor a missing candidate gets) for one leg of one query.

    A leg whose scores are all equal (one hit, or ties) cannot be spread: what it returned gets
    the top of the scale (min-max, DBSF: 1; z-score: 0) and what it did not return the bottom
    (0; z-score: -1), so it still counts for the candidates it found.
    """
    if scores.size == 0:
        return scores, 0.0
    lo, hi = float(scores.min()), float(scores.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        if method == "zscore":
            return np.zeros_like(scores), -1.0
        return np.ones_like(scores), 0.0
    if method == "minmax":
        norm = (scores - lo) / (hi - lo)
    else:
        mean, sd = float(scores.mean()), float(scores.std())
        if method == "zscore":
            norm = (scores - mean) / sd
        else:  # dbsf
            norm = np.clip((scores - (mean - 3 * sd)) / (6 * sd), 0.0, 1.0)
    return norm, float(norm.min())


def fuse(
    legs: Sequence[tuple[str, Sequence[ChunkRef]]],
    spec: FusionSpec,
    *,
    query: str = "",
) -> Fused:
    """Fuse ``legs`` ((name, hits best first)) into one ranking, best first.

    Each candidate keeps every leg's own score under the leg's name and the fused score under
    ``"fused"``. Ties are broken by chunk id, so results are deterministic.
    """
    if spec.weights is not None:
        weights = {name: float(spec.weights.get(name, 0.0)) for name, _ in legs}
    else:
        weights = adaptive_weights(
            {name: [h.score for h in hits] for name, hits in legs}, query_tokens(query)
        )
    pool: dict[Hashable, Candidate] = {}
    for name, hits in legs:
        for hit in hits:
            cand = pool.get(hit.key)
            if cand is None:
                cand = pool[hit.key] = Candidate(hit)
            # A chunk listed twice by one leg keeps its best (first) score.
            cand.scores.setdefault(name, hit.score)
    if spec.method == "rrf":
        for name, hits in legs:
            w = weights.get(name, 0.0)
            seen: set[Hashable] = set()
            for rank, hit in enumerate(hits, start=1):
                if hit.key not in seen:
                    seen.add(hit.key)
                    pool[hit.key].score += w / (spec.k + rank)
    else:
        for name, hits in legs:
            w = weights.get(name, 0.0)
            if w == 0 or not hits:
                continue
            norm, floor = _normalise(
                np.array([h.score for h in hits], dtype=np.float64), spec.method
            )
            got: dict[Hashable, float] = {}
            for hit, value in zip(hits, norm.tolist(), strict=True):
                got.setdefault(hit.key, value)
            for key, cand in pool.items():
                cand.score += w * got.get(key, floor)
    fused = sorted(pool.values(), key=lambda c: (-c.score, c.chunk.chunk_id))
    for cand in fused:
        cand.scores["fused"] = cand.score
    return Fused(fused, weights)
