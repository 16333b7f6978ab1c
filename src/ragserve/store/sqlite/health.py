"""Damage and disk-full handling of the embedded store.

- **At open**: :func:`check_database` runs ``PRAGMA quick_check`` (every b-tree page read once:
  O(size), ~1 s per GB here) and turns a damaged file, or a file that is not a database, into
  :class:`~ragserve.errors.StoreDamaged` naming the file and the way back. It is skipped when the
  last process closed the store cleanly and nothing has touched the files since
  (:func:`write_clean_stamp` at close, :func:`take_clean_stamp` at open): a crash, a restore or
  any write to the files in between brings the check back.
- **At run time**: :func:`guarded` wraps the store's public methods. SQLite's ``SQLITE_CORRUPT``
  / ``SQLITE_NOTADB`` ("database disk image is malformed") put the store in read-only mode for
  the life of the process (writes answer :class:`~ragserve.errors.StoreDamaged`, 503, and never
  reach the damaged file); ``SQLITE_FULL`` / ``ENOSPC`` answer
  :class:`~ragserve.errors.InsufficientStorage` (507) and mark the store full until space is
  freed: :meth:`StoreHealth.problem` (``/readyz``) then checks, at most once a second, that
  ``PROBE_BYTES`` can be allocated in the data directory (``posix_fallocate`` of a scratch
  file, removed at once), and clears the mark when they can: no restart needed. Writes are
  still attempted meanwhile (a small one may fit); a write that fails leaves nothing behind.

Nothing here is specific to one table; the store reports its state through :class:`ReportsHealth`
(``/readyz`` is 503 with :meth:`StoreHealth.problem` while writes cannot succeed).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar, runtime_checkable

from ragserve.errors import InsufficientStorage, RagserveError, StoreDamaged, Unavailable
from ragserve.files import fsync_path, write_atomic

log = logging.getLogger(__name__)

_CORRUPT, _FULL, _NOTADB, _IOERR = 11, 13, 26, 10
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
#: Seconds between space probes while the disk is full, and the room a probe asks for.
PROBE_INTERVAL = 1.0
PROBE_BYTES = 4 << 20


def recovery_hint(path: Path) -> str:
    """What an operator does about a damaged database file."""
    data_dir = path.parent
    return (
        f"stop the server and restore the data directory from a backup "
        f"(`ragserve restore BACKUP_DIR --data-dir {data_dir} --force`), or salvage the "
        f"readable rows into a fresh database (`ragserve store repair --data-dir {data_dir}`)"
    )


def damaged(path: Path, detail: str) -> StoreDamaged:
    return StoreDamaged(f"{path} is damaged ({detail}); {recovery_hint(path)}")


def check_database(path: Path) -> None:
    """``PRAGMA quick_check`` of an existing database file; :class:`StoreDamaged` if it fails."""
    if not path.exists() or path.stat().st_size == 0:
        return
    started = time.perf_counter()
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        try:
            rows = conn.execute("PRAGMA quick_check(5)").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if _code(exc) in (_CORRUPT, _NOTADB):
            raise damaged(path, str(exc)) from None
        raise Unavailable(f"{path} cannot be opened: {exc}") from None
    problems = [str(r[0]) for r in rows if r[0] != "ok"]
    if problems:
        raise damaged(path, "quick_check: " + "; ".join(problems))
    log.info("%s: quick_check ok in %.2f s", path, time.perf_counter() - started)


#: Written at a clean close beside the database, removed at the next open.
CLEAN_STAMP = "ragserve.clean"
#: How long after the files' last change the stamp is written. File times come from a coarse
#: clock (one tick is a few ms on Linux): a write in the same tick as the close would leave
#: the times unchanged, so the stamp is only written once the clock is past that tick.
STAMP_MARGIN_NS = 20_000_000


def _file_states(path: Path) -> dict[str, list[int]]:
    """Inode, size and modification time (ns) of the database and its WAL, where they exist."""
    out = {}
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
        except FileNotFoundError:
            continue
        out[p.name] = [st.st_ino, st.st_size, st.st_mtime_ns]
    return out


def write_clean_stamp(path: Path) -> None:
    """Record, after the last connection closed, the state the database was left in. Files on
    a filesystem with whole-second times (where a later write could keep the same time) get
    no stamp, so the next open checks them."""
    states = _file_states(path)
    if not states or any(s[2] % 1_000_000 == 0 for s in states.values()):
        return
    wait = max(s[2] for s in states.values()) + STAMP_MARGIN_NS - time.time_ns()
    if wait > 0:
        time.sleep(wait / 1e9)
    write_atomic(path.with_name(CLEAN_STAMP), json.dumps(states))


def take_clean_stamp(path: Path) -> bool:
    """Whether the database is as the last clean close left it. The stamp is removed (and the
    removal made durable) before the caller writes anything, so a crash from here on is seen
    by the next open."""
    stamp = path.with_name(CLEAN_STAMP)
    try:
        recorded = json.loads(stamp.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        recorded = None
    stamp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return recorded is not None and recorded == _file_states(path)


def _code(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_no_space(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or quota) is full."""
    if isinstance(exc, sqlite3.Error):
        return _code(exc) == _FULL
    if isinstance(exc, OSError):
        return exc.errno in _NO_SPACE
    text = str(exc)  # tantivy's IoError arrives as a ValueError carrying the OS error
    return "No space left on device" in text or "os error 28" in text


class StoreHealth:
    """Whether the store's database is damaged (for good) or its disk full (until freed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.damaged: str | None = None
        self.full: str | None = None
        self._probed = 0.0
        self._lock = threading.Lock()

    def problem(self) -> str | None:
        """Why writes cannot succeed now, or None. While full, probes (at most once a second)."""
        if self.damaged is not None:
            return self.damaged
        if self.full is not None:
            now = time.monotonic()
            if now - self._probed >= PROBE_INTERVAL and self._lock.acquire(blocking=False):
                try:
                    self._probed = now
                    if has_room(self.path.parent, PROBE_BYTES):
                        log.warning("%s: space freed, writes should succeed again", self.path)
                        self.full = None
                finally:
                    self._lock.release()
        return self.damaged or self.full

    def check_writable(self) -> None:
        """Refuse a write into a damaged file before it touches the file."""
        if self.damaged is not None:
            raise StoreDamaged(f"the store is read-only: {self.damaged}")

    def translate(self, exc: BaseException) -> RagserveError | None:
        """The package error for a storage failure (and the state it implies), or None."""
        if is_no_space(exc) and isinstance(exc, (sqlite3.Error, OSError)):
            if self.full is None:
                log.error("%s: disk full, writes fail until space is freed: %s", self.path, exc)
            self.full = (
                f"insufficient storage: the disk holding {self.path.parent} is full; "
                "writes fail until space is freed (reads still work)"
            )
            return InsufficientStorage(self.full)
        if isinstance(exc, sqlite3.DatabaseError) and _code(exc) in (_CORRUPT, _NOTADB):
            if self.damaged is None:
                log.error("%s damaged at run time (%s): read-only from now on", self.path, exc)
                self.damaged = (
                    f"{self.path} is damaged ({exc}): the store is read-only, writes are "
                    f"refused; {recovery_hint(self.path)}"
                )
            return StoreDamaged(self.damaged)
        if isinstance(exc, sqlite3.Error) and _code(exc) == _IOERR:
            log.error("%s: I/O error: %s", self.path, exc)
            return Unavailable(f"I/O error on {self.path}: {exc}")
        return None


def has_room(directory: Path, size: int) -> bool:
    """Whether ``size`` bytes can be allocated in ``directory`` now (a scratch file)."""
    scratch = directory / ".space-probe"
    try:
        fd = os.open(scratch, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
            scratch.unlink(missing_ok=True)
    except OSError as exc:
        return exc.errno in (errno.EOPNOTSUPP, errno.EINVAL)  # no fallocate here: assume room
    return True


@runtime_checkable
class ReportsHealth(Protocol):
    """A store that can say why writes cannot succeed now (``/readyz`` asks)."""

    def write_problem(self) -> str | None: ...


class _HasHealth(Protocol):
    @property
    def health(self) -> StoreHealth: ...


S = TypeVar("S", bound=_HasHealth)
P = ParamSpec("P")
R = TypeVar("R")


def guarded(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Translate storage failures raised by a store method (see :meth:`StoreHealth.translate`)."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except (sqlite3.Error, OSError) as exc:
            translated = self.health.translate(exc)
            if translated is None:
                raise
            raise translated from exc

    return wrapper
