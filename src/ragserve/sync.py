"""Keep a collection in step with a source: a folder, or a named set of documents.

A *source* owns the documents it put in a collection: each carries ``metadata["sync_source"]``
(the source's name; a folder's is its absolute path unless named) and, from a folder,
``metadata["sync_path"]`` (the file it came from, relative to the folder). A sync

1. ingests every document of the source as it is now: new ones are added, changed ones
   replaced, unchanged ones (same content hash) skipped without embedding;
2. then deletes the source's documents that are gone: from a folder, those of files that no
   longer exist or no longer hold them; from a named set, those not in the set.

Each document is replaced in one store transaction (:meth:`Store.upsert_document`), so a search
sees its old version or its new one, never both or neither. A file that fails to parse keeps
its documents as they were (a broken save is not a deletion). A renamed file is added under its
new id before the old id is deleted. Deletions come last, so a sync stopped part way (cancelled,
killed) has only added or replaced documents: the next sync finishes the job.

:func:`watch_folder` keeps a folder in sync as files change (``watchfiles``: inotify, FSEvents,
ReadDirectoryChangesW): changes are debounced into batches, and each batch re-syncs only the
paths it names, so a burst of edits is a few small syncs. Editors' temporary and backup files
(``.x.swp``, ``x~``, ``x.tmp``, ``.#x``) are not in the default include patterns, or are hidden.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ragserve.errors import DocumentNotFound, InvalidInput, RagserveError
from ragserve.ingest.limits import Limits
from ragserve.ingest.sources import (
    DEFAULT_EXCLUDE,
    IngestFailure,
    Item,
    default_include,
    iter_file,
    selected,
    walk_files,
)
from ragserve.service import IngestResult, RetrievalService
from ragserve.types import Document

log = logging.getLogger(__name__)

SOURCE_KEY = "sync_source"
PATH_KEY = "sync_path"


@dataclass
class SyncReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    failed: int = 0
    #: (document or file, error) of each failure.
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: False when the sync was stopped before its deletions.
    complete: bool = True

    def count(self, result: IngestResult) -> None:
        if result.status == "created":
            self.added += 1
        elif result.status == "updated":
            self.updated += 1
        elif result.status == "unchanged":
            self.unchanged += 1
        else:
            self.failed += 1
            self.failures.append((result.id, result.error or "failed"))

    def counts(self) -> dict[str, int]:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "deleted": self.deleted,
            "failed": self.failed,
        }


OnResult = Callable[[IngestResult], None]
Cancelled = Callable[[], bool]


def tagged(item: Item, source: str, path: str | None) -> Item:
    """``item`` marked as the source's (and the file's) document."""
    if isinstance(item, IngestFailure):
        return item
    metadata = {**item.metadata, SOURCE_KEY: source}
    if path is not None:
        metadata[PATH_KEY] = path
    return dataclasses.replace(item, metadata=metadata)


def _ingest(
    svc: RetrievalService,
    collection: str,
    items: Iterable[Item],
    report: SyncReport,
    on_result: OnResult | None,
    cancelled: Cancelled | None,
) -> bool:
    """Ingest ``items`` into ``report``; False if cancelled part way."""
    for result in svc.ingest_iter(collection, items):
        report.count(result)
        if on_result is not None:
            on_result(result)
        if cancelled is not None and cancelled():
            report.complete = False
            return False
    return True


def _delete(svc: RetrievalService, collection: str, ids: Iterable[str], report: SyncReport) -> None:
    for doc_id in sorted(ids):
        try:
            svc.delete_document(collection, doc_id)
        except DocumentNotFound:  # deleted by someone else meanwhile: gone all the same
            continue
        report.deleted += 1


def sync_documents(
    svc: RetrievalService,
    collection: str,
    source: str,
    items: Iterable[Item],
    *,
    on_result: OnResult | None = None,
    cancelled: Cancelled | None = None,
) -> SyncReport:
    """Make ``source``'s documents in ``collection`` exactly ``items`` (a named source's
    complete set). A document that fails keeps its stored version."""
    _check_source(source)
    before = {ref.id for ref in svc.store.list_documents(collection, {SOURCE_KEY: source})}
    seen: set[str] = set()

    def marked() -> Iterator[Item]:
        for item in items:
            if isinstance(item, Document):
                seen.add(item.id)
            yield tagged(item, source, None)

    report = SyncReport()
    if _ingest(svc, collection, marked(), report, on_result, cancelled):
        _delete(svc, collection, before - seen, report)
    return report


@dataclass(frozen=True)
class Folder:
    """A folder synced into a collection, and how its files are chosen and read."""

    root: Path
    source: str
    include: Sequence[str] = field(default_factory=default_include)
    exclude: Sequence[str] = DEFAULT_EXCLUDE
    max_bytes: int = 64 * 1024 * 1024
    limits: Limits | None = None

    @classmethod
    def of(cls, root: Path, source: str | None = None, **options: object) -> Folder:
        if not root.is_dir():
            raise InvalidInput(f"{root} is not a directory")
        return cls(root, source or root.resolve().as_posix(), **options)  # type: ignore[arg-type]

    def files(self) -> dict[str, Path]:
        return {rel: path for path, rel in walk_files(self.root, include=self.include,
                                                      exclude=self.exclude)}  # fmt: skip

    def chosen(self, rel: str) -> bool:
        return selected(rel, self.include, self.exclude)


def sync_folder(
    svc: RetrievalService,
    collection: str,
    folder: Folder,
    *,
    paths: Iterable[str] | None = None,
    on_result: OnResult | None = None,
    cancelled: Cancelled | None = None,
) -> SyncReport:
    """Sync ``folder`` into ``collection``: all of it, or only ``paths`` (relative to the
    folder; a directory stands for the files under it) after those changed."""
    _check_source(folder.source)
    stored: dict[str, set[str]] = {}
    for ref in svc.store.list_documents(collection, {SOURCE_KEY: folder.source}):
        stored.setdefault(str(ref.metadata.get(PATH_KEY, "")), set()).add(ref.id)
    if paths is None:
        files = folder.files()
        candidates = set(files) | set(stored)
    else:
        files, candidates = {}, set()
        for rel in paths:
            target = folder.root / rel
            if target.is_dir():  # moved in, or created with files already in it
                for path, sub in walk_files(target, include=("**",), exclude=()):
                    if folder.chosen(f"{rel}/{sub}"):
                        files[f"{rel}/{sub}"] = path
            elif target.is_file() and folder.chosen(rel):
                files[rel] = target
            candidates |= {rel} | {p for p in stored if p.startswith(rel + "/")}
        candidates |= set(files)
    produced: dict[str, set[str]] = {rel: set() for rel in files}
    broken: set[str] = set()

    def items() -> Iterator[Item]:
        for rel in sorted(files):
            for item in iter_file(files[rel], max_bytes=folder.max_bytes, doc_id=rel, source=rel,
                                  limits=folder.limits):  # fmt: skip
                if isinstance(item, Document):
                    produced[rel].add(item.id)
                else:
                    broken.add(rel)
                yield tagged(item, folder.source, rel)

    report = SyncReport()
    if not _ingest(svc, collection, items(), report, on_result, cancelled):
        return report
    gone: set[str] = set()
    for rel in candidates:
        if rel in broken:
            continue  # a file that fails to parse keeps its documents
        gone |= stored.get(rel, set()) - produced.get(rel, set())
    _delete(svc, collection, gone, report)
    return report


def _check_source(source: str) -> None:
    if not source or len(source) > 1024:
        raise InvalidInput("a sync source name must be 1-1024 characters")


def watch_folder(
    svc: RetrievalService,
    collection: str,
    folder: Folder,
    *,
    debounce_ms: int = 400,
    step_ms: int = 100,
    stop: threading.Event | None = None,
    on_report: Callable[[SyncReport], None] | None = None,
    on_result: OnResult | None = None,
) -> None:
    """Sync ``folder`` now, then again for each debounced batch of changes until ``stop``.

    A batch that fails (the store refused a write, say) is reported in the log and the
    watching goes on; its paths are synced again with the next full sync."""
    from watchfiles import watch

    root = folder.root.resolve()
    report = sync_folder(svc, collection, folder, on_result=on_result)
    if on_report is not None:
        on_report(report)
    for changes in watch(
        root, debounce=debounce_ms, step=step_ms, stop_event=stop, raise_interrupt=False,
        watch_filter=None, yield_on_timeout=False,
    ):  # fmt: skip
        rels = {os.path.relpath(path, root).replace(os.sep, "/") for _, path in changes}
        rels = {r for r in rels if not r.startswith("../") and r != "."}
        if not rels:
            continue
        try:
            report = sync_folder(svc, collection, folder, paths=rels, on_result=on_result)
        except RagserveError as exc:
            log.error("sync of %d changed paths failed: %s", len(rels), exc)
            continue
        if on_report is not None:
            on_report(report)
