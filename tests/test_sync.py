"""Sync: a collection kept equal to a folder (or a named set of documents), watched or not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragserve.errors import DocumentNotFound
from ragserve.search import SearchRequest
from ragserve.service import RetrievalService
from ragserve.sync import PATH_KEY, SOURCE_KEY, Folder, sync_documents, sync_folder, watch_folder
from ragserve.types import Document
from tests.fakes import make_service, make_settings, wait_until

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[RetrievalService]:
    service = make_service(make_settings(tmp_path))
    service.create_collection("docs")
    yield service
    service.close()


def text(name: str, version: int, paragraphs: int = 1) -> str:
    body = f"word{name.replace('/', '').replace('.', '')} version{version} "
    return "\n\n".join(body + f"paragraph {i} " + "filler " * 40 for i in range(paragraphs))


def write(root: Path, rel: str, version: int, paragraphs: int = 1) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text(rel, version, paragraphs))


def stored(svc: RetrievalService, source: str) -> dict[str, str]:
    """id -> the version word of every document the source holds."""
    out = {}
    for ref in svc.store.list_documents("docs", {SOURCE_KEY: source}):
        try:
            texts = [c.text for c in svc.get_document("docs", ref.id).chunks]
        except DocumentNotFound:  # deleted (by a watcher) since the listing
            continue
        versions = {w for t in texts for w in t.split() if w.startswith("version")}
        assert len(versions) == 1, f"{ref.id} mixes versions {versions}"
        out[ref.id] = versions.pop()
    return out


def version_of(words: str) -> str:
    return next(w for w in words.split() if w.startswith("version"))


def on_disk(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): version_of(p.read_text())
        for p in root.rglob("*.md")
        if not any(part.startswith(".") for part in p.relative_to(root).parts)
    }


def test_folder_sync_adds_updates_skips_deletes_and_keeps_broken_files(
    svc: RetrievalService, tmp_path: Path
) -> None:
    root = tmp_path / "notes"
    for name in ("a.md", "b.md", "c.md", "sub/d.md"):
        write(root, name, 1)
    folder = Folder.of(root)
    first = sync_folder(svc, "docs", folder)
    assert first.counts() == {"added": 4, "updated": 0, "unchanged": 0, "deleted": 0, "failed": 0}
    again = sync_folder(svc, "docs", folder)
    assert again.counts()["unchanged"] == 4 and again.counts()["added"] == 0

    write(root, "a.md", 2)  # edit
    write(root, "e.md", 1)  # add
    (root / "b.md").unlink()  # delete
    (root / "sub/d.md").rename(root / "sub/moved.md")  # rename
    (root / ".a.md.swp").write_text("editor junk")  # hidden: ignored
    (root / "c.md").write_bytes(b"\x00\x01\x02\xff" * 100)  # binary now: fails to parse
    report = sync_folder(svc, "docs", folder)
    assert report.counts() == {"added": 2, "updated": 1, "unchanged": 0, "deleted": 2, "failed": 1}
    assert report.failures[0][0] == "c.md"
    docs = stored(svc, folder.source)
    assert docs == {"a.md": "version2", "c.md": "version1", "e.md": "version1",
                    "sub/moved.md": "version1"}  # fmt: skip
    ref = svc.store.list_documents("docs", {PATH_KEY: "a.md"})[0]
    assert ref.metadata[SOURCE_KEY] == folder.source
    hits = svc.search("docs", SearchRequest(query="wordbmd", mode="lexical")).hits
    assert not hits


def test_sync_leaves_other_sources_and_plain_documents_alone(
    svc: RetrievalService, tmp_path: Path
) -> None:
    svc.ingest("docs", [Document("manual", "posted by hand")])
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "x.md", 1)
    write(two, "y.md", 1)
    sync_folder(svc, "docs", Folder.of(one))
    sync_folder(svc, "docs", Folder.of(two))
    (one / "x.md").unlink()
    assert sync_folder(svc, "docs", Folder.of(one)).deleted == 1
    ids = {r.id for r in svc.store.list_documents("docs")}
    assert ids == {"manual", "y.md"}


def test_named_source_sync_replaces_the_whole_set(svc: RetrievalService) -> None:
    docs = [Document(f"n{i}", f"note number {i}") for i in range(5)]
    assert sync_documents(svc, "docs", "crm", docs).added == 5
    changed = [Document("n0", "note zero, edited"), *docs[1:3], Document("n9", "new note")]
    report = sync_documents(svc, "docs", "crm", changed)
    assert report.counts() == {"added": 1, "updated": 1, "unchanged": 2, "deleted": 2, "failed": 0}
    ids = {r.id for r in svc.store.list_documents("docs", {SOURCE_KEY: "crm"})}
    assert ids == {"n0", "n1", "n2", "n9"}
    failing = [Document("n0", "   "), *changed[1:]]  # n0 fails: its stored version stays
    report = sync_documents(svc, "docs", "crm", failing)
    assert report.failed == 1 and report.deleted == 0
    assert "edited" in svc.get_document("docs", "n0").chunks[0].text


def test_cancelled_sync_deletes_nothing(svc: RetrievalService, tmp_path: Path) -> None:
    root = tmp_path / "f"
    for i in range(6):
        write(root, f"{i}.md", 1)
    sync_folder(svc, "docs", Folder.of(root))
    (root / "0.md").unlink()
    write(root, "new.md", 1)
    report = sync_folder(svc, "docs", Folder.of(root), cancelled=lambda: True)
    assert not report.complete and report.deleted == 0
    assert "0.md" in {r.id for r in svc.store.list_documents("docs")}


@pytest.mark.timeout(120)
def test_watched_folder_follows_edits_renames_deletes_and_a_burst_of_200(
    svc: RetrievalService, tmp_path: Path
) -> None:
    root = tmp_path / "watched"
    for i in range(10):
        write(root, f"start{i}.md", 1)
    folder = Folder.of(root)
    stop = threading.Event()
    reports: list[object] = []
    watcher = threading.Thread(
        target=watch_folder,
        args=(svc, "docs", folder),
        kwargs={"stop": stop, "on_report": reports.append, "debounce_ms": 300, "step_ms": 50},
        daemon=True,
    )
    watcher.start()
    try:
        wait_until(lambda: bool(reports), timeout=30)  # the first full sync
        assert stored(svc, folder.source) == on_disk(root)

        write(root, "start0.md", 2)  # edit
        write(root, "added.md", 1)  # add
        (root / "start1.md").rename(root / "renamed.md")  # rename
        (root / "start2.md").unlink()  # delete
        tmp = root / ".start3.md.tmp"  # an editor's atomic save: temp file, then rename over
        tmp.write_text(text("start3.md", 3))
        tmp.replace(root / "start3.md")
        (root / "start4.md~").write_text("backup file")  # not an included type
        wait_until(lambda: stored(svc, folder.source) == on_disk(root), timeout=60)

        for i in range(200):  # a burst: new files, edits, deletes, renames
            if i % 4 == 0:
                write(root, f"burst/{i}.md", 1)
            elif i % 4 == 1:
                write(root, f"burst/{i - 1}.md", 2)
            elif i % 4 == 2:
                write(root, f"burst/{i}.md", 1, paragraphs=3)
                (root / f"burst/{i}.md").rename(root / f"burst/r{i}.md")
            else:
                write(root, f"gone{i}.md", 1)
                (root / f"gone{i}.md").unlink()
        (root / "start5.md").unlink()
        wait_until(lambda: stored(svc, folder.source) == on_disk(root), timeout=90)
        for rel, version in on_disk(root).items():  # and a search finds what the folder has
            word = (root / rel).read_text().split()[0]
            hits = svc.search("docs", SearchRequest(query=word, mode="lexical", top_k=1)).hits
            assert hits and hits[0].document_id == rel and version in hits[0].text
        assert not svc.search("docs", SearchRequest(query="wordstart2md", mode="lexical")).hits
    finally:
        stop.set()
        watcher.join(timeout=30)
    assert not watcher.is_alive()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ragserve.sync import Folder, sync_folder
    from tests.fakes import make_service, make_settings

    svc = make_service(make_settings(Path(sys.argv[1])))
    svc.create_collection("docs")
    sync_folder(svc, "docs", Folder.of(Path(sys.argv[2])),
                on_result=lambda r: print(r.id, r.status, flush=True))  # acknowledged
    print("done", "done", flush=True)
    """
)


def run_writer(tmp_path: Path, root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(root)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_sigkill_during_a_sync_keeps_what_it_acknowledged_and_no_half_document(
    tmp_path: Path,
) -> None:
    root = tmp_path / "folder"
    for i in range(300):
        write(root, f"f{i:03}.md", 1, paragraphs=3)
    first = run_writer(tmp_path, root)
    out, _ = first.communicate(timeout=240)
    assert first.returncode == 0 and out.endswith("done done\n")
    for i in range(300):  # every file changes (3 chunks -> 2), some go, some come
        if i % 10 == 0:
            (root / f"f{i:03}.md").unlink()
        else:
            write(root, f"f{i:03}.md", 2, paragraphs=2)
    for i in range(30):
        write(root, f"new{i:02}.md", 2)
    proc = run_writer(tmp_path, root)
    assert proc.stdout is not None
    acked: dict[str, str] = {}
    for line in proc.stdout:
        doc_id, status = line.split()
        acked[doc_id] = status
        if len(acked) >= 120:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    assert "done" not in acked

    svc = make_service(make_settings(tmp_path))
    try:
        source = Folder.of(root).source
        docs = stored(svc, source)  # asserts no document mixes versions
        for doc_id, status in acked.items():
            assert status in ("created", "updated"), (doc_id, status)
            assert docs[doc_id] == "version2", doc_id
        report = sync_folder(svc, "docs", Folder.of(root))  # the next sync finishes the job
        assert report.complete and report.deleted == 30
        assert stored(svc, source) == on_disk(root)
    finally:
        svc.close()


def test_cli_sync_prints_the_summary_and_deletes_what_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ragserve import cli

    settings = make_settings(tmp_path)
    monkeypatch.setattr(cli, "_service", lambda **_: make_service(settings))
    root = tmp_path / "dir"
    for name in ("a.md", "b.md"):
        write(root, name, 1)
    runner = CliRunner()
    out = runner.invoke(cli.app, ["ingest", str(root), "-c", "notes", "--sync"])
    assert out.exit_code == 0, out.output
    assert "2 added, 0 updated, 0 unchanged, 0 deleted, 0 failed" in out.stdout
    (root / "b.md").unlink()
    out = runner.invoke(cli.app, ["ingest", str(root), "-c", "notes", "--sync"])
    assert "0 added, 0 updated, 1 unchanged, 1 deleted, 0 failed" in out.stdout
    bad = runner.invoke(cli.app, ["ingest", str(root / "a.md"), "-c", "notes", "--sync"])
    assert bad.exit_code == 2 and "takes a directory" in bad.output
    assert runner.invoke(cli.app, ["ingest", str(root), "-c", "notes", "--watch"]).exit_code == 2
