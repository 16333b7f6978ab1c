"""Observability over HTTP: /metrics, /v1/stats, the access log, X-Request-ID, `ragserve stats`."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from typer.testing import CliRunner

from ragserve.api.app import create_app
from ragserve.api.observability import request_id_from
from ragserve.config import Settings
from ragserve.metrics import SEARCH_STAGES, Metrics, percentiles
from tests.fakes import FakeEmbedder, error_of, make_service, make_settings, ready_client

SEARCH_ROUTE = "/v1/collections/{name}/search"
DOCS = [
    {"id": "cats", "title": "Cats", "text": "Cats purr and chase mice around the old barn."},
    {"id": "dogs", "title": "Dogs", "text": "Dogs bark at the mail carrier and chase cats."},
    {"id": "fish", "title": "Fish", "text": "Fish swim in the pond behind the barn."},
]


class BrokenEmbedder(FakeEmbedder):
    def embed_queries(self, texts: Sequence[str], *, instruction: bool = True) -> np.ndarray:
        raise RuntimeError("boom")


def _setup(client: TestClient) -> None:
    assert client.post("/v1/collections", json={"name": "docs"}).status_code == 201
    r = client.post("/v1/collections/docs/documents", json={"documents": DOCS})
    assert r.status_code == 200, r.text


def _samples(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return _parse(r.text)


def _sum(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = make_settings(tmp_path)
    for c in ready_client(settings, make_service(settings)):
        _setup(c)
        yield c


# ------------------------------------------------------------------------------ load run


def _parse(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


async def _load_run(app: FastAPI) -> dict[str, Any]:
    """Drive ``app`` from the same event loop (httpx's ASGI transport, no thread hop)."""
    out: dict[str, Any] = {"client_ms": [], "statuses": []}
    async with app.router.lifespan_context(app):
        state = app.state.readiness
        while not (state.ready or state.failed):
            await anyio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.post("/v1/collections", json={"name": "docs"})).is_success
            r = await client.post("/v1/collections/docs/documents", json={"documents": DOCS})
            assert r.is_success
            out["before"] = _parse((await client.get("/metrics")).text)
            for i in range(200):
                if i % 4 == 3:  # 50 errors, on other routes: 404 x2 kinds, 405, 422
                    kind = (i // 4) % 4
                    if kind == 0:
                        r = await client.get("/v1/collections/missing")
                    elif kind == 1:
                        r = await client.put("/v1/collections/docs")
                    elif kind == 2:
                        r = await client.post("/v1/embeddings", json={"input": []})
                    else:
                        r = await client.get("/nowhere")
                    assert r.status_code >= 400
                else:
                    body = {"query": f"barn cats query {i}", "top_k": 3, "rerank": True}
                    t = time.perf_counter()
                    r = await client.post("/v1/collections/docs/search", json=body)
                    out["client_ms"].append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
                out["statuses"].append(r.status_code)
            out["after"] = _parse((await client.get("/metrics")).text)
            out["stats"] = (await client.get("/v1/stats")).json()
    return out


def test_load_run_metrics_and_stats_agree_with_what_the_client_saw(tmp_path: Path) -> None:
    """200 requests (150 searches through every stage, 50 errors on other routes).

    Latency check (not timing dependent either). The server times each request from the moment
    the middleware sees it to the end of the response; the client's interval contains that one.
    So for every request server <= client, and hence every server percentile <= the client's,
    however slow the machine is. The client runs in the server's event loop (httpx's ASGI
    transport). Errors go to other routes so the search route's window holds searches only.

    Exactness check (not timing dependent): the /v1/stats percentiles are numpy's percentiles of
    the raw window (and the window holds what the access log reports, see the next test).
    """
    settings = make_settings(tmp_path, query_cache_size=0)
    service = make_service(settings)
    app = create_app(settings, service)
    try:
        run = anyio.run(_load_run, app)
        window = app.state.metrics.routes.get(f"POST {SEARCH_ROUTE}").values()
    finally:
        service.close()
    before, after, stats, statuses = run["before"], run["after"], run["stats"], run["statuses"]

    # Every stage histogram has one observation per search.
    for stage in SEARCH_STAGES:
        key = ("ragserve_search_stage_duration_seconds_count", frozenset({("stage", stage)}))
        assert after[key] - before.get(key, 0) == 150, stage
    # The error counter equals the error responses the client saw.
    errors_seen = sum(s >= 400 for s in statuses)
    assert errors_seen == 50
    errors = _sum(after, "ragserve_http_errors_total") - _sum(before, "ragserve_http_errors_total")
    assert errors == errors_seen
    assert _sum(after, "ragserve_http_errors_total", type="collection_not_found") == 13
    assert _sum(after, "ragserve_http_errors_total", type="method_not_allowed") == 13
    assert _sum(after, "ragserve_http_errors_total", type="invalid_request") == 12
    assert _sum(after, "ragserve_http_errors_total", type="not_found", status="404") == 12
    # Requests by route template, never by raw path.
    assert _sum(after, "ragserve_http_request_duration_seconds_count", route=SEARCH_ROUTE) == 150
    assert not any("/v1/collections/docs/search" in dict(ls).get("route", "") for _, ls in after)
    assert _sum(after, "ragserve_http_requests_total", route="unrouted", status="404") == 12

    server = stats["routes"][f"POST {SEARCH_ROUTE}"]
    assert server["count"] == 150
    exact = percentiles(window)
    assert exact is not None
    assert (server["p50_ms"], server["p95_ms"], server["p99_ms"]) == (
        exact.p50,
        exact.p95,
        exact.p99,
    )
    ours = np.percentile(run["client_ms"], [50, 95, 99])
    for name, client_p in zip(("p50_ms", "p95_ms", "p99_ms"), ours, strict=True):
        assert 0 < server[name] <= client_p * 1.001, (name, server, ours)
    assert stats["requests"]["recent_errors"] == errors_seen
    assert set(stats["stages"]) == set(SEARCH_STAGES)
    assert stats["stages"]["embed"]["count"] == 150


def test_access_log_latencies_are_the_window_observations(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    for client in ready_client(settings, make_service(settings)):
        _setup(client)
        caplog.set_level(logging.INFO, logger="ragserve.access")
        caplog.clear()
        for i in range(20):
            client.post("/v1/collections/docs/search", json={"query": f"q {i}"})
        logged = [
            json.loads(r.getMessage())["latency_ms"]
            for r in caplog.records
            if r.name == "ragserve.access"
        ]
        window = client.app.state.metrics.routes.get(f"POST {SEARCH_ROUTE}").values()
        assert len(logged) == 20
        np.testing.assert_allclose(window[-20:], logged, atol=0.001)


# ------------------------------------------------------------------------------ /metrics


def test_metrics_exposes_models_caches_batchers_memory_and_collections(client: TestClient) -> None:
    for _ in range(3):
        client.post("/v1/collections/docs/search", json={"query": "barn", "rerank": True})
    samples = _samples(client)
    names = {name for name, _ in samples}
    assert {
        "ragserve_http_request_duration_seconds_bucket",
        "ragserve_http_requests_in_flight",
        "ragserve_ready",
        "ragserve_batcher_pending",
        "ragserve_batch_size_count",
        "process_resident_memory_bytes",
    } <= names
    assert (
        samples[
            (
                "ragserve_model_load_seconds",
                frozenset({("model", "fake-embedder"), ("kind", "embedder")}),
            )
        ]
        >= 0
    )
    assert samples[("ragserve_collection_documents", frozenset({("collection", "docs")}))] == 3
    assert samples[("ragserve_collection_chunks", frozenset({("collection", "docs")}))] >= 3
    assert _sum(samples, "ragserve_cache_hits_total", cache="query_embeddings") == 2
    assert _sum(samples, "ragserve_cache_misses_total", cache="query_embeddings") == 1
    assert _sum(samples, "ragserve_cache_hits_total", cache="rerank_scores") >= 2
    assert _sum(samples, "ragserve_batch_size_count", batcher="embed-fake-embedder") == 1
    assert _sum(samples, "ragserve_batch_size_sum", batcher="rerank-fake-reranker") >= 1
    assert samples[("ragserve_ready", frozenset())] == 1
    assert samples[("process_resident_memory_bytes", frozenset())] > 10 * 2**20
    # Buckets resolve milliseconds.
    buckets = {
        dict(ls)["le"] for n, ls in samples if n == "ragserve_search_stage_duration_seconds_bucket"
    }
    assert {"0.0005", "0.001", "0.005", "10.0"} <= buckets


def test_each_app_has_its_own_registry(tmp_path: Path) -> None:
    a = create_app(make_settings(tmp_path / "a"), make_service(make_settings(tmp_path / "a")))
    b = create_app(make_settings(tmp_path / "b"), make_service(make_settings(tmp_path / "b")))
    ma: Metrics = a.state.metrics
    mb: Metrics = b.state.metrics
    assert ma.registry is not mb.registry
    ma.observe_request("GET", "/healthz", 200, 0.001)
    assert (
        ma.registry.get_sample_value(
            "ragserve_http_requests_total", {"method": "GET", "route": "/healthz", "status": "200"}
        )
        == 1
    )
    assert (
        mb.registry.get_sample_value(
            "ragserve_http_requests_total", {"method": "GET", "route": "/healthz", "status": "200"}
        )
        is None
    )
    for app in (a, b):
        app.state.readiness.service.close()


def test_metrics_and_stats_need_the_key_when_keys_are_set(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=["sekret"])
    for client in ready_client(settings, make_service(settings)):
        for path in ("/metrics", "/v1/stats"):
            r = client.get(path)
            assert r.status_code == 401
            assert r.headers["x-request-id"]
            ok = client.get(path, headers={"authorization": "Bearer sekret"})
            assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200


# ------------------------------------------------------------------------------ /v1/stats


def test_stats_report_percentiles_caches_errors_memory_models_batchers(client: TestClient) -> None:
    for i in range(5):
        client.post("/v1/collections/docs/search", json={"query": f"barn {i % 2}", "rerank": True})
    client.get("/v1/collections/nope")
    stats = client.get("/v1/stats").json()
    route = stats["routes"][f"POST {SEARCH_ROUTE}"]
    assert route["count"] == 5
    assert route["p50_ms"] <= route["p95_ms"] <= route["p99_ms"] <= route["max_ms"]
    assert set(stats["stages"]) == set(SEARCH_STAGES)
    assert stats["requests"]["recent_errors"] == 1
    assert 0 < stats["requests"]["error_rate"] < 1
    query = stats["caches"]["query_embeddings"]
    assert (query["hits"], query["misses"]) == (3, 2)
    assert query["hit_rate"] == pytest.approx(0.6)
    assert stats["caches"]["rerank_scores"]["capacity"] == 50_000
    assert stats["memory_rss_bytes"] > 10 * 2**20
    assert stats["models"]["fake-embedder"]["kind"] == "embedder"
    embed = stats["batchers"]["embed-fake-embedder"]
    assert embed["batches"] == 2 and embed["pending"] == 0 and embed["mean_size"] == 1
    assert stats["collections"]["docs"]["documents"] == 3
    assert stats["window"] == {"max_observations": 10_000, "max_age_seconds": 300.0}


def test_stats_cli_prints_the_tables(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragserve import cli
    from ragserve.api import stats_view

    client.post("/v1/collections/docs/search", json={"query": "barn"})
    data = client.get("/v1/stats").json()
    seen: list[tuple[str, str | None]] = []

    def fake_fetch(url: str, api_key: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        seen.append((url, api_key))
        return data

    monkeypatch.setattr(stats_view, "fetch_stats", fake_fetch)
    monkeypatch.setattr(cli, "console", Console(width=200))
    result = CliRunner().invoke(cli.app, ["stats", "--url", "http://h:1", "--api-key", "k"])
    assert result.exit_code == 0, result.output
    assert seen == [("http://h:1", "k")]
    for text in ("routes", SEARCH_ROUTE, "search stages", "embed", "query_embeddings", "docs"):
        assert text in result.output


def test_stats_cli_says_when_the_server_is_unreachable() -> None:
    from ragserve import cli

    result = CliRunner().invoke(cli.app, ["stats", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "cannot reach" in result.output


# ------------------------------------------------------------------------------ request id + logs


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    r = client.get("/healthz", headers={"x-request-id": "abc-123 from client"})
    assert r.headers["x-request-id"] == "abc-123 from client"
    made = client.get("/healthz").headers["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert (
        client.get("/healthz", headers={"x-request-id": "x" * 129}).headers["x-request-id"]
        != "x" * 129
    )
    assert request_id_from([(b"x-request-id", b"caf\xc3\xa9")]) != "café"
    assert request_id_from([(b"x-request-id", b"tab\there")]) != "tab\there"
    assert request_id_from([(b"x-request-id", b"   ")]).strip()
    assert request_id_from([(b"x-request-id", b"x" * 128)]) == "x" * 128


def test_request_id_is_echoed_on_every_error(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=1024)
    service = make_service(settings, BrokenEmbedder(64, "fake-embedder"))
    for client in ready_client(settings, service):
        _setup_small = client.post("/v1/collections", json={"name": "docs"})
        assert _setup_small.status_code == 201
        cases = {
            404: client.get("/v1/collections/missing", headers={"x-request-id": "r404"}),
            405: client.put("/v1/collections/docs", headers={"x-request-id": "r405"}),
            413: client.post(
                "/v1/embeddings", content=b"x" * 2048, headers={"x-request-id": "r413"}
            ),
            422: client.post(
                "/v1/embeddings", json={"input": []}, headers={"x-request-id": "r422"}
            ),
            500: client.post(
                "/v1/collections/docs/search",
                json={"query": "boom"},
                headers={"x-request-id": "r500"},
            ),
        }
        for status, response in cases.items():
            assert response.status_code == status, (status, response.text)
            assert response.headers["x-request-id"] == f"r{status}"
            error_of(response)
        assert error_of(cases[500]) == {
            "type": "internal_error",
            "message": "internal server error",
        }
        samples = _samples(client)
        assert _sum(samples, "ragserve_http_errors_total", type="internal_error", status="500") == 1
        assert _sum(samples, "ragserve_http_errors_total", status="413") == 1
        assert samples[("ragserve_http_requests_in_flight", frozenset())] == 1  # the scrape itself


def test_one_json_access_line_per_request(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ragserve.access")
    caplog.clear()
    client.post(
        "/v1/collections/docs/search",
        json={"query": "barn", "rerank": True},
        headers={"x-request-id": "search-1"},
    )
    client.post(
        "/v1/collections/docs/search",
        json={"query": "barn", "rerank": True},
        headers={"x-request-id": "search-2"},
    )
    client.get("/v1/collections/missing", headers={"x-request-id": "missing-1"})
    client.get("/healthz")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "ragserve.access"]
    assert len(lines) == 4
    first, second, missing, health = lines
    for line in lines:
        assert {"ts", "request_id", "method", "route", "path", "status", "latency_ms"} <= set(line)
        assert line["latency_ms"] > 0
    assert first["request_id"] == "search-1"
    assert (first["method"], first["route"], first["status"]) == ("POST", SEARCH_ROUTE, 200)
    assert first["path"] == "/v1/collections/docs/search"
    assert set(first["stages_ms"]) == {*SEARCH_STAGES}
    assert first["cache"]["query_embeddings"] == {"hits": 0, "misses": 1}
    assert second["cache"]["query_embeddings"] == {"hits": 1, "misses": 0}
    assert second["cache"]["rerank_scores"]["misses"] == 0
    assert second["cache"]["rerank_scores"]["hits"] >= 1
    assert (missing["status"], missing["error"], missing["request_id"]) == (
        404,
        "collection_not_found",
        "missing-1",
    )
    assert missing["route"] == "/v1/collections/{name}"
    assert "stages_ms" not in health and "cache" not in health and "error" not in health


def test_without_observability_there_is_no_metrics_route(tmp_path: Path) -> None:
    settings: Settings = make_settings(tmp_path)
    app = create_app(settings, make_service(settings), observability=False)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 404
        assert "x-request-id" not in client.get("/healthz").headers
    app.state.readiness.service.close()


def test_the_grafana_dashboard_queries_only_metrics_the_server_exposes(client: TestClient) -> None:
    client.post("/v1/collections/docs/search", json={"query": "barn", "rerank": True})
    client.get("/v1/collections/nope")  # labelled counters have no series before a first event
    exposed = {name for name, _ in _samples(client)}
    path = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "ragserve.json"
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\b((?:ragserve|process)_[a-z_]+)\b", e)}
    assert used and used <= exposed, used - exposed
    assert any("histogram_quantile(0.99" in e for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_unknown_methods_share_one_label(client: TestClient) -> None:
    for method in ("FOO", "BAR", "BAZ"):
        assert client.request(method, "/healthz").status_code == 405
    samples = _samples(client)
    methods = {dict(ls).get("method") for n, ls in samples if n == "ragserve_http_requests_total"}
    assert "OTHER" in methods and not methods & {"FOO", "BAR", "BAZ"}
    assert _sum(samples, "ragserve_http_requests_total", method="OTHER", status="405") == 3
