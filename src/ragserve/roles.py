"""What one ragserve process serves (``RAGSERVE_ROLE`` / ``ragserve serve --role``).

* ``all``: the store and the models in one process (the default).
* ``api``: the store, ingest and search; models that have a URL
  (``RAGSERVE_EMBEDDER_URL``, ``RAGSERVE_RERANKER_URL``) run on that model server and are never
  loaded here (a ragserve model server also gives the tokens chunks are cut in; with TEI,
  Infinity or vLLM the embedder's tokenizer is loaded here for that).
* ``models``: only ``/v1/embeddings``, ``/v1/tokenize``, ``/v1/rerank``, health and metrics;
  it opens no store and no control database (no scoped keys, no jobs: the global
  ``RAGSERVE_API_KEYS`` guard it) and writes nothing, so any number of them can run beside the
  API replicas (or be replaced by TEI or Infinity).

At start-up an ``api`` process asks its model servers for one embedding and one score: a server
that answers with another dimension or another model name stops the start (the collections'
vectors would not match); one that does not answer yet is only logged, since lexical searches
work without it and the process recovers by itself when it comes (searches that need it answer
503 until then).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, cast

from ragserve.errors import ModelMismatch, ModelUnavailable, Unavailable
from ragserve.models.embedder import Embedder
from ragserve.models.reranker import Reranker
from ragserve.store.base import CollectionInfo, Store

log = logging.getLogger(__name__)

Role = Literal["all", "api", "models"]


class _NoStore:
    """The store of a ``--role models`` process: there is none."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def refuse(*args: object, **kwargs: object) -> Any:
            raise Unavailable(
                "this process serves models only (RAGSERVE_ROLE=models): it has no collections"
            )

        return refuse

    def write_problem(self) -> str | None:
        """Nothing is written here, so nothing stops this process being ready."""
        return None

    def close(self) -> None:
        pass


def no_store() -> Store:
    return cast(Store, _NoStore())


def has_store(role: Role) -> bool:
    return role != "models"


def check_remote_models(
    embedder: Embedder | None, reranker: Reranker | None, collections: list[CollectionInfo]
) -> None:
    """Start-up checks of the remote models against the model servers and the collections.

    Raises :class:`~ragserve.errors.ModelMismatch` when a server serves another model; a server
    that cannot be reached is logged and checked again by every call."""
    from ragserve.models.remote import RemoteEmbedder, RemoteReranker

    if isinstance(embedder, RemoteEmbedder):
        for info in collections:
            if info.embedder == embedder.name and info.dimension != embedder.dimension:
                raise ModelMismatch(
                    f"collection {info.name!r} holds {info.dimension}-d vectors of "
                    f"{info.embedder}; the catalog gives it {embedder.dimension}-d"
                )
            if info.embedder != embedder.name:
                log.warning(
                    "collection %r uses embedder %s, which %s does not serve: its dense and "
                    "hybrid searches and its ingest answer 503",
                    info.name,
                    info.embedder,
                    embedder.client.base_url,
                )
        _probe(embedder.check, f"embedder {embedder.name} at {embedder.client.base_url}")
    if isinstance(reranker, RemoteReranker):
        _probe(reranker.check, f"reranker {reranker.name} at {reranker.client.base_url}")


def _probe(check: Any, what: str) -> None:
    try:
        check()
    except ModelMismatch:
        raise
    except ModelUnavailable as exc:
        log.warning("%s is not answering yet (searches that need it answer 503): %s", what, exc)
    else:
        log.info("%s answers", what)
