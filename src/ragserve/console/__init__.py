"""The web console at ``/ui``: static files in this package (no build step, nothing fetched from
elsewhere), plain JavaScript over the HTTP API. The page itself holds no data; every figure it
shows comes from a /v1 route, so with keys set it asks for a key (kept in the tab's
``sessionStorage``) and sends it as a bearer token like any client."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
#: Only this origin's files and API: no inline script, no CDN, no framing by other sites.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class _Static(StaticFiles):
    #: What the request metrics and the access log name these requests by (a mounted app has no
    #: route of its own there: they would count as "unrouted").
    route = SimpleNamespace(path="/ui/{path}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route
        await super().__call__(scope, receive, send)

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_HEADERS)
        return response


def install_console(app: FastAPI) -> None:
    """Serve the console at ``/ui/`` (``/ui`` redirects there)."""

    @app.get("/ui", include_in_schema=False)
    async def ui() -> RedirectResponse:
        return RedirectResponse("/ui/")

    app.mount("/ui", _Static(directory=STATIC, html=True), name="ui")
