"""The embedded store's fast BM25 index: tantivy over each collection's chunk texts.

SQLite (with its FTS5 table per collection) stays the source of truth; this index is derived
data, like the HNSW index: rebuilt from SQLite whenever it does not match. Why it exists: FTS5
scores every chunk that holds any query word before ``ORDER BY rank LIMIT k``, and on 100,000
chunks of scientific text a 12-word query matches a quarter of them (~30-100 ms); tantivy's
block-max WAND skips what cannot reach the top k (~0.4 ms, same BM25: k1 1.2, b 0.75).

Layout: ``lexical/<collection id>/`` (the tantivy index) and ``lexical/<id>.json`` (manifest:
format, tantivy version, the collection's generation and chunk count at the last commit). At
open, an index whose manifest matches the database and whose files pass :func:`verify_files`
(every file ``meta.json`` names exists and matches the CRC32 in tantivy's own footer) is used as
is; anything else (missing, older, damaged, other version) is rebuilt from the chunks table (~2 s
per 100,000 chunks). A tantivy error at run time (a file deleted or damaged under a running
process, a full disk at commit) makes the store drop the index and answer from FTS5 until it is
rebuilt (see ``SqliteStore.lexical_refs``): :func:`tantivy_failure` says which errors are those.

Writes are mirrored after each SQLite commit and committed to tantivy lazily: before the next
search that needs them, on ``flush()`` and on close. A process that dies in between leaves a
manifest older than the database, so the next open rebuilds. Every method runs under the
store's write lock except :meth:`LexicalIndex.search`.
"""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import tantivy

from ragserve.files import write_atomic
from ragserve.memory import trim_soon
from ragserve.store.sqlite.ann import Keys, read_manifest
from ragserve.store.sqlite.meta import AllowedChunks

log = logging.getLogger(__name__)

FORMAT = 1
ANALYZER = "ragserve_en"
WRITER_HEAP = 32_000_000  # bytes buffered before tantivy writes a segment
#: The files of one segment of this schema (tantivy's SegmentComponent), besides deletes.
COMPONENTS = ("idx", "pos", "term", "store", "fast", "fieldnorm")
_FOOTER_MAGIC = 1337
#: Filtered searches allowing at most this many chunks restrict the query to them (a term-set
#: clause); larger allowed sets filter the unfiltered ranking (docs/store.md).
TERM_SET_MAX = 5_000


def tantivy_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is how tantivy reports damaged files or a failed write: a ValueError
    (its errors), an OSError, or a Rust panic (pyo3's PanicException, a BaseException)."""
    return isinstance(exc, (ValueError, OSError)) or type(exc).__name__ == "PanicException"


def verify_files(directory: Path) -> str | None:
    """What is wrong with a tantivy index directory, or None: every segment file that
    ``meta.json`` names must exist and match the CRC32 in its footer (tantivy's own checksum,
    what ``Index::validate_checksum`` checks). Reads every byte once (~1 GB/s)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        names = []
        for segment in meta["segments"]:
            sid = str(segment["segment_id"]).replace("-", "")
            names += [f"{sid}.{ext}" for ext in COMPONENTS]
            if segment.get("deletes"):
                names.append(f"{sid}.{int(segment['deletes']['opstamp'])}.del")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"meta.json unreadable: {exc}"
    for name in names:
        problem = _check_file(directory / name)
        if problem is not None:
            return f"{name}: {problem}"
    return None


def _check_file(path: Path) -> str | None:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            if size < 8:
                return "truncated"
            fh.seek(size - 8)
            length, magic = struct.unpack("<II", fh.read(8))
            if magic != _FOOTER_MAGIC or length + 8 > size:
                return "no tantivy footer"
            body = size - 8 - length
            fh.seek(body)
            expected = json.loads(fh.read(length))["crc"]
            fh.seek(0)
            crc, left = 0, body
            while left:
                block = fh.read(min(left, 1 << 20))
                if not block:
                    return "truncated"
                crc, left = zlib.crc32(block, crc), left - len(block)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable ({exc})"
    return None if crc == expected else "checksum mismatch"


def _analyzer() -> tantivy.TextAnalyzer:
    """Words (letters and digits), lowercased, accents folded, English (Porter2) stems.

    Close to FTS5's ``porter unicode61 remove_diacritics 2``.
    """
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(64))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.ascii_fold())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("text", stored=False, tokenizer_name=ANALYZER)
    builder.add_integer_field("key", stored=False, indexed=True, fast=True)
    return builder.build()


@dataclass(frozen=True, slots=True)
class Manifest:
    format: int
    tantivy: str
    generation: int
    count: int

    @classmethod
    def read(cls, path: Path) -> Manifest | None:
        return read_manifest(cls, path)

    def write(self, path: Path) -> None:
        write_atomic(path, json.dumps(asdict(self)))


class LexicalIndex:
    """One collection's tantivy index: BM25 top k over chunk texts, keys = chunk rowids."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self._analyzer = _analyzer()
        self._index = tantivy.Index(_schema(), path=str(path), reuse=True)
        self._index.register_tokenizer(ANALYZER, self._analyzer)
        self._writer: tantivy.IndexWriter | None = None
        self._dirty = False

    @property
    def dirty(self) -> bool:
        return self._dirty

    def count(self) -> int:
        return int(self._index.searcher().num_docs)

    def apply(self, removed: Iterable[int], added: Sequence[int], texts: Sequence[str]) -> None:
        """Mirror a committed SQLite write (visible after :meth:`commit`)."""
        writer = self._writer_()
        for key in removed:
            writer.delete_documents_by_term("key", int(key))
        for key, text in zip(added, texts, strict=True):
            writer.add_document(tantivy.Document(key=int(key), text=text))
        self._dirty = True

    def commit(self) -> None:
        if self._dirty and self._writer is not None:
            self._writer.commit()
            self._index.reload()
            self._dirty = False

    def close(self) -> None:
        if self._writer is not None:
            self._writer.rollback()  # uncommitted changes: the manifest says rebuild
            self._writer = None

    def _writer_(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=WRITER_HEAP, num_threads=1)
        return self._writer

    def terms(self, words: Sequence[str]) -> list[str]:
        """The indexed forms (stems) of query words, de-duplicated, in order."""
        out: list[str] = []
        for word in words:
            out += self._analyzer.analyze(word)
        return list(dict.fromkeys(out))

    def search(
        self, words: Sequence[str], k: int, allowed: AllowedChunks | None = None
    ) -> tuple[list[int], list[float]]:
        """Keys and BM25 scores of the ``k`` best chunks holding any of ``words``.

        ``allowed`` restricts the search to those chunks, exactly (a filter): a small allowed
        set (at most ``TERM_SET_MAX`` chunks) becomes a term-set clause of the query; a larger
        one filters the unfiltered ranking, read ``k / selectivity`` hits deep and deeper until
        the ``k`` allowed ones are known to be the best. Ties are broken by key, so results do
        not depend on segment layout.
        """
        terms = self.terms(words)
        if not terms:
            return [], []
        should = tantivy.Occur.Should
        query = tantivy.Query.boolean_query(
            [(should, tantivy.Query.term_query(self._index.schema, "text", t)) for t in terms]
        )
        searcher = self._index.searcher()
        if allowed is not None and allowed.count <= TERM_SET_MAX:
            keys = tantivy.Query.term_set_query(self._index.schema, "key", allowed.keys().tolist())
            query = tantivy.Query.boolean_query(
                [(tantivy.Occur.Must, query), (tantivy.Occur.Must, keys)]
            )
            allowed = None
        # One extra hit shows whether the k-th place is tied with the next (then widen).
        limit = k + 1
        if allowed is not None:
            share = allowed.count / max(int(searcher.num_docs), 1)
            limit = int(limit / max(share, 1e-6) * 1.5) + 10
        while True:
            hits = searcher.search(query, limit, count=False).hits
            found = searcher.fast_field_values("key", [addr for _, addr in hits])
            pairs = [
                (float(score), int(key))
                for (score, _), key in zip(hits, found, strict=True)
                if key is not None
            ]
            if allowed is not None:
                keep = allowed.contains(np.array([key for _, key in pairs], dtype=np.int64))
                pairs = [pair for pair, ok in zip(pairs, keep.tolist(), strict=True) if ok]
            exhausted = len(hits) < limit
            # Everything not read scores at most the last hit read: done once that is below
            # the k-th kept score (strictly, so no tie with it is left unread).
            if exhausted or (len(pairs) >= k and hits[-1][0] < pairs[k - 1][0]):
                break
            limit *= 4
        ranked = sorted(pairs, key=lambda sk: (-sk[0], sk[1]))[:k]
        return [key for _, key in ranked], [score for score, _ in ranked]


class LexicalKeeper:
    """The lexical indexes of one database, by collection id (caller holds the write lock)."""

    def __init__(self, conn: sqlite3.Connection, root: Path) -> None:
        self._conn = conn
        self.root = root
        self.indexes: dict[int, LexicalIndex] = {}
        #: How each index was obtained: "loaded" or "rebuilt".
        self.last_load: dict[int, str] = {}

    def _paths(self, cid: int) -> tuple[Path, Path]:
        return self.root / str(cid), self.root / f"{cid}.json"

    def _expected(self, cid: int) -> Manifest:
        """The manifest an index matching the database now would have."""
        (generation,) = self._conn.execute(
            "SELECT generation FROM collections WHERE id = ?", (cid,)
        ).fetchone()
        (count,) = self._conn.execute(
            "SELECT count(*) FROM chunks WHERE collection_id = ?", (cid,)
        ).fetchone()
        return Manifest(FORMAT, version("tantivy"), int(generation), int(count))

    def get(self, cid: int) -> LexicalIndex:
        index = self.indexes.get(cid)
        if index is None:
            index = self._open(cid)
            self.indexes[cid] = index
        return index

    def _open(self, cid: int) -> LexicalIndex:
        directory, manifest_path = self._paths(cid)
        expected = self._expected(cid)
        if Manifest.read(manifest_path) == expected and directory.is_dir():
            problem = verify_files(directory)
            if problem is not None:
                log.warning("lexical index %s damaged (%s): rebuilding", directory, problem)
                return self._rebuild(cid, expected)
            try:
                index = LexicalIndex(directory)
                if index.count() == expected.count:
                    self.last_load[cid] = "loaded"
                    return index
                index.close()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - tantivy panics (pyo3) on damaged files
                log.warning("lexical index %s unreadable (%s): rebuilding", directory, exc)
        return self._rebuild(cid, expected)

    def _rebuild(self, cid: int, expected: Manifest) -> LexicalIndex:
        directory, manifest_path = self._paths(cid)
        manifest_path.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)
        index = LexicalIndex(directory)
        rows = self._conn.execute(
            "SELECT id, text FROM chunks WHERE collection_id = ? ORDER BY id", (cid,)
        )
        while batch := rows.fetchmany(5000):
            index.apply((), [r[0] for r in batch], [r[1] for r in batch])
        index.commit()
        expected.write(manifest_path)
        self.last_load[cid] = "rebuilt"
        trim_soon()  # the writer's arena, freed by the commit
        log.info("lexical index of collection %d rebuilt: %d chunks", cid, expected.count)
        return index

    def apply(self, cid: int, removed: Keys, added: Keys, texts: Sequence[str]) -> None:
        """Mirror a committed write; an index not loaded yet is checked (and rebuilt) at load."""
        index = self.indexes.get(cid)
        if index is not None:
            index.apply(removed.tolist(), added.tolist(), texts)

    def commit(self, cid: int) -> None:
        """Make mirrored writes searchable and record the state they match."""
        index = self.indexes.get(cid)
        if index is not None and index.dirty:
            index.commit()
            self._expected(cid).write(self._paths(cid)[1])

    def flush(self) -> None:
        for cid in list(self.indexes):
            self.commit(cid)

    def discard(self, cid: int) -> None:
        """Forget a failed index: its manifest goes, so its next load rebuilds it."""
        index = self.indexes.pop(cid, None)
        if index is not None:
            try:
                index.close()
            except BaseException as exc:
                if not tantivy_failure(exc):
                    raise
        self._paths(cid)[1].unlink(missing_ok=True)

    def drop(self, cid: int) -> None:
        index = self.indexes.pop(cid, None)
        if index is not None:
            index.close()
        directory, manifest_path = self._paths(cid)
        manifest_path.unlink(missing_ok=True)
        shutil.rmtree(directory, ignore_errors=True)

    def close(self) -> None:
        for index in self.indexes.values():
            index.close()
        self.indexes.clear()
