"""The Starlette application of `somnus serve`: pages, the JSON API and the live stream.

Routes (all behind `security.Guard` but `/login` and `/static/`):
  GET /                 the overview page; ?kind=&state=&pool=&owner= filter it
  GET /fragment/rows    its table body alone, which the page fetches again on each event
  GET /api/overview     the same rows as JSON
  GET /events           server-sent events: `overview` with the new version number
  GET /objects/KIND/NAME                        one object: spec, actual, conditions,
                                                packs, snapshots, backups, its events, its agent's charts
  GET /objects/vm/NAME/fragment/charts          the charts alone, fetched again on each `samples` event
  GET /api/objects/vm/NAME/samples              the agent's figures of the last hour as JSON
  POST /objects/KIND/NAME/rollback/SNAPSHOT     `somnus rollback`, from its button
  POST /objects/KIND/NAME/restore/BACKUP        `somnus restore` (the guest as it is is backed up first)
  GET /plan             the plan in `diff`'s words, with its Apply button
  GET /history          the journal: ?object=&outcome=&since= filter it, ?q= searches it by meaning
  GET /gitops           the revisions `somnus gitops` applied or quarantined, and the one in force
  POST /apply?replace=vm/NAME...                apply it (`apply_run`); steps come as `step` events
Templates are Jinja2 (autoescaped), the page's one script is `static/app.js` (no
inline script: the Content-Security-Policy forbids it, and no build step or CDN).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
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

from somnus_reconciler.journal import Journal, RevisionRecord
from somnus_reconciler.web import charts, history_page, object_page, security
from somnus_reconciler.web.apply_run import ApplyRun
from somnus_reconciler.web.guest_samples import GuestSamples
from somnus_reconciler.web.live import Dashboard
from somnus_reconciler.web.loop_run import LoopRun
from somnus_reconciler.web.overview import Row

_HERE = Path(__file__).resolve().parent
FILTERS = ("kind", "state", "pool", "owner")
_KEEPALIVE_S = 15.0


def make_app(dashboard: Dashboard, guard: security.Guard, samples: GuestSamples,
             following: LoopRun | None = None) -> Starlette:
    """`samples` and `following` (the loop of `serve --watch` or `--gitops`) start and stop with the app."""
    pages = _Pages(dashboard, guard, samples, following=following is not None)
    return Starlette(
        routes=[
            Route("/", pages.overview), Route("/fragment/rows", pages.fragment), Route("/api/overview", pages.api),
            Route("/events", pages.events), Route("/objects/{kind:str}/{name:str}", pages.one),
            Route("/objects/{kind:str}/{name:str}/rollback/{snapshot:str}", pages.rollback, methods=["POST"]),
            Route("/objects/{kind:str}/{name:str}/restore/{backup:str}", pages.restore, methods=["POST"]),
            Route("/objects/vm/{name:str}/fragment/charts", pages.charts),
            Route("/api/objects/vm/{name:str}/samples", pages.samples),
            Route("/plan", pages.plan), Route("/apply", pages.apply, methods=["POST"]), Route("/history", pages.history),
            Route("/gitops", pages.gitops),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
        lifespan=lambda app: _running(dashboard, samples, following),
    )


class _Pages:
    """The route handlers, over one dashboard."""

    def __init__(self, dashboard: Dashboard, guard: security.Guard, samples: GuestSamples, *,
                 following: bool) -> None:
        self._dashboard = dashboard
        self._samples = samples
        self._guard = guard
        self._following = following
        self._templates = Jinja2Templates(directory=_HERE / "templates")
        self._apply = ApplyRun(dashboard)
        self._templates.env.filters["clock"] = lambda at: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))

    def _rows(self, request: Request) -> list[Row]:
        wanted = {f: request.query_params.get(f, "") for f in FILTERS}
        return [row for row in self._dashboard.overview.rows
                if all(not value or getattr(row, f) == value for f, value in wanted.items())]

    def _context(self, request: Request) -> dict[str, object]:
        current = self._dashboard.overview
        choices = {f: sorted({str(getattr(r, f)) for r in current.rows} - {""}) for f in FILTERS}
        return {"rows": self._rows(request), "problems": current.problems, "version": self._dashboard.version,
                "filters": {f: request.query_params.get(f, "") for f in FILTERS}, "choices": choices,
                "csrf": self._guard.csrf_token(request), "following": self._following}

    async def overview(self, request: Request) -> Response:
        return self._templates.TemplateResponse(request, "overview.html", self._context(request))

    async def fragment(self, request: Request) -> Response:
        return self._templates.TemplateResponse(request, "_rows.html", self._context(request))

    async def api(self, request: Request) -> Response:
        current = self._dashboard.overview
        return JSONResponse({"version": self._dashboard.version, "at": current.at, "problems": list(current.problems),
                             "items": [_json(row) for row in self._rows(request)]})

    async def events(self, request: Request) -> Response:
        dashboard = self._dashboard
        queue = dashboard.subscribe()

        async def stream() -> AsyncIterator[str]:
            try:
                yield f"event: overview\ndata: {dashboard.version}\n\n"
                while not await request.is_disconnected():
                    try:
                        event, data = await asyncio.wait_for(queue.get(), timeout=_KEEPALIVE_S)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    yield f"event: {event}\ndata: {data}\n\n"
            finally:
                dashboard.unsubscribe(queue)

        return StreamingResponse(stream(), media_type="text/event-stream")

    async def one(self, request: Request) -> Response:
        kind, name = request.path_params["kind"], request.path_params["name"]
        found = next((r for r in self._dashboard.overview.rows if (r.kind, r.name) == (kind, name)), None)
        if found is None:
            return PlainTextResponse(f"no {kind}/{name} here", status_code=404)
        details = await run_in_threadpool(object_page.details, found, self._dashboard.settings)
        return self._templates.TemplateResponse(request, "object.html", {
            **self._context(request), "row": found, "details": details, **self._charts(name)})

    def _charts(self, vm: str) -> dict[str, object]:
        series = self._samples.series(vm)
        return {"charts": charts.charts(series, now=time.time()), "sample_every": self._samples.interval_s}

    async def charts(self, request: Request) -> Response:
        return self._templates.TemplateResponse(request, "_charts.html", self._charts(request.path_params["name"]))

    async def samples(self, request: Request) -> Response:
        series = self._samples.series(request.path_params["name"])
        return JSONResponse({"interval_s": self._samples.interval_s,
                             "samples": [dataclasses.asdict(sample) for sample in series]})

    async def plan(self, request: Request) -> Response:
        return self._templates.TemplateResponse(request, "plan.html",
                                                {**self._context(request), "plan": self._dashboard.overview.plan})

    async def history(self, request: Request) -> Response:
        asked = {f: request.query_params.get(f, "") for f in history_page.FIELDS}
        found = await run_in_threadpool(history_page.answer, asked, self._dashboard.settings)
        return self._templates.TemplateResponse(request, "history.html",
                                                {**self._context(request), "asked": asked, "history": found})

    async def gitops(self, request: Request) -> Response:
        with Journal(self._dashboard.settings.journal_path) as journal:
            records = journal.revisions()
        sources: dict[str, list[RevisionRecord]] = {}
        for record in records:
            sources.setdefault(record.source, []).append(record)
        in_force = {source: next((r.revision for r in rs if r.state == "good"), "") for source, rs in sources.items()}
        return self._templates.TemplateResponse(
            request, "gitops.html", {**self._context(request), "sources": sources, "in_force": in_force})

    async def apply(self, request: Request) -> Response:
        replace = frozenset(request.query_params.getlist("replace"))
        if not self._apply.start(replace):
            return JSONResponse({"ok": False, "message": "an apply started here still runs"}, status_code=409)
        return JSONResponse({"ok": True, "message": "applying..."}, status_code=202)

    async def rollback(self, request: Request) -> Response:
        return await self._revert(request, object_page.roll_back, request.path_params["snapshot"])

    async def restore(self, request: Request) -> Response:
        return await self._revert(request, object_page.restore, request.path_params["backup"])

    async def _revert(self, request: Request, revert: object_page.Revert, to: str) -> Response:
        kind, name = request.path_params["kind"], request.path_params["name"]
        said = await run_in_threadpool(revert, kind, name, to, self._dashboard.paths, self._dashboard.settings)
        await run_in_threadpool(self._dashboard.refresh)
        return JSONResponse({"ok": said.ok, "message": said.message}, status_code=200 if said.ok else 409)


@contextlib.asynccontextmanager
async def _running(dashboard: Dashboard, samples: GuestSamples, following: LoopRun | None) -> AsyncIterator[None]:
    dashboard.start()
    samples.start()
    if following is not None:
        following.start()
    try:
        yield
    finally:
        if following is not None:
            following.stop()
        samples.stop()
        dashboard.stop()


def _json(row: Row) -> dict[str, object]:
    data = dataclasses.asdict(row)
    data["conditions"] = [dataclasses.asdict(c) for c in row.conditions]
    data["address"] = row.address
    return data
