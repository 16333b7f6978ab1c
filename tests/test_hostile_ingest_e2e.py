"""Hostile input end to end: a real `ragserve serve` (real cached models) takes in files built to
expand when parsed, and requests poisoned with a lone surrogate among many valid ones.

What must hold while each hostile file is ingested: ``/healthz`` keeps answering (well within 2 s)
and the server's memory, with its parser processes, stays under 1 GB; the file is ingested or
refused as one failed document with a clear error. Before (one probe, 2 cores): the DOCX run bomb
froze /healthz for 240 s at 3 GB RSS, the HTML of empty divs 176 s at 2.7 GB, the lying ZIP
peaked at 2.3 GB, a 10 MB title at 3.2 GB. Precise figures: ``bench/hostile_bench.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench import hostile_files as hostile
from bench.common import free_port, ragserve_command, server

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MB = 1024 * 1024


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (the parser processes)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = [  # of every thread: the parser processes start from worker threads
                c for t in Path(f"/proc/{current}/task").iterdir()
                for c in (t / "children").read_text().split()
            ]  # fmt: skip
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
        pending.extend(int(c) for c in children)
    return total


@dataclass
class Watch:
    """/healthz every 50 ms and the process tree's RSS, from a thread, while work runs."""

    url: str
    pid: int
    health: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    peak_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # At least one probe: a file refused at once can finish before this thread first runs.
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while True:
                self.peak_rss = max(self.peak_rss, tree_rss(self.pid))
                started = time.monotonic()
                self.statuses.append(client.get("/healthz").status_code)
                self.health.append(time.monotonic() - started)
                if self._stop.wait(0.05):
                    break

    def __enter__(self) -> Watch:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    env = {
        "PORT": str(port),
        "RAGSERVE_DATA_DIR": str(tmp / "data"),
        "RAGSERVE_RERANKER_LOAD": "eager",
        "HF_HUB_OFFLINE": "1",
        # Many requests at once, so the poisoned one shares model batches with valid ones.
        "RAGSERVE_RERANK_WORKERS": "64",
        "RAGSERVE_RERANK_QUEUE": "256",
        "RAGSERVE_SEARCH_WORKERS": "64",
        "RAGSERVE_EMBEDDINGS_WORKERS": "16",
        "RAGSERVE_PARSE_TIMEOUT": "120",  # the outcome is tested here, not the time limit
        # Nor the request deadline: a hundred reranks at once on a loaded 2-core machine can
        # take longer than the default 5 s, and admission then answers some of them 429.
        "RAGSERVE_REQUEST_DEADLINE": "120",
    }
    with server(ragserve_command(port), env, log=tmp / "server.log") as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            assert client.post("/v1/collections", json={"name": "kb"}).status_code == 201
            docs = [
                {"id": f"d{i}", "text": f"Document {i} about octopus hearts and reef colour."}
                for i in range(20)
            ]
            r = client.post("/v1/collections/kb/documents", json={"documents": docs})
            assert r.status_code == 200, r.text
        yield srv.url, srv.proc.pid


def _ingest(url: str, pid: int, **request: Any) -> tuple[httpx.Response, Watch]:
    with Watch(url, pid) as watch, httpx.Client(base_url=url, timeout=120) as client:
        response = client.post("/v1/collections/kb/documents", **request)
    return response, watch


def _file(path: Path, content_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"files": [("files", (path.name, path.read_bytes(), content_type))]}


HOSTILE = {
    # name: (builder, expected status, a phrase of the error when refused)
    "bomb.docx": (hostile.docx_run_bomb, "created", None),
    "divs.html": (hostile.html_empty_divs, "failed", "max_html_tags"),
    "pages.pdf": (hostile.pdf_many_pages, "failed", "90000 pages"),
    "lying.docx": (hostile.lying_zip_docx, "failed", "corrupt DOCX"),
    "long.jsonl": (hostile.jsonl_long_line, "failed", "max_document_chars"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_file_is_ingested_or_refused_while_the_server_stays_responsive(
    live: tuple[str, int], tmp_path: Path, name: str
) -> None:
    url, pid = live
    build, status, phrase = HOSTILE[name]
    path = build(tmp_path / name)
    assert path.stat().st_size < 50 * MB
    response, watch = _ingest(url, pid, **_file(path))
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == status, result
    if phrase:
        assert phrase in result["error"], result
    else:
        assert result["chunks"] >= 1
    assert watch.health and set(watch.statuses) == {200}
    assert max(watch.health) < 2.0, sorted(watch.health)[-5:]
    assert watch.peak_rss < 1024 * MB, watch.peak_rss / MB


def test_ten_megabyte_title_is_ingested_with_a_bounded_prefix(live: tuple[str, int]) -> None:
    url, pid = live
    record = hostile.long_title_record()
    response, watch = _ingest(url, pid, json={"documents": [record]})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    assert result["status"] == "created" and result["chunks"] == 1, result
    assert max(watch.health) < 2.0 and set(watch.statuses) == {200}
    assert watch.peak_rss < 1024 * MB, watch.peak_rss / MB


# ------------------------------------------------------------------ poisoned batch-mates

POISON = "\\ud800"  # a lone surrogate, as JSON escapes it: valid JSON, invalid text


async def _concurrently(url: str, requests: list[tuple[str, bytes]]) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(requests))
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await asyncio.gather(
            *(
                client.post(path, content=body, headers={"content-type": "application/json"})
                for path, body in requests
            )
        )


def _body(value: dict[str, Any], poisoned_field: str | None = None) -> bytes:
    raw = json.dumps(value)
    if poisoned_field:
        raw = raw.replace(poisoned_field, poisoned_field + POISON)
    return raw.encode()


def test_a_poisoned_rerank_fails_alone_among_a_hundred(live: tuple[str, int]) -> None:
    url, _ = live
    requests = [
        (
            "/v1/rerank",
            _body({"query": f"octopus hearts {i}", "documents": [f"reef {i}", "octopus blood"]}),
        )
        for i in range(100)
    ]
    requests[37] = ("/v1/rerank", _body({"query": "q", "documents": ["POISON", "x"]}, "POISON"))
    answers = asyncio.run(_concurrently(url, requests))
    statuses = [r.status_code for r in answers]
    assert statuses[37] == 422, answers[37].text
    assert "lone surrogate" in answers[37].json()["error"]["message"]
    assert statuses[:37] + statuses[38:] == [200] * 99, sorted(set(statuses))


def test_a_poisoned_query_embedding_fails_alone_among_a_hundred_searches(
    live: tuple[str, int],
) -> None:
    url, _ = live
    requests = [
        ("/v1/collections/kb/search", _body({"query": f"reef colour number {i}"}))
        for i in range(100)
    ]
    poisoned = {"input": ["fine", "POISON"], "input_type": "query"}
    requests[50] = ("/v1/embeddings", _body(poisoned, "POISON"))
    answers = asyncio.run(_concurrently(url, requests))
    statuses = [r.status_code for r in answers]
    assert statuses[50] == 422, answers[50].text
    assert "input[1]" in answers[50].json()["error"]["message"]
    assert statuses[:50] + statuses[51:] == [200] * 99, sorted(set(statuses))


def test_a_poisoned_json_document_fails_alone_in_its_request(live: tuple[str, int]) -> None:
    url, _ = live
    docs = [{"id": f"p{i}", "text": f"Plain text {i}" + ("POISON" if i == 2 else "")}
            for i in range(4)]  # fmt: skip
    answers = asyncio.run(
        _concurrently(url, [("/v1/collections/kb/documents", _body({"documents": docs}, "POISON"))])
    )
    results = {r["id"]: r for r in answers[0].json()["results"]}
    assert answers[0].status_code == 200, answers[0].text
    assert results["p2"]["status"] == "failed" and "lone surrogate" in results["p2"]["error"]
    assert [results[f"p{i}"]["status"] for i in (0, 1, 3)] == ["created"] * 3


def test_a_twenty_megabyte_embeddings_input_costs_what_the_model_sees(
    live: tuple[str, int],
) -> None:
    url, pid = live
    with Watch(url, pid) as watch, httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("/v1/embeddings", json={"input": ["word " * 4_000_000, "short"]})
    assert r.status_code == 200, r.text
    # Counted on the text the model is given (512 tokens x 64 characters), not all 4 M words.
    assert 6500 < r.json()["usage"]["prompt_tokens"] < 6600  # 32,768 chars / 5 + "short"
    assert max(watch.health) < 2.0 and set(watch.statuses) == {200}
    assert watch.peak_rss < 1024 * MB, watch.peak_rss / MB
