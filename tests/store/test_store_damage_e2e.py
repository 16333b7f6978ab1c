"""Damage, a second server and a full disk against the real ``ragserve serve`` process.

Start-up failures exit non-zero with the reason; a damaged file found at run time turns the
store read-only (503, ``/readyz`` says why); a full disk (a real 8 MB tmpfs) answers 507 with
each document's outcome and recovers, without a restart, once space is freed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from ragserve.config import Settings
from ragserve.models.catalog import Catalog
from ragserve.store.sqlite import SqliteStore
from ragserve.types import Chunk, Document
from tests.store.test_store_damage import corrupt_all_but_schema
from tests.test_server_e2e import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.integration]

EMBEDDER = Settings().embedder


class Server:
    def __init__(self, data_dir: Path, log: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = log
        env = {
            **os.environ,
            "RAGSERVE_DATA_DIR": str(data_dir),
            "RAGSERVE_RERANKER_LOAD": "lazy",
            "HF_HUB_OFFLINE": "1",
            "RUST_BACKTRACE": "0",
        }
        port = self.url.rsplit(":", 1)[1]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ragserve.cli", "serve", "--port", port],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "server never became ready"
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(timeout=30)


def start(servers: list[Server], data_dir: Path, log: Path) -> Server:
    server = Server(data_dir, log)
    servers.append(server)
    return server


def populate(data_dir: Path, docs: int = 120) -> None:
    """A collection for the default embedder, written directly (random vectors: no model)."""
    dimension = Catalog.load().get(EMBEDDER).dimension
    assert dimension is not None
    store = SqliteStore(data_dir)
    store.create_collection("c", EMBEDDER, dimension)
    filler = " ".join(f"filler{w}" for w in range(60))
    for i in range(docs):
        vectors = np.random.default_rng(i).standard_normal((2, dimension)).astype(np.float32)
        chunks = [Chunk(f"d{i}", j, f"tok{i}x{j} {filler}") for j in range(2)]
        store.upsert_document("c", Document(f"d{i}", ""), str(i), chunks, vectors)
    assert store.lexical_search("c", "tok3x1", 1)[0].chunk_id == "d3#1"  # builds tantivy's
    store.close()


def files_digest(db: Path) -> str:
    wal = db.with_name(db.name + "-wal")
    parts = [db.read_bytes(), wal.read_bytes() if wal.exists() else b""]
    return "".join(hashlib.sha256(p).hexdigest() for p in parts)


def test_second_server_on_the_same_data_dir_exits_non_zero(
    tmp_path: Path, servers: list[Server]
) -> None:
    first = start(servers, tmp_path / "data", tmp_path / "first.log")
    first.wait_ready()
    second = start(servers, tmp_path / "data", tmp_path / "second.log")
    assert second.wait_exit() == 1
    assert "in use by another process" in second.output()
    assert httpx.get(first.url + "/readyz").status_code == 200  # the first is unaffected


@pytest.mark.parametrize("damage", ["zeroed-header", "garbage-mid-file"])
def test_server_on_a_damaged_database_exits_non_zero_naming_file_and_fix(
    tmp_path: Path, servers: list[Server], damage: str
) -> None:
    data = tmp_path / "data"
    populate(data)
    db = data / "ragserve.db"
    with db.open("r+b") as fh:
        if damage == "zeroed-header":
            fh.write(b"\0" * 100)
        else:
            fh.seek(db.stat().st_size // 2 // 4096 * 4096)
            fh.write(os.urandom(4096))
    server = start(servers, data, tmp_path / "server.log")
    assert server.wait_exit() == 1
    out = server.output()
    assert f"{db} is damaged" in out and "ragserve restore" in out, out


def test_damage_found_while_serving_makes_the_store_read_only(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    populate(data)
    server = start(servers, data, tmp_path / "server.log")
    server.wait_ready()
    db = data / "ragserve.db"
    corrupt_all_but_schema(db)
    statuses = set()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for i in range(120):
            r = client.get(f"/v1/collections/c/documents/d{i}")
            statuses.add(r.status_code)
            if r.status_code == 503:
                assert r.json()["error"]["type"] == "store_damaged"
                break
        assert 503 in statuses and 500 not in statuses
        before = files_digest(db)
        doc = {"id": "new", "text": "An octopus has three hearts."}
        for _ in range(2):  # refused every time, with the reason; never a 500
            r = client.post("/v1/collections/c/documents", json={"documents": [doc]})
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "store_damaged"
            assert "read-only" in r.json()["error"]["message"]
            # (refused as a whole, or with one result per document: none stored)
            assert all(x["status"] == "failed" for x in r.json().get("results", []))
        r = client.post("/v1/collections", json={"name": "other"})
        assert r.status_code == 503 and "read-only" in r.json()["error"]["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "damaged" in ready.json()["reason"] and "ragserve restore" in ready.json()["reason"]
    assert files_digest(db) == before  # neither the database nor its WAL was written


def test_deleted_tantivy_segment_file_is_rebuilt_at_start(
    tmp_path: Path, servers: list[Server]
) -> None:
    data = tmp_path / "data"
    populate(data, docs=20)
    victim = sorted((data / "lexical" / "1").glob("*.pos"))[0]
    victim.unlink()  # meta.json still names it: tantivy would open and fail at search time
    server = start(servers, data, tmp_path / "server.log")
    server.wait_ready()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for mode in ("lexical", "hybrid"):
            for _ in range(2):
                r = client.post(
                    "/v1/collections/c/search", json={"query": "tok7x1", "mode": mode, "top_k": 1}
                )
                assert r.status_code == 200, r.text
                if mode == "lexical":
                    assert r.json()["results"][0]["chunk_id"] == "d7#1"
    assert "damaged" in server.output() and "rebuilding" in server.output()


# ------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the disk."""
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    filler = disk / "filler"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_is_507_with_each_outcome_and_recovers_when_space_is_freed(
    tmp_path: Path, servers: list[Server], small_disk: Path
) -> None:
    server = start(servers, small_disk / "data", tmp_path / "server.log")
    server.wait_ready()
    words = " ".join(f"word{w}" for w in range(120))
    docs = [{"id": f"d{i}", "text": f"Document {i} about octopus. {words}"} for i in range(40)]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        filler = fill(small_disk, leave=300_000)
        r = client.post("/v1/collections/c/documents", json={"documents": docs})
        assert r.status_code == 507, r.text
        body = r.json()
        assert body["error"]["type"] == "insufficient_storage"
        assert "full" in body["error"]["message"]
        results = body["results"]
        assert [x["id"] for x in results] == [d["id"] for d in docs]
        created = [x["id"] for x in results if x["status"] == "created"]
        failed = [x for x in results if x["status"] == "failed"]
        assert created and failed  # the disk filled part way through the request
        assert all("full" in x["error"] for x in failed)
        for x in results:  # what says created is stored whole; nothing else is
            got = client.get(f"/v1/collections/c/documents/{x['id']}")
            assert got.status_code == (200 if x["status"] == "created" else 404), got.text
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "full" in ready.json()["reason"]
        r = client.post("/v1/collections/c/search", json={"query": "octopus", "mode": "lexical"})
        assert r.status_code == 200  # reads go on

        filler.unlink()  # space freed: no restart
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.2)
        r = client.post("/v1/collections/c/documents", json={"documents": docs})
        assert r.status_code == 200, r.text
        statuses = {x["id"]: x["status"] for x in r.json()["results"]}
        assert all(statuses[i] == "unchanged" for i in created)
        assert all(statuses[x["id"]] == "created" for x in failed)
        assert client.get("/v1/collections/c").json()["documents"] == len(docs)
    server.stop()
    assert server.proc.returncode in (0, -signal.SIGTERM)
    store = SqliteStore(small_disk / "data")  # reopens clean: quick_check, every document
    try:
        assert store.get_collection("c").documents == len(docs)
    finally:
        store.close()
    shutil.rmtree(small_disk / "data", ignore_errors=True)
