"""Cross-encoder rerankers: the protocol and the ONNX implementation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragserve.models.cache import CachedModel
from ragserve.models.embedder import CHARS_PER_TOKEN_KEPT, Batching, check_text, pad_batch
from ragserve.models.runtime import SessionConfig, build_session, load_tokenizer

Scores = npt.NDArray[np.float32]


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

    Pairs are truncated longest-first to ``max_length`` tokens (query + passage + specials).
    """

    def __init__(
        self,
        model: CachedModel,
        session_config: SessionConfig | None = None,
        *,
        max_length: int = 256,
        batching: Batching | None = None,
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
