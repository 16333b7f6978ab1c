"""Every operation of the HTTP API has a method on both clients (a new route fails this until the
client has it)."""

from __future__ import annotations

import inspect

from ragserve.api.app import create_app
from ragserve.client import AsyncClient, Client

#: Operation ids whose method has another name.
RENAMED = {"healthz": "health", "readyz": "ready", "create_embeddings": "embeddings"}


def test_every_operation_has_a_sync_and_an_async_method() -> None:
    app = create_app()
    paths = app.openapi()["paths"]
    operations = {op["operationId"] for ops in paths.values() for op in ops.values()}
    assert {"search", "add_documents", "healthz"} <= operations
    for op in sorted(operations):
        name = RENAMED.get(op, op)
        assert callable(getattr(Client, name, None)), f"Client has no method for {op}"
        method = getattr(AsyncClient, name, None)
        assert inspect.iscoroutinefunction(method), f"AsyncClient has no coroutine for {op}"
        sync_params = list(inspect.signature(getattr(Client, name)).parameters)
        assert sync_params == list(inspect.signature(method).parameters), op
