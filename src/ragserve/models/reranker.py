"""Cross-encoder rerankers: the protocol and the ONNX implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragserve.models.cache import CachedModel
from ragserve.models.embedder import CHARS_PER_TOKEN_KEPT, Batching, check_text, pad_batch
from ragserve.models.runtime import SessionConfig, build_session, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Scores = npt.NDArray[np.float32]

_STOPWORD_TEXT = (
    "a an and are as at be been but by can do does for from had has have how if in into is it "
    "its may no not of on or than that the their there these this those to was were what when "
    "which who why will with"
)
#: Query words that say nothing about which part of a passage matches.
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def passage_windows(
    tokenizer: Tokenizer, query: str, passages: Sequence[str], max_length: int, stride: int = 32
) -> list[str]:
    """Each passage cut to the window of tokens that fits next to ``query`` in ``max_length``
    and holds the most query tokens (its head on a tie, and when the passage fits whole).

    A cross-encoder truncates a long pair at the end, so it only sees a passage's head; a
    passage that answers the query in its second half then ranks low. Windows start every
    ``stride`` tokens; a window's score is how many of its tokens are query word pieces (stop
    words, punctuation and single characters left out), plus half a point for the head.
    """
    query_enc = tokenizer.encode(query, add_special_tokens=False)
    budget = max_length - len(query_enc.ids) - 3  # [CLS] query [SEP] passage [SEP]
    if budget < stride:
        return list(passages)
    wanted = np.array(
        sorted(
            {
                tid
                for tid, tok in zip(query_enc.ids, query_enc.tokens, strict=True)
                if len(word := tok.lstrip("#")) > 1 and word.isalnum() and word not in STOPWORDS
            }
            or {-1}
        )
    )
    out = []
    for text, enc in zip(
        passages, tokenizer.encode_batch(list(passages), add_special_tokens=False), strict=True
    ):
        n = len(enc.ids)
        if n <= budget:
            out.append(text)
            continue
        starts = np.unique(np.r_[np.arange(0, n - budget + 1, stride), n - budget])
        hits = np.r_[0, np.cumsum(np.isin(np.asarray(enc.ids), wanted))]
        score = (hits[starts + budget] - hits[starts]).astype(np.float64)
        score[0] += 0.5
        first = int(starts[int(np.argmax(score))])
        offsets = enc.offsets
        out.append(text[offsets[first][0] : offsets[first + budget - 1][1]])
    return out


def sigmoid(logits: Scores) -> Scores:
    """Logits to 0..1, without overflow for large magnitudes (tanh form)."""
    x = np.asarray(logits, dtype=np.float64)
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * x)), dtype=np.float32)


@runtime_checkable
class Reranker(Protocol):
    """Scores (query, passage) pairs; higher is more relevant.

    Implementations: :class:`OnnxReranker`, the served wrapper from
    :class:`~ragserve.models.manager.ModelManager` (batched, cached), fakes in tests.
    """

    @property
    def name(self) -> str: ...

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        """Raw logits, one per pair, in the order given; the pairs may come from different
        queries. ``sigmoid`` maps them to 0..1."""
        ...


class OnnxReranker:
    """A BERT-style cross-encoder that emits one logit per pair.

    Pairs are truncated longest-first to ``max_length`` tokens (query + passage + specials);
    with ``window`` a passage too long for that is first cut to its best-matching window
    (:func:`passage_windows`) rather than to its head.
    """

    def __init__(
        self,
        model: CachedModel,
        session_config: SessionConfig | None = None,
        *,
        max_length: int = 256,
        batching: Batching | None = None,
        window: bool = False,
    ) -> None:
        self.spec = model.spec
        self.max_length = min(max_length, self.spec.max_length)
        config = replace(session_config or SessionConfig(), memory_pattern=False)
        self._session = build_session(model.onnx_path, config)
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._output = self._session.get_outputs()[0].name
        self._tokenizer = load_tokenizer(model.tokenizer_path)
        self._tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self.batching = batching or Batching(batch_tokens=1024, max_batch_size=64)
        self.window = window
        self._window_tokenizer = load_tokenizer(model.tokenizer_path)  # no truncation

    @property
    def name(self) -> str:
        return self.spec.name

    def score(self, query: str, passages: Sequence[str]) -> Scores:
        """Logits of ``passages`` for one query."""
        return self.score_pairs([(query, p) for p in passages])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> Scores:
        """Logits for (query, passage) pairs that may come from different queries (batching)."""
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        keep = self.max_length * CHARS_PER_TOKEN_KEPT  # what a pair can show the model at most
        checked = [
            (check_text(q, "query")[:keep], check_text(p, "passage")[:keep]) for q, p in pairs
        ]
        if self.window:
            checked = self._windows(checked)
        encodings = self._tokenizer.encode_batch(checked, add_special_tokens=True)
        out = np.empty(len(pairs), dtype=np.float32)
        for batch in self.batching.plan(
            [len(e.ids) for e in encodings], [e.ids for e in encodings]
        ):
            ids, mask, types = pad_batch([encodings[i] for i in batch], self._pad_id)
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._inputs:
                feeds["token_type_ids"] = types
            (logits,) = self._session.run([self._output], feeds)
            out[batch] = np.asarray(logits, dtype=np.float32).reshape(len(batch), -1)[:, 0]
        return out

    def _windows(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """:func:`passage_windows` per query (pairs of one query are cut in one call)."""
        by_query: dict[str, list[int]] = {}
        for i, (q, _) in enumerate(pairs):
            by_query.setdefault(q, []).append(i)
        out = list(pairs)
        for q, rows in by_query.items():
            cut = passage_windows(
                self._window_tokenizer, q, [pairs[i][1] for i in rows], self.max_length
            )
            for i, text in zip(rows, cut, strict=True):
                out[i] = (q, text)
        return out
