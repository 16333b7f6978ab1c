"""Text embedders: the protocol every seam uses, and the ONNX implementation.

Inference runs in three stages so a batcher can overlap them: ``tokenize`` (Rust tokenizers, GIL
released), ``run`` (ONNX Runtime, GIL released) on length-sorted, dynamically padded batches under a
token budget, and ``pool`` (CLS or masked mean, then L2 normalization).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragserve.errors import InvalidInput
from ragserve.models.cache import CachedModel
from ragserve.models.catalog import ModelSpec, Pooling
from ragserve.models.runtime import SessionConfig, build_session, load_tokenizer

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

Vectors = npt.NDArray[np.float32]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit vectors of a fixed dimension.

    Implementations: :class:`OnnxEmbedder` (a local model), the served wrapper every caller gets
    from :class:`~ragserve.models.manager.ModelManager` (batched, cached), fakes in tests.
    """

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> Vectors: ...

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        """Query embeddings. ``instruction=False`` leaves out the query prefix where the model's
        spec marks it optional; every other embedder ignores it."""
        ...

    def token_spans(self, text: str) -> Sequence[tuple[int, int]] | npt.NDArray[np.integer]:
        """Character offsets of every token of ``text`` (no special tokens, no truncation):
        pairs, or an ``(n, 2)`` integer array (what :class:`OnnxEmbedder` returns)."""
        ...


TokenSpans = Sequence[tuple[int, int]] | npt.NDArray[np.integer]


def token_spans_many(embedder: Embedder, texts: Sequence[str]) -> list[TokenSpans]:
    """:meth:`Embedder.token_spans` of each text: in one call where the embedder has a batch
    form (``token_spans_many``: a remote embedder asks its model server once), else in turn."""
    many = getattr(embedder, "token_spans_many", None)
    if many is not None:
        return list(many(texts))
    return [embedder.token_spans(t) for t in texts]


def check_text(text: object, what: str = "text") -> str:
    """Refuse what is not valid Unicode text; everything else (empty, long) is accepted."""
    if not isinstance(text, str):
        raise InvalidInput(f"{what} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"{what} is not valid UTF-8 (it contains lone surrogates)") from None
    return text


def check_texts(texts: Sequence[object], what: str = "input") -> None:
    """:func:`check_text` on each text, naming the first bad one (``input[3]``): callers run it
    before the texts join a batch shared with other requests, so a bad text fails only its own
    request, never its batch-mates'."""
    for i, text in enumerate(texts):
        check_text(text, f"{what}[{i}]" if len(texts) > 1 else what)


#: Characters of a text kept for the model, per token of its ``max_length``: the model sees at
#: most ``max_length`` tokens and a token covers at least one character (in practice 4), so
#: cutting at 64 a token changes nothing but what a megabyte of text costs the tokenizer.
CHARS_PER_TOKEN_KEPT = 64


def text_prefix(spec: ModelSpec, *, query: bool, instruction: bool = True) -> str:
    """What goes before a text the model embeds: the document prefix, or the query prefix
    (left out when ``instruction`` is false and the spec marks it optional)."""
    if not query:
        return spec.document_prefix
    if instruction or not spec.query_prefix_optional:
        return spec.query_prefix
    return ""


@dataclass(frozen=True, slots=True)
class Batching:
    """Length-sorted batches of at most ``max_batch_size`` texts and ``batch_tokens`` tokens,
    padded to at most ``1 + max_padding`` times their real tokens.

    On CPU a batch saves little per text (18 % for 16 equal-length queries against one at a
    time, bge-small, one thread) and every padding token costs a real one, so texts of unequal
    length are not forced into one batch: 16 SciFact queries padded together cost 25 % more
    per query than one at a time.
    """

    batch_tokens: int = 1024
    max_batch_size: int = 64
    max_padding: float = 0.15

    def plan(
        self, lengths: Sequence[int], ties: Sequence[Sequence[int]] | None = None
    ) -> list[list[int]]:
        """Group indices into batches, longest first.

        ``ties`` (the token ids) breaks ties between equal lengths, so the same texts form the
        same batches whatever order they arrive in: int8 dynamic quantization scales activations
        per batch, so a vector depends (slightly) on its batch-mates.
        """
        order = sorted(
            range(len(lengths)),
            key=lambda i: (lengths[i], tuple(ties[i]) if ties is not None else ()),
            reverse=True,
        )
        batches: list[list[int]] = []
        current: list[int] = []
        width = real = 0
        for i in order:
            w = max(width, lengths[i])
            padded = w * (len(current) + 1)
            if current and (
                len(current) >= self.max_batch_size
                or padded > self.batch_tokens
                or padded > (1 + self.max_padding) * (real + lengths[i])
            ):
                batches.append(current)
                current, w, real = [], lengths[i], 0
            current.append(i)
            width = w
            real += lengths[i]
        if current:
            batches.append(current)
        return batches


def pad_batch(
    encodings: Sequence[Encoding], pad_id: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Pad to the longest encoding of this batch (dynamic padding)."""
    width = max(len(e.ids) for e in encodings)
    ids = np.full((len(encodings), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(encodings), width), dtype=np.int64)
    types = np.zeros((len(encodings), width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = enc.ids
        mask[row, :n] = 1
        types[row, :n] = enc.type_ids
    return ids, mask, types


def pool(
    hidden: Vectors, mask: npt.NDArray[np.int64], pooling: Pooling, *, normalize: bool = True
) -> Vectors:
    """CLS or masked-mean pooling of ``hidden`` (batch x tokens x dim), then L2 normalization.

    A 2-d ``hidden`` is taken as already pooled by the model.
    """
    if hidden.ndim == 2:
        pooled = hidden
    elif pooling is Pooling.CLS:
        pooled = hidden[:, 0, :]
    else:
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    if normalize:
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        pooled = pooled / np.maximum(norms, 1e-12)
    return np.ascontiguousarray(pooled, dtype=np.float32)


class OnnxEmbedder:
    """An ONNX encoder model with its tokenizer, pooling and prefixes from the catalog spec."""

    def __init__(
        self,
        model: CachedModel,
        session_config: SessionConfig | None = None,
        batching: Batching | None = None,
        *,
        parallel_runs: int = 1,
    ) -> None:
        spec = model.spec
        self.spec = spec
        self._session = build_session(model.onnx_path, session_config or SessionConfig())
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._output = self._session.get_outputs()[0].name
        self._tokenizer = load_tokenizer(model.tokenizer_path)
        self._spans_tokenizer: Tokenizer = load_tokenizer(model.tokenizer_path)
        self._tokenizer.enable_truncation(spec.max_length)
        self._pad_id = self._tokenizer.token_to_id("[PAD]") or 0
        self.batching = batching or Batching()
        #: Batches of one ``embed_documents`` call run this many at a time (one session is
        #: safe to run from several threads; give it ``threads=1`` and each run uses one core).
        self.parallel_runs = max(1, parallel_runs)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def dimension(self) -> int:
        return self.spec.dimension

    # ------------------------------------------------------------------ stages

    def tokenize(
        self, texts: Sequence[str], *, query: bool, instruction: bool = True
    ) -> list[Encoding]:
        """``instruction=False``: leave out a query prefix the spec marks optional."""
        prefix = text_prefix(self.spec, query=query, instruction=instruction)
        keep = self.spec.max_length * CHARS_PER_TOKEN_KEPT
        checked = [prefix + check_text(t)[:keep] for t in texts]
        return list(self._tokenizer.encode_batch(checked, add_special_tokens=True))

    def run(self, encodings: Sequence[Encoding]) -> Vectors:
        """Run one padded batch and pool it."""
        ids, mask, types = pad_batch(encodings, self._pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
        (hidden,) = self._session.run([self._output], feeds)
        return self.pool(np.asarray(hidden, dtype=np.float32), mask)

    def pool(self, hidden: Vectors, mask: npt.NDArray[np.int64]) -> Vectors:
        return pool(hidden, mask, self.spec.pooling, normalize=self.spec.normalize)

    # ------------------------------------------------------------------ API

    def embed(
        self,
        texts: Sequence[str],
        *,
        query: bool,
        parallel: bool = False,
        instruction: bool = True,
    ) -> Vectors:
        """Embed ``texts``; ``parallel``: run its batches ``parallel_runs`` at a time."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        encodings = self.tokenize(texts, query=query, instruction=instruction)
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        batches = self.batching.plan([len(e.ids) for e in encodings], [e.ids for e in encodings])
        runs = [[encodings[i] for i in batch] for batch in batches]
        if parallel and self.parallel_runs > 1 and len(batches) > 1:
            results = list(self._executor().map(self.run, runs))
        else:
            results = [self.run(run) for run in runs]
        for batch, vectors in zip(batches, results, strict=True):
            out[batch] = vectors
        return out

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.parallel_runs, thread_name_prefix=f"embed-{self.name}"
                )
            return self._pool

    def embed_documents(self, texts: Sequence[str]) -> Vectors:
        return self.embed(texts, query=False, parallel=True)

    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> Vectors:
        """``instruction=False``: without the query prefix if the spec marks it optional."""
        return self.embed(texts, query=True, instruction=instruction)

    def token_spans(self, text: str) -> npt.NDArray[np.int64]:
        """Offsets as an ``(n, 2)`` int64 array, 16 bytes a token.

        The text is tokenized in windows of about ``SPAN_WINDOW`` characters cut at whitespace
        (where the pre-tokenizer splits anyway, so the tokens are the same): one Encoding (ids,
        token strings, offsets...) and one Python tuple per token for a 10 MB text cost 3 GB.
        """
        return token_spans(self._spans_tokenizer, text)


#: Characters tokenized at a time by ``OnnxEmbedder.token_spans``.
SPAN_WINDOW = 32 * 1024


def token_spans(tokenizer: Tokenizer, text: str) -> npt.NDArray[np.int64]:
    """Character offsets of every token of ``text`` with ``tokenizer`` (no special tokens, no
    truncation) as an ``(n, 2)`` int64 array; see :meth:`OnnxEmbedder.token_spans`."""
    check_text(text)
    if len(text) <= SPAN_WINDOW:  # most texts: one call, no batch to dispatch
        enc = tokenizer.encode(text, add_special_tokens=False)
        return np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
    windows = list(_windows(text, SPAN_WINDOW))
    parts: list[npt.NDArray[np.int64]] = []
    for group in range(0, len(windows), 16):
        batch = windows[group : group + 16]
        encodings = tokenizer.encode_batch([text[a:b] for a, b in batch], add_special_tokens=False)
        for (a, _), enc in zip(batch, encodings, strict=True):
            offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
            parts.append(offsets + a)
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)


def _windows(text: str, size: int) -> Iterator[tuple[int, int]]:
    """``(start, end)`` pieces of about ``size`` characters, each cut after a whitespace
    character when there is one in the piece's second half."""
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = max(text.rfind(c, start + size // 2, end) for c in (" ", "\n", "\t"))
            if cut > 0:
                end = cut + 1
        yield start, end
        start = end
