"""The Starlette application of `somnus serve`: pages, the JSON API and the live stream.

Routes (all behind `security.Guard` but `/login` and `/static/`):
  GET /                 the overview page; ?kind=&state=&pool=&owner= filter it
  GET /fragment/rows    its table body alone, which the page fetches again on each event
  GET /api/overview     the same rows as JSON
  GET /events           server-sent events: `overview` with the new version number
  GET /objects/KIND/NAME                        one object: spec, actual, conditions,
                                                packs, snapshots, its events
  POST /objects/KIND/NAME/rollback/SNAPSHOT     `somnus rollback`, from its button
Templates are Jinja2 (autoescaped), the page's one script is `static/app.js` (no
inline script: the Content-Security-Policy forbids it, and no build step or CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from somnus_reconciler.web import object_page, security
from somnus_reconciler.web.live import Dashboard
from somnus_reconciler.web.overview import Row

_HERE = Path(__file__).resolve().parent
FILTERS = ("kind", "state", "pool", "owner")
_KEEPALIVE_S = 15.0


def make_app(dashboard: Dashboard, guard: security.Guard) -> Starlette:
    templates = Jinja2Templates(directory=_HERE / "templates")

    def rows(request: Request) -> list[Row]:
        wanted = {f: request.query_params.get(f, "") for f in FILTERS}
        return [row for row in dashboard.overview.rows
                if all(not value or getattr(row, f) == value for f, value in wanted.items())]

    def context(request: Request) -> dict[str, object]:
        current = dashboard.overview
        choices = {f: sorted({str(getattr(r, f)) for r in current.rows} - {""}) for f in FILTERS}
        return {"rows": rows(request), "problems": current.problems, "version": dashboard.version,
                "filters": {f: request.query_params.get(f, "") for f in FILTERS}, "choices": choices,
                "csrf": guard.csrf_token(request)}

    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "overview.html", context(request))

    async def fragment(request: Request) -> Response:
        return templates.TemplateResponse(request, "_rows.html", context(request))

    async def api(request: Request) -> Response:
        return JSONResponse({"version": dashboard.version, "at": dashboard.overview.at,
                             "problems": list(dashboard.overview.problems),
                             "items": [_json(row) for row in rows(request)]})

    async def events(request: Request) -> Response:
        queue = dashboard.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"event: overview\ndata: {dashboard.version}\n\n"
                while not await request.is_disconnected():
                    try:
                        version = await asyncio.wait_for(queue.get(), timeout=_KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: overview\ndata: {version}\n\n"
            finally:
                dashboard.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def one(request: Request) -> Response:
        kind, name = request.path_params["kind"], request.path_params["name"]
        found = next((r for r in dashboard.overview.rows if (r.kind, r.name) == (kind, name)), None)
        if found is None:
            return PlainTextResponse(f"no {kind}/{name} here", status_code=404)
        details = await run_in_threadpool(object_page.details, found, dashboard.settings)
        return templates.TemplateResponse(request, "object.html", {**context(request), "row": found,
                                                                   "details": details})

    async def rollback(request: Request) -> Response:
        kind, name, snapshot = (request.path_params[k] for k in ("kind", "name", "snapshot"))
        said = await run_in_threadpool(object_page.roll_back, kind, name, snapshot, dashboard.paths,
                                       dashboard.settings)
        await run_in_threadpool(dashboard.refresh)
        return JSONResponse({"ok": said.ok, "message": said.message}, status_code=200 if said.ok else 409)

    return Starlette(
        routes=[
            Route("/", page), Route("/fragment/rows", fragment), Route("/api/overview", api),
            Route("/events", events), Route("/objects/{kind:str}/{name:str}", one),
            Route("/objects/{kind:str}/{name:str}/rollback/{snapshot:str}", rollback, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
        lifespan=lambda app: _running(dashboard),
    )


@contextlib.asynccontextmanager
async def _running(dashboard: Dashboard) -> AsyncIterator[None]:
    dashboard.start()
    try:
        yield
    finally:
        dashboard.stop()


def _json(row: Row) -> dict[str, object]:
    data = dataclasses.asdict(row)
    data["conditions"] = [dataclasses.asdict(c) for c in row.conditions]
    data["address"] = row.address
    return data
