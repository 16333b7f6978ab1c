"""Backup, restore and repair of the embedded store's data directory.

**Backup** (:func:`backup`) works while a server is serving the directory, from another process:
it never takes the directory's lock. The derived indexes (``ann/``, ``lexical/``) are copied
first, best effort, then SQLite's online backup API copies the control database
(``control.db``: scoped API keys and ingest jobs, :mod:`ragserve.control`) if there is one, and
then ``ragserve.db``, each in one step, i.e. one read transaction: each copy is that database
as of that moment (WAL readers never block the writer, so the server keeps writing meanwhile).
Every write acknowledged before the backup started is in it; the control database goes first
so that a job's counts never exceed what the store's copy holds. An index copied while it
changed fails its checks at the restored store's first use (manifest generation and counts,
sha256 of the HNSW files, tantivy's CRC32) and is rebuilt from SQLite, so a torn copy costs
time, never correctness. ``backup.json`` records the format, the sha256 of each database copy
and what they hold.

**Restore** (:func:`restore`) checks the backup (sha256, ``PRAGMA quick_check``), takes the
directory's lock (so no server can have it open), and copies the backup in. A data directory
that already holds a database (or a control database, when the backup has one) is refused
unless ``force``; then its files are moved aside into ``pre-restore-<time>/`` inside it, never
deleted. A backup made before control databases were backed up (format 1) leaves the
directory's own ``control.db`` where it is.

**Repair** (:func:`repair`) salvages a damaged database: every row SQLite can still read
(collections, documents, chunks, table by table, in rowid ranges that skip damaged pages) goes
into a fresh database, the FTS5 tables are rebuilt, documents left without all of their chunks
are dropped (a document is stored whole or not at all), the damaged file is kept aside, and the
derived indexes are rebuilt at the next open.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

from ragserve import __version__
from ragserve.control import FILE_NAME as CONTROL
from ragserve.errors import Conflict, InvalidInput, NotFound, Unavailable
from ragserve.files import fsync_path, sha256_file
from ragserve.store.sqlite.health import check_database

#: 2: with the control database (``control_*`` fields); 1 (store only) is still read.
FORMAT = 2
READS = (1, 2)
_T = TypeVar("_T")
DB = "ragserve.db"
DERIVED = ("ann", "lexical")
MANIFEST = "backup.json"


@dataclass(frozen=True, slots=True)
class BackupInfo:
    format: int
    ragserve: str
    created_at: float
    db_sha256: str
    db_bytes: int
    collections: dict[str, dict[str, int]]
    seconds: float = 0.0
    #: The control database's copy (None: the data directory had none, or format 1).
    control_sha256: str | None = None
    control_bytes: int = 0
    #: Rows of its tables: ``api_keys`` (revoked ones included), ``jobs``.
    control: dict[str, int] = field(default_factory=dict)


def _contents(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    out = {}
    for cid, name in conn.execute("SELECT id, name FROM collections ORDER BY name").fetchall():
        (docs,) = conn.execute(
            "SELECT count(*) FROM documents WHERE collection_id = ?", (cid,)
        ).fetchone()
        (chunks,) = conn.execute(
            "SELECT count(*) FROM chunks WHERE collection_id = ?", (cid,)
        ).fetchone()
        out[str(name)] = {"documents": int(docs), "chunks": int(chunks)}
    return out


def _copy_derived(src: Path, dest: Path) -> None:
    """Best effort: a file that vanishes mid-copy (tantivy merges) leaves that index out."""
    for name in DERIVED:
        if not (src / name).is_dir():
            continue
        try:
            shutil.copytree(src / name, dest / name, ignore=shutil.ignore_patterns(".tantivy-*"))
        except (OSError, shutil.Error):
            shutil.rmtree(dest / name, ignore_errors=True)  # rebuilt from SQLite after restore


def _control_contents(conn: sqlite3.Connection) -> dict[str, int]:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return {
        t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
        for t in ("api_keys", "jobs")
        if t in tables
    }


def _snapshot(source: Path, dest: Path, contents: Callable[[sqlite3.Connection], _T]) -> _T:
    """``source`` copied to ``dest`` by SQLite's online backup API in one step (one read
    transaction: a consistent snapshot), as one self-contained file; ``contents`` of the copy."""
    partial = dest.with_name(dest.name + ".partial")
    try:
        with (
            closing(sqlite3.connect(source, timeout=30)) as src,
            closing(sqlite3.connect(partial)) as out,
        ):
            src.execute("PRAGMA busy_timeout = 30000")
            src.backup(out)
            held = contents(out)
            out.execute("PRAGMA journal_mode = DELETE")  # no WAL beside it
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise Unavailable(f"backup of {source} failed: {exc}") from None
    fsync_path(partial)
    partial.rename(dest)
    return held


def backup(data_dir: Path, dest: Path) -> BackupInfo:
    """Copy the store in ``data_dir`` and its control database into the new or empty directory
    ``dest`` (see module doc)."""
    source = data_dir / DB
    if not source.is_file():
        raise NotFound(f"no database at {source}")
    if dest.exists() and any(dest.iterdir()):
        raise Conflict(f"{dest} is not empty: back up into a new directory")
    started = time.perf_counter()
    dest.mkdir(parents=True, exist_ok=True)
    _copy_derived(data_dir, dest)  # before the snapshots: see the module docstring
    control: dict[str, int] = {}
    if (data_dir / CONTROL).is_file():  # before the store's: see the module docstring
        control = _snapshot(data_dir / CONTROL, dest / CONTROL, _control_contents)
    collections = _snapshot(source, dest / DB, _contents)
    has_control = (dest / CONTROL).is_file()
    info = BackupInfo(
        format=FORMAT,
        ragserve=__version__,
        created_at=time.time(),
        db_sha256=sha256_file(dest / DB),
        db_bytes=(dest / DB).stat().st_size,
        collections=collections,
        seconds=round(time.perf_counter() - started, 3),
        control_sha256=sha256_file(dest / CONTROL) if has_control else None,
        control_bytes=(dest / CONTROL).stat().st_size if has_control else 0,
        control=control,
    )
    (dest / MANIFEST).write_text(json.dumps(asdict(info), indent=2) + "\n")
    fsync_path(dest / MANIFEST)
    return info


def read_info(src: Path) -> BackupInfo:
    try:
        raw = json.loads((src / MANIFEST).read_text())
        info = BackupInfo(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"{src} is not a ragserve backup ({MANIFEST}: {exc})") from None
    if info.format not in READS:
        raise InvalidInput(
            f"{src}: backup format {info.format}, this ragserve reads {', '.join(map(str, READS))}"
        )
    return info


def verify(src: Path) -> BackupInfo:
    """The backup's manifest, once its databases match the recorded sha256 and quick_check."""
    info = read_info(src)
    for name, sha256 in ((DB, info.db_sha256), (CONTROL, info.control_sha256)):
        if sha256 is None:
            continue
        db = src / name
        if not db.is_file() or sha256_file(db) != sha256:
            raise InvalidInput(
                f"{db} does not match {src / MANIFEST} (sha256): the backup is damaged"
            )
        check_database(db)
    return info


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """The data directory's lock, as a server holds it: no server can have it open meanwhile."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "ragserve.lock").open("a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise Unavailable(
                f"{data_dir} is in use by another process (a ragserve server or command holds "
                "its ragserve.lock): stop it first"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _store_files(data_dir: Path, *, control: bool = False) -> list[Path]:
    """The store's files in ``data_dir``; with ``control``, the control database's too."""
    names = [DB, DB + "-wal", DB + "-shm", *DERIVED]
    if control:
        names += [CONTROL, CONTROL + "-wal", CONTROL + "-shm"]
    return [data_dir / n for n in names if (data_dir / n).exists()]


def _move_aside(data_dir: Path, files: list[Path], label: str) -> Path:
    aside = data_dir / f"{label}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    aside.mkdir()
    for path in files:
        path.rename(aside / path.name)
    return aside


def restore(src: Path, data_dir: Path, *, force: bool = False) -> tuple[BackupInfo, Path | None]:
    """Copy the backup ``src`` into ``data_dir``; returns its manifest and where the replaced
    files went (None if there were none)."""
    info = verify(src)
    control = info.control_sha256 is not None
    with _locked(data_dir):
        existing = _store_files(data_dir, control=control)
        if existing and not force:
            raise Conflict(
                f"{data_dir} already holds a store ({', '.join(p.name for p in existing)}): "
                "restore into an empty directory, or pass --force to move those files aside"
            )
        aside = _move_aside(data_dir, existing, "pre-restore") if existing else None
        names = [CONTROL, DB] if control else [DB]  # the store's database last: it completes it
        for name in names:
            shutil.copyfile(src / name, data_dir / (name + ".partial"))
            fsync_path(data_dir / (name + ".partial"))
        for name in DERIVED:
            if (src / name).is_dir():
                shutil.copytree(src / name, data_dir / name)
        for name in names:
            (data_dir / (name + ".partial")).rename(data_dir / name)
    return info, aside


# ------------------------------------------------------------------------------ repair


def _salvage_rows(
    old: sqlite3.Connection, new: sqlite3.Connection, table: str, columns: str
) -> tuple[int, int]:
    """Copy every readable row of ``table`` in rowid ranges; returns (rows copied, damaged
    ranges met; -1: the whole table was unreadable)."""
    copied = lost = 0
    try:
        (top,) = old.execute(f"SELECT max(rowid) FROM {table}").fetchone()
    except sqlite3.DatabaseError:
        return 0, -1  # the table's root page is unreadable: nothing of it can be salvaged
    step = 1000
    marks = ",".join("?" * len(columns.split(",")))
    for lo in range(0, int(top or 0) + 1, step):
        try:
            rows = old.execute(
                f"SELECT {columns} FROM {table} WHERE rowid >= ? AND rowid < ?", (lo, lo + step)
            ).fetchall()
        except sqlite3.DatabaseError:
            rows, lost = [], lost + 1
            for rowid in range(lo, lo + step):  # row by row inside a damaged range
                try:
                    rows += old.execute(
                        f"SELECT {columns} FROM {table} WHERE rowid = ?", (rowid,)
                    ).fetchall()
                except sqlite3.DatabaseError:
                    continue
        new.executemany(f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})", rows)
        copied += len(rows)
    return copied, lost


_TABLES = {
    "meta": "key, value",
    "collections": "id, name, embedder, dimension, created_at, generation",
    "documents": "id, collection_id, doc_id, title, metadata, content_hash, created_at, updated_at",
    "chunks": "id, collection_id, document_id, idx, text, start_char, end_char, metadata, vector",
}


def repair(data_dir: Path) -> dict[str, object]:
    """Salvage the readable rows of ``data_dir``'s database into a fresh one (module doc)."""
    from ragserve.store.sqlite.store import FTS_TOKENIZER, SqliteStore

    source = data_dir / DB
    if not source.is_file():
        raise NotFound(f"no database at {source}")
    with _locked(data_dir):
        fresh_dir = data_dir / "repair.partial"
        shutil.rmtree(fresh_dir, ignore_errors=True)
        fresh_dir.mkdir()
    store = SqliteStore(fresh_dir)  # the schema; closed before the rows go in
    store.close()
    report: dict[str, object] = {}
    with _locked(data_dir):
        old = sqlite3.connect(source)
        new = sqlite3.connect(fresh_dir / DB, isolation_level=None)
        try:
            new.execute("BEGIN")
            new.execute("DELETE FROM meta")
            salvaged = {}
            for table, columns in _TABLES.items():
                copied, lost = _salvage_rows(old, new, table, columns)
                salvaged[table] = {"rows": copied, "damaged_ranges": lost}
            report["salvaged"] = salvaged
            # A document is whole or absent: drop those that lost chunks, and orphans.
            incomplete = new.execute(
                "SELECT d.id FROM documents d LEFT JOIN chunks c ON c.document_id = d.id "
                "GROUP BY d.id HAVING count(c.id) = 0 OR count(c.id) != max(c.idx) + 1"
            ).fetchall()
            new.executemany("DELETE FROM chunks WHERE document_id = ?", incomplete)
            new.executemany("DELETE FROM documents WHERE id = ?", incomplete)
            new.execute("DELETE FROM chunks WHERE document_id NOT IN (SELECT id FROM documents)")
            new.execute(
                "DELETE FROM documents WHERE collection_id NOT IN (SELECT id FROM collections)"
            )
            report["documents_dropped_incomplete"] = len(incomplete)
            if salvaged["collections"] == {"rows": 0, "damaged_ranges": -1}:
                new.execute("ROLLBACK")
                raise Unavailable(
                    f"nothing in {source} is readable (not a database, or its header or "
                    "tables' root pages are damaged): restore it from a backup instead"
                )
            new.execute("UPDATE collections SET generation = generation + 1")
            new.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', '1')")
            for (cid,) in new.execute("SELECT id FROM collections").fetchall():
                fts = f"fts_{int(cid)}"
                new.execute(
                    f"CREATE VIRTUAL TABLE {fts} USING fts5(text, content='chunks', "
                    f"content_rowid='id', tokenize='{FTS_TOKENIZER}')"
                )
                new.execute(
                    f"INSERT INTO {fts} (rowid, text) SELECT id, text FROM chunks "
                    "WHERE collection_id = ?",
                    (cid,),
                )
            new.execute("COMMIT")
            report["collections"] = _contents(new)
        finally:
            old.close()
            new.close()
        check_database(fresh_dir / DB)
        aside = _move_aside(data_dir, _store_files(data_dir), "damaged")
        (fresh_dir / DB).rename(data_dir / DB)
        shutil.rmtree(fresh_dir, ignore_errors=True)
        report["damaged_files_moved_to"] = str(aside)
    return report
