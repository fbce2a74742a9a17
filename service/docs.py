"""The interactive API docs (``/docs``), served with their own assets.

FastAPI's ``/docs`` page loads Swagger UI from a CDN: a deployment without internet access gets a
blank page, and every visit tells a third party about it. Here the page loads Swagger UI's
JavaScript and CSS from ``/docs/assets``, a directory of the three files it needs, taken out of
``swagger-ui-bundle`` 1.1.0's wheel on PyPI (Swagger UI 4.15.5, Apache-2.0; hash-checked) by
``argus docs-assets``; the Docker image carries them. Where:

* ``ARGUS_DOCS_ASSETS`` names the directory (a service with a missing one refuses to start);
* unset, the copy in the cache (``$ARGUS_CACHE/swagger-ui``) when ``argus docs-assets`` made one;
* otherwise FastAPI's own page, from the CDN, as a fallback (logged at start).

``ARGUS_DOCS=off`` serves no docs at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from model.data.fetch import cache_dir, from_wheel

log = logging.getLogger("argus.service")

SWAGGER_UI = "swagger-ui-bundle==1.1.0"
SWAGGER_UI_WHEEL = "swagger_ui_bundle-1.1.0-py3-none-any.whl"
SWAGGER_UI_SHA256 = "f7526f7bb99923e10594c54247265839bec97e96b0438561ac86faf40d40dd57"
_VENDOR = "swagger_ui_bundle/vendor/swagger-ui-4.15.5/"
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


def default_assets() -> Path:
    return cache_dir() / "swagger-ui"


def fetch_assets(directory: Path | None = None) -> Path:
    """The docs' assets in ``directory`` (default: the cache), downloaded when missing."""
    directory = directory or default_assets()
    if not holds_assets(directory):
        members = {_VENDOR + name: name for name in ASSETS}
        from_wheel(SWAGGER_UI, SWAGGER_UI_WHEEL, SWAGGER_UI_SHA256, members, directory)
    return directory


def holds_assets(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ASSETS)


def add_docs(app: FastAPI, assets: Path | None) -> None:
    """``/docs`` on ``app`` with the assets in ``assets`` (or the cache's copy); without either,
    FastAPI's CDN page. Call it on an app created with ``docs_url=None``."""
    if assets is not None and not holds_assets(assets):
        raise ValueError(
            f"ARGUS_DOCS_ASSETS={assets}: no Swagger UI assets there "
            f"(run `argus docs-assets --dir {assets}`, or set ARGUS_DOCS=off)"
        )
    found = assets or (default_assets() if holds_assets(default_assets()) else None)
    if found is None:
        log.warning("no local Swagger UI assets (argus docs-assets): /docs loads them from a CDN")
        cdn = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} API")

        @app.get("/docs", include_in_schema=False)
        async def cdn_docs() -> HTMLResponse:
            return cdn

        return
    app.mount("/docs/assets", StaticFiles(directory=found), name="docs-assets")
    page = get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{app.title} API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="/docs/assets/favicon-32x32.png",
    )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return page
