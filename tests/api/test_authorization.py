"""Scoped keys over HTTP: every route of the app is checked against every kind of key.

The routes are enumerated from ``app.routes``: a new route without a case below fails
:func:`test_every_route_has_an_authorization_case`, so it cannot ship unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient

from ragserve.keys import PREFIX, KeyStore
from tests.fakes import error_of, make_service, make_settings, ready_client

GLOBAL_KEY = "global-test-key-0123456789"


@dataclass(frozen=True)
class Case:
    """One request a route answers; ``{c}`` is the collection, ``{job}`` a job of it."""

    method: str
    path: str
    role: str  # read / write / admin
    scope: str = "collection"  # collection: of the path/body; all: every one; own: any key
    json: dict[str, Any] | None = None
    params: dict[str, str] = field(default_factory=dict)


CASES: dict[str, Case] = {
    "list_collections": Case("GET", "/v1/collections", "read", "own"),
    "create_collection": Case("POST", "/v1/collections", "write", json={"name": "{c}"}),
    "get_collection": Case("GET", "/v1/collections/{c}", "read"),
    "update_collection": Case(
        "PATCH", "/v1/collections/{c}", "write", json={"fusion": {"method": "rrf"}}
    ),
    "delete_collection": Case("DELETE", "/v1/collections/{c}", "admin"),
    "add_documents": Case(
        "POST",
        "/v1/collections/{c}/documents",
        "write",
        json={"documents": [{"id": "new", "text": "a new document"}]},
    ),
    "get_document": Case("GET", "/v1/collections/{c}/documents/d1", "read"),
    "delete_document": Case("DELETE", "/v1/collections/{c}/documents/d1", "write"),
    "search": Case("POST", "/v1/collections/{c}/search", "read", json={"query": "cats"}),
    "create_embeddings": Case("POST", "/v1/embeddings", "read", "own", json={"input": "x"}),
    "rerank": Case("POST", "/v1/rerank", "read", "own", json={"query": "q", "documents": ["d"]}),
    "tokenize": Case("POST", "/v1/tokenize", "read", "own", json={"input": "x"}),
    "create_key": Case("POST", "/v1/keys", "admin", "all", json={"name": "k"}),
    "list_keys": Case("GET", "/v1/keys", "admin", "all"),
    "revoke_key": Case("DELETE", "/v1/keys/000000000000", "admin", "all"),
    "create_job": Case(
        "POST", "/v1/collections/{c}/jobs", "write", json={"documents": [{"text": "in a job"}]}
    ),
    "list_jobs": Case("GET", "/v1/jobs", "read", "own"),
    "get_job": Case("GET", "/v1/jobs/{job}", "read"),
    "cancel_job": Case("POST", "/v1/jobs/{job}/cancel", "write"),
    "metrics": Case("GET", "/metrics", "read", "all"),
    "stats": Case("GET", "/v1/stats", "read", "all"),
}
#: Routes that need no key (method, path).
PUBLIC = {
    ("GET", "/openapi.json"),
    ("HEAD", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("HEAD", "/healthz"),
    ("GET", "/readyz"),
    ("HEAD", "/readyz"),
    ("*", "/docs-static"),  # the Swagger UI / ReDoc files
    ("GET", "/ui"),  # the web console: static files; it asks for a key and calls /v1 with it
    ("*", "/ui"),
}
#: Routes that check the key themselves (not a /v1 router dependency): path -> a request.
SELF_CHECKED = {"/mcp": Case("POST", "/mcp", "read", "own", json={})}
ROLES = ("read", "write", "admin")


@dataclass
class Keys:
    jobs: dict[str, str]  # collection -> a job of it
    read_a: str
    write_a: str
    admin_a: str
    read_all: str


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[tuple[TestClient, Keys]]:
    settings = make_settings(tmp_path, api_keys=[GLOBAL_KEY])
    for client in ready_client(settings, make_service(settings)):
        auth = {"Authorization": f"Bearer {GLOBAL_KEY}"}
        jobs = {}
        for name in ("A", "B"):
            assert client.post("/v1/collections", json={"name": name}, headers=auth).is_success
            docs = {"documents": [{"id": "d1", "text": "cats purr and chase mice"}]}
            r = client.post(f"/v1/collections/{name}/documents", json=docs, headers=auth)
            assert r.is_success
            r = client.post(f"/v1/collections/{name}/jobs", json=docs, headers=auth)
            jobs[name] = r.json()["id"]
        store: KeyStore = client.app.state.keys  # type: ignore[attr-defined]
        keys = Keys(
            jobs=jobs,
            read_a=store.create("ra", "read", ["A"])[0],
            write_a=store.create("wa", "write", ["A"])[0],
            admin_a=store.create("aa", "admin", ["A"])[0],
            read_all=store.create("r*", "read")[0],
        )
        yield client, keys


def _send(
    client: TestClient, case: Case, collection: str, key: str | None, jobs: dict[str, str]
) -> int:
    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("{c}", collection).replace("{job}", jobs.get(collection, ""))
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    r = client.request(
        case.method, fill(case.path), json=fill(case.json), params=case.params, headers=headers
    )
    if r.status_code in (401, 403):
        error_of(r)  # the one error shape
    return r.status_code


def _allowed(key_role: str, key_all: bool, case: Case, collection: str) -> bool:
    if ROLES.index(key_role) < ROLES.index(case.role):
        return False
    if case.scope == "own":
        return True
    if case.scope == "all":
        return key_all
    return key_all or collection == "A"


def test_every_route_has_an_authorization_case(app_client: tuple[TestClient, Keys]) -> None:
    client, _ = app_client
    seen_ops, public = set(), set()
    for context in iter_route_contexts(client.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        methods = getattr(route, "methods", None) or {"*"}
        if isinstance(route, APIRoute) and route.dependencies:
            assert route.operation_id, f"{route.path} has no operation id"
            seen_ops.add(route.operation_id)
        elif context.path in SELF_CHECKED:
            continue
        else:
            public |= {(m, context.path) for m in methods}
    assert seen_ops == set(CASES), "routes without an authorization case (or stale cases)"
    assert public == PUBLIC, "routes open without a key: add them to PUBLIC only if they must be"


@pytest.mark.parametrize("operation", sorted(CASES))
def test_route_obeys_every_kind_of_key(app_client: tuple[TestClient, Keys], operation: str) -> None:
    client, keys = app_client
    case = CASES[operation]
    assert _send(client, case, "A", None, keys.jobs) == 401
    assert _send(client, case, "A", "rsk_000000000000_" + "x" * 43, keys.jobs) == 401
    assert _send(client, case, "A", GLOBAL_KEY + "x", keys.jobs) == 401
    scoped = [("read", False, keys.read_a), ("write", False, keys.write_a),
              ("admin", False, keys.admin_a), ("read", True, keys.read_all)]  # fmt: skip
    for collection in ("B", "A"):  # B first: an allowed delete on A must not hide the rest
        for role, every, key in scoped:
            status = _send(client, case, collection, key, keys.jobs)
            want_allowed = _allowed(role, every, case, collection)
            assert (status not in (401, 403)) == want_allowed, (
                f"{operation} on {collection} with a {role} key "
                f"({'every collection' if every else 'A only'}): {status}"
            )
    assert _send(client, case, "B", GLOBAL_KEY, keys.jobs) not in (401, 403)


@pytest.mark.parametrize("path", sorted(SELF_CHECKED))
def test_routes_that_check_keys_themselves_take_scoped_keys(
    app_client: tuple[TestClient, Keys], path: str
) -> None:
    client, keys = app_client
    case = SELF_CHECKED[path]
    assert _send(client, case, "A", None, keys.jobs) == 401
    assert _send(client, case, "A", keys.read_a[:-1] + "#", keys.jobs) == 401
    assert _send(client, case, "A", keys.read_a, keys.jobs) not in (401, 403)
    assert _send(client, case, "A", GLOBAL_KEY, keys.jobs) not in (401, 403)


def test_public_routes_need_no_key(app_client: tuple[TestClient, Keys]) -> None:
    client, _ = app_client
    for method, path in {(m, p) for m, p in PUBLIC if m != "*"}:
        assert client.request(method, path).status_code == 200, (method, path)


def test_read_only_key_is_refused_writes_to_its_collection_and_anything_of_another(
    app_client: tuple[TestClient, Keys],
) -> None:
    client, keys = app_client
    auth = {"Authorization": f"Bearer {keys.read_a}"}
    docs = {"documents": [{"id": "x", "text": "text"}]}
    r = client.post("/v1/collections/A/documents", json=docs, headers=auth)
    assert r.status_code == 403 and error_of(r)["type"] == "forbidden"
    assert client.post("/v1/collections/A/search", json={"query": "cats"}, headers=auth).is_success
    for method, path in [("GET", "/v1/collections/B"), ("GET", "/v1/collections/B/documents/d1")]:
        assert client.request(method, path, headers=auth).status_code == 403
    r = client.post("/v1/collections/B/search", json={"query": "cats"}, headers=auth)
    assert r.status_code == 403
    listed = client.get("/v1/collections", headers=auth).json()["collections"]
    assert [c["name"] for c in listed] == ["A"]
    jobs = client.get("/v1/jobs", headers=auth).json()["jobs"]
    assert [j["collection"] for j in jobs] == ["A"]
    assert client.get(f"/v1/jobs/{keys.jobs['B']}", headers=auth).status_code == 403


def test_keys_through_the_admin_route_and_revocation(app_client: tuple[TestClient, Keys]) -> None:
    client, _ = app_client
    admin = {"Authorization": f"Bearer {GLOBAL_KEY}"}
    r = client.post("/v1/keys", json={"name": "ci", "role": "write", "collections": ["B"]},
                    headers=admin)  # fmt: skip
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("rsk_") and created["role"] == "write" and created["collections"] == ["B"]
    listed = client.get("/v1/keys", headers=admin).json()["keys"]
    assert created["id"] in {k["id"] for k in listed}
    assert all("key" not in k and key not in str(k) for k in listed)
    mine = {"Authorization": f"Bearer {key}"}
    docs = {"documents": [{"id": "y", "text": "more text"}]}
    assert client.post("/v1/collections/B/documents", json=docs, headers=mine).is_success
    r = client.delete(f"/v1/keys/{created['id']}", headers=admin)
    assert r.status_code == 200 and r.json()["revoked_at"] is not None
    assert client.get("/v1/collections/B", headers=mine).status_code == 401
    assert client.delete("/v1/keys/nope", headers=admin).status_code == 404
    bad = client.post("/v1/keys", json={"name": "x", "role": "root"}, headers=admin)
    assert bad.status_code == 422
    bad = client.post("/v1/keys", json={"name": "x", "collections": ["no/slash"]}, headers=admin)
    assert bad.status_code == 422


def test_a_scoped_key_alone_turns_authentication_on(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)  # no global keys
    for client in ready_client(settings, make_service(settings)):
        assert client.get("/v1/collections").status_code == 200  # open: no key exists
        assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})
        store: KeyStore = client.app.state.keys  # type: ignore[attr-defined]
        key, _ = store.create("only", "admin")
        assert client.get("/v1/collections").status_code == 401
        ok = client.get("/v1/collections", headers={"Authorization": f"Bearer {key}"})
        assert ok.status_code == 200
        assert "bearer" in client.get("/openapi.json").json()["components"]["securitySchemes"]


def test_keys_never_reach_the_logs(
    app_client: tuple[TestClient, Keys], caplog: pytest.LogCaptureFixture
) -> None:
    client, keys = app_client
    caplog.set_level(logging.DEBUG)
    wrong = keys.read_a[:-4] + "AAAA"
    for key in (keys.read_a, keys.write_a, wrong, GLOBAL_KEY):
        headers = {"Authorization": f"Bearer {key}"}
        client.get("/v1/collections/A", headers=headers)
        client.post("/v1/collections/A/documents", json={"documents": []}, headers=headers)
        client.get("/v1/collections/B/documents/zz", headers=headers)
    secrets = [keys.read_a, keys.write_a, wrong, GLOBAL_KEY]
    # The secret part too ("rsk_<id>_<secret>"): split once, since the secret itself (urlsafe
    # base64) may hold "_", and its last piece can be a letter that any log line contains.
    secrets += [k.removeprefix(PREFIX).split("_", 1)[1] for k in secrets[:3]]
    assert caplog.records  # the access log did log these requests
    assert not [s for s in secrets if s in caplog.text]
