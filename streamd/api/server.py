"""HTTP API (Starlette, served by uvicorn in a thread of the supervisor process).

Endpoints: /healthz, /readyz (no auth); /api/streams, /api/counts, /api/config, POST /api/reload, /metrics,
/preview/<stream>.mjpg, /preview/<stream>.jpg and the preview page at /. With ``api.token`` set, every
endpoint but the health checks needs ``Authorization: Bearer <token>`` (or ``?token=`` for browsers'
<img> requests).
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Protocol

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from streamd.analytics.store import CountStore, ShiftSchedule, hour_window
from streamd.api.metrics import registry_for
from streamd.api.preview import PreviewHub
from streamd.config.models import ApiConfig, DaemonConfig
from streamd.redact import redact

log = structlog.get_logger()
HEALTH_STALE_S = 10.0  # the supervisor's loop ticks every 0.2 s; silence this long means it is stuck
PREVIEW_FPS = 10.0
OPEN_PATHS = ("/healthz", "/readyz")


class DaemonView(Protocol):
    config: DaemonConfig

    @property
    def snapshot(self) -> dict[str, Any]: ...

    def request_reload(self, reason: str = "signal") -> None: ...


def redacted_config(config: DaemonConfig) -> dict[str, Any]:
    """The running config as JSON with credentials masked: URL passwords, tokens, passwords, secrets."""
    data = config.model_dump(mode="json")

    def scrub(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: scrub(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        if isinstance(node, str):
            if any(word in key.lower() for word in ("password", "token", "secret")):
                return "***"
            return redact(node)
        return node

    return scrub(data)


def build_app(view: DaemonView, hub: PreviewHub, token: str | None) -> Starlette:
    registry = registry_for(lambda: view.snapshot)
    page = resources.files("streamd.api").joinpath("page.html").read_text()

    async def healthz(request: Request) -> Response:
        age = time.time() - view.snapshot.get("t", 0)
        ok = age < HEALTH_STALE_S
        return JSONResponse({"ok": ok, "age_s": round(age, 2)}, status_code=200 if ok else 503)

    async def readyz(request: Request) -> Response:
        snap = view.snapshot
        ready = bool(snap.get("ready"))
        return JSONResponse({"ready": ready, "streams": {n: s["state"] for n, s in snap.get("streams", {}).items()}},
                            status_code=200 if ready else 503)

    async def streams(request: Request) -> Response:
        snap = view.snapshot
        return JSONResponse({"streams": snap.get("streams", {}), "stages": snap.get("stages", {}),
                             "reload": snap.get("reload", {})})

    async def counts(request: Request) -> Response:
        window = request.query_params.get("window", "total")
        if window not in ("total", "hour", "shift"):
            return JSONResponse({"error": "window must be total, hour or shift"}, status_code=400)
        return JSONResponse(await run_in_threadpool(_read_counts, view.config, window,
                                                    request.query_params.get("stream")))

    async def config(request: Request) -> Response:
        return JSONResponse({"config": redacted_config(view.config),
                             "needs_restart": view.snapshot.get("reload", {}).get("changes", {}).get("needs_restart", [])})

    async def reload(request: Request) -> Response:
        before = view.snapshot.get("reload", {}).get("at")
        view.request_reload("api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = view.snapshot.get("reload", {})
            if status.get("at") != before and status.get("reason") == "api":
                return JSONResponse(status, status_code=200 if status.get("ok") else 422)
            await asyncio.sleep(0.1)
        return JSONResponse({"error": "the reload did not finish within 60 s"}, status_code=504)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def snapshot_jpeg(request: Request) -> Response:
        stream = request.path_params["stream"]
        if stream not in view.snapshot.get("streams", {}):
            return JSONResponse({"error": f"no stream {stream}"}, status_code=404)
        hub.join(stream)
        try:
            for _ in range(50):
                jpeg = await run_in_threadpool(hub.render, stream)
                if jpeg:
                    return Response(jpeg, media_type="image/jpeg")
                await asyncio.sleep(0.1)
        finally:
            hub.leave(stream)
        return JSONResponse({"error": "no analysed frame yet"}, status_code=503)

    async def mjpeg(request: Request) -> Response:
        stream = request.path_params["stream"]
        if stream not in view.snapshot.get("streams", {}):
            return JSONResponse({"error": f"no stream {stream}"}, status_code=404)

        async def frames() -> AsyncIterator[bytes]:
            hub.join(stream)
            try:
                while stream in view.snapshot.get("streams", {}) and not await request.is_disconnected():
                    jpeg = await run_in_threadpool(hub.render, stream)
                    if jpeg:
                        yield (b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " + str(len(jpeg)).encode()
                               + b"\r\n\r\n" + jpeg + b"\r\n")
                    await asyncio.sleep(1.0 / PREVIEW_FPS)
            finally:
                hub.leave(stream)

        return StreamingResponse(frames(), media_type="multipart/x-mixed-replace; boundary=frame")

    app = Starlette(routes=[
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/", index),
        Route("/api/streams", streams), Route("/api/counts", counts), Route("/api/config", config),
        Route("/api/reload", reload, methods=["POST"]), Route("/metrics", metrics),
        Route("/preview/{stream}.mjpg", mjpeg), Route("/preview/{stream}.jpg", snapshot_jpeg),
    ])

    if token:
        app.add_middleware(TokenAuth, token=token)
    return app


class TokenAuth:
    """ASGI middleware: every path but the health checks needs the bearer token (header, or ?token= for <img>)."""

    def __init__(self, app: Any, token: str):
        self.app = app
        self.expected = token.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if hmac.compare_digest(given.encode(), self.expected):
            await self.app(scope, receive, send)
            return
        response = JSONResponse({"error": "missing or wrong API token"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


def _read_counts(config: DaemonConfig, window: str, stream: str | None) -> dict[str, Any]:
    schedule = ShiftSchedule.parse(config.counts.shifts, config.counts.timezone)
    now = datetime.now(timezone.utc)
    start = end = None
    if window == "shift":
        start, end = schedule.window(now)
    elif window == "hour":
        start, end = hour_window(now, schedule.timezone)
    try:
        store = CountStore(config.counts.path, readonly=True)
    except FileNotFoundError:
        return {"window": window, "lines": [], "zones": []}
    try:
        since, until = (start.timestamp(), end.timestamp()) if start and end else (None, None)
        lines = store.counts(stream, since=since, until=until)
        zones = store.zone_counts(stream, since=since, until=until)
    finally:
        store.close()
    return {
        "window": window, "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
        "lines": [{"stream": s, "line": ln, "class": c, "direction": d, "count": n} for (s, ln, c, d), n in lines.items()],
        "zones": [{"stream": s, "zone": z, "class": c, "visits": v.visits, "exits": v.exits,
                   "mean_dwell_s": v.mean_dwell_s} for (s, z, c), v in zones.items()],
    }


class ApiServer:
    """uvicorn in a daemon thread; ``port`` is the bound port (useful with ``port: 0``)."""

    def __init__(self, app: Starlette, config: ApiConfig):
        self._server = uvicorn.Server(uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                                                     access_log=False, lifespan="off"))
        # The supervisor owns signals: uvicorn installs none outside the main thread, and older versions that
        # would are given a no-op.
        setattr(self._server, "install_signal_handlers", lambda: None)
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self.host = config.host
        self.port = config.port

    def start(self, timeout_s: float = 10.0) -> bool:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._thread.is_alive():
            if self._server.started:
                sockets = [s for server in self._server.servers for s in server.sockets]
                if sockets:
                    self.port = sockets[0].getsockname()[1]
                return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
