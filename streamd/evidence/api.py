"""HTTP routes of the evidence (mounted by streamd/api/server.py behind its ApiGuard)::

    GET /api/events?stream=&type=&since=&until=&limit=&cursor=   newest first; next_cursor pages on
    GET /api/events/{id}                                         one event with links and file sizes
    GET /api/events/{id}/snapshot.jpg | crop.jpg | clip.mp4      the files; clip.mp4 answers Range requests

``{id}`` is the event's id, URL-encoded (ids contain ``/``). It is looked up in the evidence index; no path is
ever built from it, so an unknown id or a traversal attempt is simply not found (404).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from streamd.config.models import DaemonConfig
from streamd.evidence.paths import evidence_dir_of
from streamd.evidence.query import EventQuery, QueryError

MEDIA = {"snapshot": "image/jpeg", "crop": "image/jpeg", "clip": "video/mp4"}


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds or an ISO 8601 time (a time without zone is UTC)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        text = value.replace("Z", "+00:00")
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name} must be Unix seconds or an ISO 8601 time such as 2026-12-01T08:00:00Z") from None
    if parsed.tzinfo is None:
        from datetime import timezone

        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def evidence_routes(config: Callable[[], DaemonConfig]) -> list[Route]:
    def query() -> EventQuery:
        cfg = config()
        return EventQuery(cfg.counts.path, evidence_dir_of(cfg))

    def list_events(params: dict[str, str]) -> dict[str, Any]:
        q = query()
        try:
            limit_text = params.get("limit", "100")
            if not limit_text.isdigit():
                raise QueryError("limit must be a whole number")
            page = q.page(stream=params.get("stream") or None, type_=params.get("type") or None,
                          since=parse_time(params.get("since"), "since"), until=parse_time(params.get("until"), "until"),
                          limit=int(limit_text), cursor=params.get("cursor") or None)
        finally:
            q.close()
        return {"events": page.events, "next_cursor": page.next_cursor}

    async def events(request: Request) -> Response:
        try:
            return JSONResponse(await run_in_threadpool(list_events, dict(request.query_params)))
        except QueryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    def lookup(event_id: str, kind: str | None) -> Any:
        q = query()
        try:
            return q.get(event_id) if kind is None else q.file(event_id, kind)
        finally:
            q.close()

    async def event(request: Request) -> Response:
        found = await run_in_threadpool(lookup, request.path_params["id"], None)
        if found is None:
            return JSONResponse({"error": "no such event"}, status_code=404)
        return JSONResponse(found)

    def file_route(kind: str) -> Callable[[Request], Any]:
        async def serve(request: Request) -> Response:
            path = await run_in_threadpool(lookup, request.path_params["id"], kind)
            if path is None:
                return JSONResponse({"error": f"no {kind} for this event"}, status_code=404)
            # FileResponse answers Range requests (206 + Content-Range), so a browser can seek in a clip
            return FileResponse(path, media_type=MEDIA[kind], headers={"Cache-Control": "private, max-age=3600"})

        return serve

    return [
        Route("/api/events", events),
        Route("/api/events/{id:path}/snapshot.jpg", file_route("snapshot")),
        Route("/api/events/{id:path}/crop.jpg", file_route("crop")),
        Route("/api/events/{id:path}/clip.mp4", file_route("clip")),
        Route("/api/events/{id:path}", event),
    ]
