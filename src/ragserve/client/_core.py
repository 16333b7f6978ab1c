"""What the sync and async clients share: one :class:`Call` per route, error mapping, the retry
rule and file uploads with progress. Nothing here does I/O on the network."""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from ragserve import errors

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_TIMEOUT = 60.0
#: Statuses worth another try: the work was not done (admission control's 429, a server that is
#: not ready yet). A 503 for a missing model or a damaged store is not retried.
_RETRY_STATUSES = frozenset({429, 503})
_RETRY_503_TYPES = frozenset({"unavailable", ""})


# ------------------------------------------------------------------------------ errors


def _error_classes() -> dict[str, type[errors.RagserveError]]:
    """``error.type`` -> the most general class of the tree that carries it."""
    found: dict[str, type[errors.RagserveError]] = {}
    queue: list[type[errors.RagserveError]] = [errors.RagserveError]
    while queue:
        cls = queue.pop(0)
        found.setdefault(cls.error_type, cls)
        queue.extend(cls.__subclasses__())
    return found


_BY_TYPE = _error_classes()
#: Types the HTTP layer uses that have no class of their own, by status.
_BY_STATUS: dict[int, type[errors.RagserveError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.InvalidInput,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    415: errors.InvalidInput,
    422: errors.InvalidInput,
    429: errors.Overloaded,
    503: errors.Unavailable,
    507: errors.InsufficientStorage,
}


def retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked to wait (``Retry-After``: seconds or an HTTP date)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_body(response: httpx.Response) -> tuple[str, str]:
    try:
        error = response.json()["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        return "", response.text[:500] or response.reason_phrase


def error_from(response: httpx.Response) -> errors.RagserveError:
    """The exception of ``ragserve.errors`` that the server raised (by ``error.type``, else by
    status), with ``status_code`` and ``error_type`` as the server sent them."""
    kind, message = _error_body(response)
    cls = _BY_TYPE.get(kind) or _BY_STATUS.get(response.status_code, errors.RagserveError)
    exc: errors.RagserveError
    if issubclass(cls, errors.Overloaded):
        exc = cls(message, retry_after=retry_after(response) or 1.0)
    else:
        exc = cls(message)
    exc.status_code = response.status_code
    exc.error_type = kind or cls.error_type
    exc.public = True
    return exc


def headers_for(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


# ------------------------------------------------------------------------------ retries


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a 429, and of a 503 of a server that is not ready (never of other errors).

    The wait is the server's ``Retry-After`` when it sends one, else ``backoff`` x 2^attempt;
    a server that asks for more than ``max_wait`` seconds is not waited for (the error is
    raised, with ``retry_after`` set on an :class:`~ragserve.errors.Overloaded`).
    ``on_retry(attempt, wait, response)`` is called before each wait."""

    max_retries: int = 3
    max_wait: float = 30.0
    backoff: float = 0.5
    on_retry: Callable[[int, float, httpx.Response], None] | None = None

    def wait_before_retry(self, attempt: int, response: httpx.Response) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``, or None: do not retry."""
        if response.status_code not in _RETRY_STATUSES or attempt >= self.max_retries:
            return None
        if response.status_code == 503 and _error_body(response)[0] not in _RETRY_503_TYPES:
            return None
        asked = retry_after(response)
        wait = self.backoff * 2**attempt if asked is None else asked
        if wait > self.max_wait:
            return None
        if self.on_retry is not None:
            self.on_retry(attempt, wait, response)
        return wait


NO_RETRIES = RetryPolicy(max_retries=0)


# ------------------------------------------------------------------------------ calls


@dataclass
class Call(Generic[T]):
    """One request of the HTTP API and how to read its answer. ``files`` is called once per
    attempt (an upload opens its files again when it is retried)."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    json: Any = None
    files: Callable[[], list[tuple[str, tuple[str, IO[bytes], str]]]] | None = None
    params: Mapping[str, str] | None = None
    ok: frozenset[int] = field(default_factory=lambda: frozenset({200, 201, 202, 204}))
    #: Whether a 429 / 503 answer may be retried (see :class:`RetryPolicy`).
    retry: bool = True
    #: Called when an attempt ends (its files are closed).
    cleanup: Callable[[], None] | None = None

    def request(self, client: httpx.Client | httpx.AsyncClient) -> httpx.Request:
        files = self.files() if self.files is not None else None
        return client.build_request(
            self.method, self.path, json=self.json, files=files, params=self.params
        )

    def result(self, response: httpx.Response) -> T:
        if response.status_code not in self.ok:
            raise error_from(response)
        return self.parse(response)


def model(cls: type[M]) -> Callable[[httpx.Response], M]:
    return lambda r: cls.model_validate_json(r.content)


def nothing(_: httpx.Response) -> None:
    return None


def text(r: httpx.Response) -> str:
    return r.text


def segment(value: str) -> str:
    """A path segment with every reserved character percent-encoded (a document id may hold
    '/', '%', '?'); an id of only dots is encoded too, as URL rules would remove it."""
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if set(encoded) == {"."} else encoded


def drop_none(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# ------------------------------------------------------------------------------ uploads


@dataclass(frozen=True)
class Progress:
    """Where an upload is: bytes of file content sent out of the total, files finished."""

    bytes_sent: int
    bytes_total: int
    files_done: int
    files_total: int
    current: str | None


ProgressCallback = Callable[[Progress], None]


class _Counted:
    """A file object that reports each read to a :class:`_Tracker` (httpx reads it in chunks
    while it streams the multipart body, so the progress is that of the bytes sent)."""

    def __init__(self, path: Path, tracker: _Tracker) -> None:
        self._file = path.open("rb")
        self._path = path
        self._tracker = tracker

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._tracker.advance(len(data), str(self._path))
        return data

    def fileno(self) -> int:  # lets httpx know the length (Content-Length, not chunked)
        return self._file.fileno()

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def close(self) -> None:
        self._file.close()


@dataclass
class _Tracker:
    bytes_total: int
    files_total: int
    callback: ProgressCallback | None
    sent: int = 0
    done: int = 0

    def advance(self, n: int, name: str) -> None:
        self.sent += n
        if self.callback is not None and n:
            self.callback(Progress(self.sent, self.bytes_total, self.done, self.files_total, name))

    def finished(self, files: int, name: str | None) -> None:
        self.done += files
        if self.callback is not None:
            self.callback(Progress(self.sent, self.bytes_total, self.done, self.files_total, name))


@dataclass(frozen=True)
class Upload:
    """A file to upload and the name the server sees (its path under the folder given, so
    ``a/x.md`` and ``b/x.md`` are two documents)."""

    path: Path
    name: str


def expand_paths(paths: Iterable[str | os.PathLike[str]], pattern: str = "**/*") -> list[Upload]:
    """Files named, and the files under folders named (``pattern`` relative to each folder;
    hidden files and folders are left out), in a stable order."""
    out: list[Upload] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(p.glob(pattern)):
                rel = f.relative_to(p)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                    out.append(Upload(f, rel.as_posix()))
        elif p.is_file():
            out.append(Upload(p, p.name))
        else:
            raise errors.InvalidInput(f"{p}: no such file or folder")
    return out


def batches(files: Sequence[Upload], max_files: int, max_bytes: int) -> Iterator[list[Upload]]:
    """Files grouped so each request stays within the server's per-request limits."""
    batch: list[Upload] = []
    size = 0
    for f in files:
        n = f.path.stat().st_size
        if batch and (len(batch) >= max_files or size + n > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(f)
        size += n
    if batch:
        yield batch


def upload_call(
    collection: str,
    batch: list[Upload],
    tracker: _Tracker,
    parse: Callable[[httpx.Response], T],
    route: str = "documents",
) -> Call[T]:
    """A multipart upload of ``batch``, streamed from disk; a retry starts the batch again."""
    opened: list[_Counted] = []
    start = tracker.sent

    def files() -> list[tuple[str, tuple[str, IO[bytes], str]]]:
        close()
        tracker.sent = start
        opened.extend(_Counted(u.path, tracker) for u in batch)
        return [
            ("files", (u.name, f, "application/octet-stream"))  # type: ignore[misc]
            for u, f in zip(batch, opened, strict=True)
        ]

    def close() -> None:
        for f in opened:
            f.close()
        opened.clear()

    return Call(
        "POST",
        f"/v1/collections/{segment(collection)}/{route}",
        parse,
        files=files,
        cleanup=close,
    )


def tracker_for(files: Sequence[Upload], progress: ProgressCallback | None) -> _Tracker:
    return _Tracker(sum(f.path.stat().st_size for f in files), len(files), progress)
