"""``/docs`` (Swagger UI) and ``/redoc`` with their scripts, styles and icon served by ragserve.

FastAPI's own pages load Swagger UI and ReDoc from a public CDN, so they are blank on a host
without internet. The files here come from the ``fastapi-offline`` wheel (MIT; Swagger UI 5 and
ReDoc 2 bundles, a favicon), mounted at ``/docs-static``; the pages are FastAPI's, pointed at
them, without Google Fonts and without Swagger UI's online validator badge.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_URL = "/docs-static"

docs_router = APIRouter(include_in_schema=False)


def _urls(request: Request) -> tuple[str, str]:
    """The OpenAPI document's URL and the static files' prefix, under any ``root_path``."""
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{root}{request.app.openapi_url}", f"{root}{STATIC_URL}"


@docs_router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, static = _urls(request)
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{static}/swagger-ui-bundle.js",
        swagger_css_url=f"{static}/swagger-ui.css",
        swagger_favicon_url=f"{static}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},  # no badge image from validator.swagger.io
    )


@docs_router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    openapi_url, static = _urls(request)
    return get_redoc_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{static}/redoc.standalone.js",
        redoc_favicon_url=f"{static}/favicon.png",
        with_google_fonts=False,
    )


def install_docs(app: FastAPI) -> None:
    """Add the pages and their files (create the app with ``docs_url=None, redoc_url=None``)."""
    app.include_router(docs_router)
    directory = files("fastapi_offline") / "static"
    app.mount(STATIC_URL, StaticFiles(directory=str(directory)), name="docs-static")
