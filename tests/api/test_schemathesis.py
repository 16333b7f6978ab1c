"""Property-based API testing from our own OpenAPI description (schemathesis).

Every operation gets generated requests (valid and invalid); no response may be a 500, and each
must match the status codes, content types and schemas the OpenAPI document declares.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from ragserve.api.app import create_app
from ragserve.service import RetrievalService
from tests.fakes import make_service, make_settings


def _app_for_schema() -> tuple[object, RetrievalService]:
    tmp = Path(tempfile.mkdtemp(prefix="ragserve-schemathesis-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    # With a global key, as a server that has (or may get) keys: creating a scoped key through
    # POST /v1/keys then changes nothing for the operations tested after it.
    config = make_settings(tmp, api_keys=[KEY])
    service = make_service(config)
    atexit.register(service.close)
    service.create_collection("docs")
    app = create_app(config, service)
    # Requests here bypass the lifespan: the service passed in is ready as it is.
    app.state.readiness.ready = True
    return app, service


KEY = "schemathesis-key"
APP, SERVICE = _app_for_schema()

#: Operations whose bodies carry rules a static schema cannot state, so a schema-valid request
#: can rightly get a 422: `dimensions` at most the chosen model's dimension (embeddings);
#: `top_k` at most RAGSERVE_MAX_TOP_K and a filter that parses (search). Every other check, and
#: the positive-data check on every other operation, still applies. A collection's default
#: fusion (create, update) needs at least one weight above 0, as a search's does.
SEMANTIC_422 = {
    "POST /v1/embeddings",
    "POST /v1/collections/{name}/search",
    "POST /v1/collections",
    "PATCH /v1/collections/{name}",
}
# create_job starts work that outlives its request (and runs concurrently with the operations
# tested after it); tests/api/test_jobs.py checks its contract.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(operation_id="create_job")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms_to_its_openapi_description(case: schemathesis.Case) -> None:
    excluded = []
    if case.operation.label in SEMANTIC_422:
        excluded.append(positive_data_acceptance)
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=excluded)
