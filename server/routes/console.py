"""The web console: `GET /` (its page) and `GET /console/{asset}` (its scripts and styles).

Plain files shipped in the package (`server/console/static/`, package data), served as
they are: no build step, no CDN. Both routes are open without the API key, as the page must
load before it can ask for the key; the console then calls the `/v1` API with it.
Only the files in that folder are served, by name (no sub-folders, no `..`).
"""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from server.errors import NotFound
from server.routes.spec import api_route

STATIC = Path(__file__).resolve().parent.parent / "console" / "static"

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
    "": "text/plain; charset=utf-8",
}
#: the page is small and changes with the package: browsers revalidate every time
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def _assets() -> dict[str, Path]:
    """The servable files by name, read once: the folder's plain files and nothing else."""
    if not STATIC.is_dir():
        return {}
    return {
        p.name: p
        for p in STATIC.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix in _TYPES
    }


_ASSETS = _assets()


def _file(name: str) -> Response:
    path = _ASSETS.get(name)
    if path is None:
        raise NotFound(f"Invalid URL (GET /console/{name})", code="unknown_url")
    return FileResponse(path, media_type=_TYPES[path.suffix], headers=_HEADERS)


async def console_page(request: Request) -> Response:
    return _file("index.html")


async def console_asset(request: Request) -> Response:
    return _file(request.path_params["asset"])


routes = [
    api_route(
        "/", console_page, "GET",
        operation_id="console", summary="The web console", tag="pomar",
        binary=True, public=True, media_type="text/html",
        description="A pomar page (not in OpenAI's API): the web console (models, "
        "playground, dataset report, fine-tuning), calling this /v1 API from the browser; "
        "open without a key (it asks for one when the server has a key).",
    ),
    api_route(
        "/console/{asset}", console_asset, "GET",
        operation_id="consoleAsset", summary="A file of the web console", tag="pomar",
        binary=True, public=True, media_type="*/*",
        path_params={"asset": "The file's name (scripts, styles, the vendored chart library)."},
        description="A pomar endpoint: the console's scripts and styles, shipped in the "
        "package; 404 for any other name.",
    ),
]  # fmt: skip
