"""HTTP API (Starlette, served by uvicorn in a thread of the supervisor process).

Endpoints: /healthz, /readyz (no auth); /api/streams, /api/counts, /api/config, POST /api/reload, /api/fleet,
/metrics,
/preview/<stream>.mjpg, /preview/<stream>.jpg and the preview page at /.

Access rules (``ApiGuard``):

* With ``api.token`` set, every endpoint but the health checks needs ``Authorization: Bearer <token>``. The
  token is accepted in the query string (``?token=``) only for GET of the preview page ``/`` and the preview
  images ``/preview/<stream>.mjpg|.jpg``, because a browser's ``<img>`` cannot send a header; never for the
  JSON API, the metrics or any state-changing request.
* A state-changing request (any method but GET, HEAD, OPTIONS) must not come from another site: it is refused
  when its ``Origin`` header is not this server's own origin, or its ``Sec-Fetch-Site`` is ``cross-site`` or
  ``same-site``. A web page the operator visits therefore cannot ``POST /api/reload``.
* Bound to loopback without a token, the ``Host`` header must name a loopback host, so that a DNS-rebinding
  page cannot reach the API under its own name.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from importlib import resources
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from streamd.analytics.store import ShiftSchedule, hour_window
from streamd.analytics.stores import open_count_store
from streamd.api.fleet import FleetReader, FleetUnreachable
from streamd.api.metrics import registry_for
from streamd.api.preview import PreviewHub
from streamd.config.models import LOOPBACK_HOSTS, ApiConfig, DaemonConfig
from streamd.evidence.api import evidence_routes
from streamd.redact import redact

log = structlog.get_logger()
HEALTH_STALE_S = 10.0  # the supervisor's loop ticks every 0.2 s; silence this long means it is stuck
PREVIEW_FPS = 10.0
OPEN_PATHS = ("/healthz", "/readyz")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# GET paths where ?token= stands in for the header: what a browser loads without script (<img>, the page itself)
QUERY_TOKEN_PATHS = re.compile(r"/|/preview/[^/]+\.(?:mjpg|jpg)|/api/events/.+/(?:snapshot\.jpg|crop\.jpg|clip\.mp4)")
# a config or status key whose value is a credential, whatever its type: hidden entirely
SECRET_KEY = re.compile(r"(?i)pass(?:word|wd)?|pwd|token|secret|key|signature|credential")
HIDDEN = "***"


class DaemonView(Protocol):
    @property
    def config(self) -> DaemonConfig: ...

    @property
    def snapshot(self) -> dict[str, Any]: ...

    def request_reload(self, reason: str = "signal") -> None: ...


def is_secret_key(key: str) -> bool:
    """True for names such as ``password``, ``bearer_token``, ``secret``, ``api_key``, ``signature``."""
    return bool(SECRET_KEY.search(key))


def redact_strings(node: Any) -> Any:
    """A copy of a JSON-like tree with every string passed through ``redact`` (URL passwords, secret query
    parameters); keys are data here (stream, line and stage names) and stay as they are."""
    if isinstance(node, dict):
        return {k: redact_strings(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_strings(v) for v in node]
    if isinstance(node, str):
        return redact(node)
    return node


def _scrub_config(model: Any, data: Any) -> Any:
    """Walk a config model and its JSON dump side by side: hide SecretStr fields and fields with secret-looking
    names whatever their type, and scalars under secret-looking keys of plain dicts; redact every string."""
    if isinstance(model, BaseModel) and isinstance(data, dict):
        out = {}
        for name, value in data.items():
            field = getattr(model, name, None)
            if value not in (None, "") and (isinstance(field, SecretStr) or is_secret_key(name)):
                out[name] = HIDDEN
            else:
                out[name] = _scrub_config(field, value)
        return out
    if isinstance(data, dict):
        source = model if isinstance(model, dict) else {}
        return {k: HIDDEN if is_secret_key(str(k)) and isinstance(v, (str, int, float)) and v != ""
                else _scrub_config(source.get(k), v) for k, v in data.items()}
    if isinstance(data, list):
        models = list(model) if isinstance(model, (list, tuple)) else []
        return [_scrub_config(models[i] if i < len(models) else None, v) for i, v in enumerate(data)]
    if isinstance(data, str):
        return redact(data)
    return data


def redacted_config(config: DaemonConfig) -> dict[str, Any]:
    """The running config as JSON with credentials masked: SecretStr fields, fields named like password, token,
    secret, key or signature (whatever their value), URL passwords and secret query parameters."""
    data: dict[str, Any] = _scrub_config(config, config.model_dump(mode="json"))
    return data


class _FleetReaders:
    """One FleetReader for the config's counts.url (a reload may change the config object, not the URL)."""

    def __init__(self, view: DaemonView):
        self._view = view
        self._reader: FleetReader | None = None

    def get(self) -> FleetReader | None:
        config = self._view.config
        url = config.counts.url if config.fleet.enabled else None
        if url is None:
            return None
        if self._reader is None or self._reader.url != url:
            self._reader = FleetReader(url)
        return self._reader


def build_app(view: DaemonView, hub: PreviewHub, token: str | None) -> Starlette:
    fleet_readers = _FleetReaders(view)
    registry = registry_for(lambda: view.snapshot, fleet_readers.get)
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
        evidence = {name: c["evidence"] for name, c in snap.get("counters", {}).items() if c.get("evidence")}
        return JSONResponse(redact_strings({"streams": snap.get("streams", {}), "stages": snap.get("stages", {}),
                                   "reload": snap.get("reload", {}), "sinks": snap.get("sinks", {}),
                                   "evidence": evidence, "fleet": snap.get("fleet")}))

    async def counts(request: Request) -> Response:
        window = request.query_params.get("window", "total")
        if window not in ("total", "hour", "shift"):
            return JSONResponse({"error": "window must be total, hour or shift"}, status_code=400)
        return JSONResponse(await run_in_threadpool(_read_counts, view.config, window,
                                                    request.query_params.get("stream")))

    async def config(request: Request) -> Response:
        return JSONResponse({"config": redacted_config(view.config),
                             "needs_restart": redact_strings(view.snapshot.get("reload", {}).get("changes", {})
                                                    .get("needs_restart", []))})

    async def reload(request: Request) -> Response:
        before = view.snapshot.get("reload", {}).get("at")
        view.request_reload("api")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = view.snapshot.get("reload", {})
            if status.get("at") != before and status.get("reason") == "api":
                return JSONResponse(redact_strings(status), status_code=200 if status.get("ok") else 422)
            await asyncio.sleep(0.1)
        return JSONResponse({"error": "the reload did not finish within 60 s"}, status_code=504)

    async def health_reset(request: Request) -> Response:
        """Learn the stream's camera health reference again (after a deliberate camera move)."""
        stream = request.path_params["stream"]
        reset = getattr(view, "request_health_reset", None)
        if stream not in view.snapshot.get("streams", {}) or reset is None or not reset(stream):
            return JSONResponse({"error": f"no running stream {stream}"}, status_code=404)
        log.info("camera_health_reset_requested", stream=stream)
        return JSONResponse({"stream": stream, "reset": True}, status_code=202)

    async def fleet(request: Request) -> Response:
        """Members, who owns which stream, lease ages and recent moves (from PostgreSQL), and this node's view."""
        reader = fleet_readers.get()
        node = redact_strings(view.snapshot.get("fleet"))
        if reader is None:
            return JSONResponse({"error": "this daemon is not in a fleet: set fleet.enabled and counts.url "
                                          "(docs/fleet.md)"}, status_code=404)
        try:
            status = await run_in_threadpool(reader.read)
        except FleetUnreachable as exc:
            return JSONResponse({"error": f"count store unreachable: {exc}", "node": node}, status_code=503)
        return JSONResponse(redact_strings({"node": node, "owners": status.owners(), **status.as_dict()}))

    async def metrics(request: Request) -> Response:
        # in a thread: the fleet's part may wait (briefly) on the database
        return Response(await run_in_threadpool(generate_latest, registry), media_type=CONTENT_TYPE_LATEST)

    async def index(request: Request) -> Response:
        # the page may be opened as /?token=...: keep that URL out of Referer headers
        return HTMLResponse(page, headers={"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"})

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
        Route("/api/reload", reload, methods=["POST"]), Route("/api/fleet", fleet), Route("/metrics", metrics),
        Route("/api/streams/{stream}/health/reset", health_reset, methods=["POST"]),
        Route("/preview/{stream}.mjpg", mjpeg), Route("/preview/{stream}.jpg", snapshot_jpeg),
        *evidence_routes(lambda: view.config),  # /api/events... (streamd/evidence/api.py)
    ])

    app.add_middleware(ApiGuard, token=token, loopback_only=view.config.api.host in LOOPBACK_HOSTS)
    return app


def _deny(status: int, error: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def is_loopback_host(host: str) -> bool:
    """``host`` (a Host header's name part, brackets stripped) names this machine's loopback interface."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(scheme: str, netloc: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) of an origin, default ports filled in; None when it does not parse."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname.lower(), port if port is not None else default


def cross_site_reason(method: str, headers: Any, scheme: str) -> str | None:
    """Why a request would be refused as cross-site, or None. Only state-changing methods are checked."""
    if method in SAFE_METHODS:
        return None
    fetch_site = headers.get("sec-fetch-site", "").lower()
    if fetch_site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = headers.get("origin")
    if origin is not None:
        host = headers.get("host", "")
        own = _origin(scheme, host) if host else None
        given = None
        if "://" in origin:
            origin_scheme, _, origin_netloc = origin.partition("://")
            given = _origin(origin_scheme.lower(), origin_netloc)
        if own is None or given is None or given != own:
            return f"Origin {origin[:100]!r} is not this server's own origin"
    return None


class ApiGuard:
    """ASGI middleware that applies the access rules in this module's docstring (token, cross-site, Host)."""

    def __init__(self, app: Any, token: str | None, loopback_only: bool = True):
        self.app = app
        self.expected = token.encode() if token else None
        self.check_host = loopback_only and not token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        denied = self._check(Request(scope))
        if denied is None:
            await self.app(scope, receive, send)
        else:
            await denied(scope, receive, send)

    def _check(self, request: Request) -> Response | None:
        path, method = request.url.path, request.method.upper()
        if self.check_host and path not in OPEN_PATHS:
            host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
            if not is_loopback_host(host):
                return _deny(403, f"Host {host[:100]!r} is not a loopback name; this API is bound to loopback "
                                  "without api.token (open it as http://127.0.0.1:<port>/)")
        reason = cross_site_reason(method, request.headers, request.url.scheme)
        if reason is not None:
            return _deny(403, f"cross-site request refused ({reason}): state-changing requests must come from "
                              "this server's own page or from a client that sends no Origin (curl, scripts)")
        if self.expected is None or path in OPEN_PATHS:
            return None
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            if hmac.compare_digest(header[7:].strip().encode(), self.expected):
                return None
            return _deny(401, "wrong API token", {"WWW-Authenticate": "Bearer"})
        query = request.query_params.get("token")
        if query is not None:
            if method != "GET" or not QUERY_TOKEN_PATHS.fullmatch(path):
                return _deny(401, "?token= is accepted only for GET of the preview page and images; send "
                                  "Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})
            if hmac.compare_digest(query.encode(), self.expected):
                return None
            return _deny(401, "wrong API token", {"WWW-Authenticate": "Bearer"})
        return _deny(401, "missing API token: send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"})


def _read_counts(config: DaemonConfig, window: str, stream: str | None) -> dict[str, Any]:
    schedule = ShiftSchedule.parse(config.counts.shifts, config.counts.timezone)
    now = datetime.now(timezone.utc)
    start = end = None
    if window == "shift":
        start, end = schedule.window(now)
    elif window == "hour":
        start, end = hour_window(now, schedule.timezone)
    try:
        store = open_count_store(config.counts, readonly=True)  # PostgreSQL: the whole fleet's counts
    except FileNotFoundError:
        return {"window": window, "lines": [], "zones": []}
    try:
        since, until = (start.timestamp(), end.timestamp()) if start and end else (None, None)
        lines = store.counts(stream, since=since, until=until)
        zones = store.zone_counts(stream, since=since, until=until)
    finally:
        store.close()
    unhealthy = _read_unhealthy(config.counts.path, stream, since, until)
    return {
        "window": window, "from": start.isoformat() if start else None, "to": end.isoformat() if end else None,
        "lines": [{"stream": s, "line": ln, "class": c, "direction": d, "count": n} for (s, ln, c, d), n in lines.items()],
        "zones": [{"stream": s, "zone": z, "class": c, "visits": v.visits, "exits": v.exits,
                   "mean_dwell_s": v.mean_dwell_s} for (s, z, c), v in zones.items()],
        "unhealthy": unhealthy,
    }


def _read_unhealthy(path: str, stream: str | None, since: float | None, until: float | None) -> dict[str, Any]:
    """Per stream: how long camera health was not ok in the window, and which checks (streamd/health/store.py)."""
    from streamd.health.store import HealthStore

    try:
        store = HealthStore(path, readonly=True)
    except FileNotFoundError:
        return {}
    try:
        found = store.unhealthy(since=since, until=until, stream=stream)
    finally:
        store.close()
    return {name: {"seconds": u.seconds, "window_s": u.window_s, "checks": list(u.checks), "text": u.describe()}
            for name, u in found.items()}


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
