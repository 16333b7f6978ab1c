"""Copy collections between stores (``sqlite:PATH`` <-> ``postgres:DSN``) without re-embedding.

Each collection is created in the target with the same embedder and dimension, then every
document is copied with its title, metadata, content hash, chunks (text, offsets, metadata)
and vectors, read through :meth:`Store.export_documents` and written with the ordinary
``upsert_document`` (so each document lands all or nothing). A document whose content hash is
already in the target is skipped, so an interrupted migration can simply be run again. At the
end the document and chunk counts of source and target must agree, else
:class:`MigrationMismatch` is raised. Created/updated times are those of the copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ragserve.errors import RagserveError
from ragserve.store.base import Store, open_endpoint
from ragserve.types import Document

__all__ = ["MigrationMismatch", "migrate", "migrate_collection", "open_endpoint"]

#: Called after each document: (collection, documents done, documents in the collection).
Progress = Callable[[str, int, int], None]


class MigrationMismatch(RagserveError):
    """The target's counts differ from the source's after a copy."""


@dataclass(frozen=True, slots=True)
class CollectionReport:
    name: str
    documents: int
    chunks: int
    copied: int
    skipped: int


def migrate_collection(
    source: Store, target: Store, name: str, progress: Progress | None = None
) -> CollectionReport:
    info = source.get_collection(name)
    target.create_collection(name, info.embedder, info.dimension)
    copied = skipped = 0
    for done, (stored, vectors) in enumerate(source.export_documents(name), start=1):
        if target.get_document_hash(name, stored.id) == stored.content_hash:
            skipped += 1
        else:
            doc = Document(id=stored.id, text="", title=stored.title, metadata=stored.metadata)
            target.upsert_document(name, doc, stored.content_hash, stored.chunks, vectors)
            copied += 1
        if progress is not None:
            progress(name, done, info.documents)
    src, dst = source.get_collection(name), target.get_collection(name)
    if (src.documents, src.chunks) != (dst.documents, dst.chunks):
        raise MigrationMismatch(
            f"collection {name!r}: source has {src.documents} documents / {src.chunks} chunks, "
            f"target {dst.documents} / {dst.chunks}"
        )
    return CollectionReport(name, dst.documents, dst.chunks, copied, skipped)


def migrate(
    source: Store,
    target: Store,
    collections: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[CollectionReport]:
    """Copy ``collections`` (default: all) from ``source`` to ``target`` and verify counts."""
    names = list(collections) if collections else [c.name for c in source.list_collections()]
    return [migrate_collection(source, target, name, progress) for name in names]
