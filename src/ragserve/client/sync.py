"""The blocking client (:class:`Client`); :mod:`ragserve.client.aio` has the same methods
as coroutines."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import httpx

from ragserve.api import schemas as s
from ragserve.client import _routes as r
from ragserve.client._core import (
    DEFAULT_TIMEOUT,
    Call,
    ProgressCallback,
    RetryPolicy,
    batches,
    drop_none,
    expand_paths,
    headers_for,
    model,
    tracker_for,
    upload_call,
)

if TYPE_CHECKING:
    from ragserve.api.admin import Key, KeyCreated

T = TypeVar("T")
PathLike = str | os.PathLike[str]


class Client:
    """A ragserve server over HTTP: one method per route, the server's errors raised as the
    classes of :mod:`ragserve.errors` (``NotFound``, ``InvalidInput``, ``Overloaded``, ...).

    >>> with Client("http://127.0.0.1:8000", api_key="...") as rs:   # doctest: +SKIP
    ...     rs.create_collection("docs")
    ...     rs.upload("docs", "handbook/", progress=print)
    ...     hits = rs.search("docs", "how do I reset my password?", top_k=5).results

    429 (too much work in flight) and 503 (not ready yet) are retried as ``retry`` says
    (:class:`RetryPolicy`: up to 3 times, waiting what ``Retry-After`` asks)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = http or httpx.Client(
            base_url=base_url, headers=headers_for(api_key), timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying as the policy allows; its answer, or the server's error."""
        attempt = 0
        while True:
            try:
                response = self._http.send(call.request(self._http))
            finally:
                if call.cleanup is not None:
                    call.cleanup()
            wait = self.retry.wait_before_retry(attempt, response) if call.retry else None
            if wait is None:
                return call.result(response)
            time.sleep(wait)
            attempt += 1

    # ---------------------------------------------------------------------------- health

    def health(self) -> s.Health:
        """``GET /healthz``: the process answers."""
        return self.send(r.health())

    def ready(self) -> s.Readiness:
        """``GET /readyz``: ready (``status == "ready"``), or not yet and why."""
        return self.send(r.ready())

    # ---------------------------------------------------------------------------- collections

    def create_collection(
        self,
        name: str,
        embedder: str | None = None,
        *,
        fusion: Mapping[str, Any] | None = None,
    ) -> s.Collection:
        """Create a collection (idempotent for the same embedder; another embedder: Conflict);
        ``fusion``: its default fusion, e.g. ``{"method": "minmax", "weights": "auto"}``."""
        return self.send(r.create_collection(name, embedder, fusion))

    def update_collection(self, name: str, *, fusion: Mapping[str, Any] | None) -> s.Collection:
        """Set (keys left out: the server's default) or clear (None) the default fusion."""
        return self.send(r.update_collection(name, fusion))

    def list_collections(self) -> list[s.Collection]:
        return self.send(r.list_collections())

    def get_collection(self, name: str) -> s.Collection:
        return self.send(r.get_collection(name))

    def delete_collection(self, name: str) -> None:
        return self.send(r.delete_collection(name))

    # ---------------------------------------------------------------------------- documents

    def add_documents(self, collection: str, documents: Sequence[r.DocumentLike]) -> s.DocumentsOut:
        """Add or update documents: ``{"id"?, "text", "title"?, "metadata"?}`` each."""
        return self.send(r.add_documents(collection, documents))

    def upload(
        self,
        collection: str,
        *paths: PathLike,
        pattern: str = "**/*",
        progress: ProgressCallback | None = None,
        batch_files: int = 32,
        batch_bytes: int = 8 * 1024 * 1024,
    ) -> s.DocumentsOut:
        """Upload files, and the files under folders (``pattern``), streamed from disk in
        requests of at most ``batch_files`` files / ``batch_bytes`` bytes (keep them under the
        server's ``max_documents_per_request`` and ``max_body_bytes``). ``progress`` is called
        with a :class:`~ragserve.client.Progress` as bytes go out and as each request ends."""
        files = expand_paths(paths, pattern)
        tracker = tracker_for(files, progress)
        results: list[s.DocumentResult] = []
        for batch in batches(files, batch_files, batch_bytes):
            call = upload_call(collection, batch, tracker, model(s.DocumentsOut))
            results += self.send(call).results
            tracker.finished(len(batch), batch[-1].name)
        return s.DocumentsOut(results=results)

    def get_document(self, collection: str, document_id: str) -> s.DocumentOut:
        return self.send(r.get_document(collection, document_id))

    def delete_document(self, collection: str, document_id: str) -> None:
        return self.send(r.delete_document(collection, document_id))

    # ---------------------------------------------------------------------------- search

    def search(
        self,
        collection: str,
        query: str,
        *,
        top_k: int | None = None,
        mode: r.Mode | None = None,
        rerank: bool | None = None,
        rerank_top_n: int | None = None,
        filter: Mapping[str, Any] | None = None,
        collapse: bool | None = None,
        fusion: Mapping[str, Any] | None = None,
        explain: bool | None = None,
        highlight: bool | Mapping[str, Any] | None = None,
        expand: Mapping[str, Any] | None = None,
        offset: int | None = None,
        **extra: Any,
    ) -> s.SearchOut:
        """Search a collection; options left ``None`` take the server's defaults
        (docs/search-api.md: ``explain`` per-leg scores, ``highlight`` passages, ``expand``
        neighbours, ``offset`` pages). ``extra`` goes into the request body as is."""
        return self.send(
            r.search(
                collection,
                query,
                top_k=top_k,
                mode=mode,
                rerank=rerank,
                rerank_top_n=rerank_top_n,
                filter=filter,
                collapse=collapse,
                fusion=fusion,
                extra={
                    **drop_none(explain=explain, highlight=highlight, expand=expand, offset=offset),
                    **extra,
                },
            )
        )

    # ---------------------------------------------------------------------------- models

    def embeddings(
        self,
        input: str | Sequence[str],
        *,
        model: str | None = None,
        input_type: Literal["query", "document"] | None = None,
        dimensions: int | None = None,
        encoding_format: Literal["float", "base64"] | None = None,
    ) -> s.EmbeddingsOut:
        """``POST /v1/embeddings`` (OpenAI's shape)."""
        return self.send(
            r.embeddings(
                input,
                model_name=model,
                input_type=input_type,
                dimensions=dimensions,
                encoding_format=encoding_format,
            )
        )

    def tokenize(self, input: str | Sequence[str], *, model: str | None = None) -> s.TokenizeOut:
        """``POST /v1/tokenize``: each input's token offsets (base64 int32 pairs)."""
        return self.send(r.tokenize(input, model_name=model))

    def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        model: str | None = None,
        return_documents: bool | None = None,
    ) -> s.RerankOut:
        """``POST /v1/rerank`` (Cohere's shape)."""
        return self.send(
            r.rerank(
                query, documents, top_n=top_n, model_name=model, return_documents=return_documents
            )
        )

    # ---------------------------------------------------------------------------- ingest jobs

    def create_job(
        self,
        collection: str,
        documents: Sequence[r.DocumentLike] = (),
        *paths: PathLike,
        source: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Ingest in the background (202): JSON ``documents`` (with ``source``: a sync of that
        source), or files and folders (``paths``, one request, streamed). Returns the job
        (``id``, ``state``, counts); follow it with :meth:`get_job` or :meth:`wait_job`."""
        if not paths:
            return self.send(r.create_job(collection, documents, source))
        files = expand_paths(paths)
        call = upload_call(collection, files, tracker_for(files, progress), r.json_object, "jobs")
        return self.send(call)

    def list_jobs(self) -> list[dict[str, Any]]:
        """The latest jobs of the collections the key reaches, newest first."""
        return self.send(r.list_jobs())

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self.send(r.get_job(job_id))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop between two groups of documents (those stored stay)."""
        return self.send(r.cancel_job(job_id))

    def wait_job(self, job_id: str, poll: float = 0.5) -> dict[str, Any]:
        """The job once it has finished (succeeded, failed, cancelled or interrupted)."""
        while True:
            job = self.get_job(job_id)
            if job["state"] in r.JOB_DONE:
                return job
            time.sleep(poll)

    # ---------------------------------------------------------------------------- keys (admin)

    def create_key(
        self, name: str, role: r.Role = "read", collections: Sequence[str] | None = None
    ) -> KeyCreated:
        """Create a scoped key (admin); ``collections=None``: every collection. The answer's
        ``key`` is the secret, shown this once."""
        return self.send(r.create_key(name, role, collections))

    def list_keys(self) -> list[Key]:
        """Every scoped key, revoked ones too (never their secrets)."""
        return self.send(r.list_keys())

    def revoke_key(self, key_id: str) -> Key:
        return self.send(r.revoke_key(key_id))

    # ---------------------------------------------------------------------------- monitoring

    def stats(self) -> dict[str, Any]:
        """``GET /v1/stats``: latency percentiles, cache hit rates, memory, model load times."""
        return self.send(r.stats())

    def metrics(self) -> str:
        """``GET /metrics``: Prometheus text."""
        return self.send(r.metrics())
