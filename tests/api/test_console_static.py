"""The console's files: served from the package with a same-origin policy, nothing external."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from ragserve.console import STATIC


def test_the_console_loads_nothing_from_elsewhere() -> None:
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
        assert "<script>" not in text, path.name  # no inline script (the CSP forbids it)


def test_ui_serves_the_page_with_a_same_origin_policy(client: TestClient) -> None:
    r = client.get("/ui", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and "<title>ragserve console</title>" in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name in ("console.js", "console.css"):
        assert name in page.text and client.get(f"/ui/{name}").status_code == 200
    assert client.get("/ui/missing.js").status_code == 404


def test_console_files_are_counted_under_one_route(client: TestClient) -> None:
    assert client.get("/ui/console.js").status_code == 200
    routes = client.get("/v1/stats").json()["routes"]
    assert "GET /ui/{path}" in routes and not any("unrouted" in r for r in routes), routes
