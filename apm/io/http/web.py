"""The device's local web page: routes, server-sent events, logins (aiohttp).

    GET  /                    the page (static/index.html; app.js and app.css beside it, no build step)
    GET  /events              text/event-stream: the device's state as JSON, once a second and at
                              every headroom (`WebServer.notify`)
    GET  /api/state           the same state once (scripts, curl)
    POST /api/chargers/{id}   {"max_a": 20}: a charger's max current, through the configuration's schema;
                              400 {"error": the schema's message} when refused
    POST /api/eco/{id}        {"on": true, "departure": "07:00", "energy_kwh": 20}: a car's Smart eco
                              request (``eco_change``), 400 {"error": ...} when refused

What the page shows and what a change does are the caller's (``snapshot`` and ``change``,
`apm.services.web`): this module only serves them.

Access: on a loopback listen address (127.0.0.1, ::1, localhost) nobody logs in: whoever can reach it
is on the device already. On any other address (the LAN, or 127.0.0.2 to try it locally) every request
needs HTTP basic auth against the broker's users file (`apm.io.mqtt.auth`): a ``reader`` may look, only
the ``device`` user may change settings (403 for others); a wrong or missing login gets 401.

aiohttp rather than Starlette: the device already uses it for the price client, so one async stack in
the one event loop, and it serves by itself (no ASGI server to install and run on a Pi).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from apm.io.mqtt.auth import AuthError, Policy, UserTable, verify_password

log = logging.getLogger(__name__)

EVERY_S = 1.0  # an event at least this often
MIN_GAP_S = 0.2  # and at most five a second, however fast headroom comes (a replay at speed)
LOOPBACK = ("127.0.0.1", "::1", "localhost")
STATIC = ("index.html", "app.js", "app.css", "eco.js", "capacity.js")
TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css"}

Snapshot = Callable[[], Mapping[str, Any]]
Change = Callable[[str, Mapping[str, Any]], str | None]  # charger id, fields -> None, or why refused


class WebError(Exception):
    """The page cannot be served as asked (a bad --http, a port that is taken)."""


@dataclass(frozen=True, slots=True)
class WebPlan:
    """Where the page listens, and whose logins it takes off loopback."""

    host: str = "127.0.0.1"
    port: int = 8080
    users_path: Path | None = None  # the broker's users file (None: nobody may log in)
    image: Path | None = None  # the flash image settings are stored in (None: they last this run only)
    any_port_if_taken: bool = False  # the default port: another run has it, so take a free one

    @property
    def needs_login(self) -> bool:
        return self.host not in LOOPBACK


def parse_listen(text: str) -> WebPlan | None:
    """``--http HOST:PORT`` (or ``PORT``, or ``off``): the plan, None for off; `WebError` if malformed."""
    if text.strip().lower() == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise WebError(f"--http {text!r}: HOST:PORT (e.g. 127.0.0.1:8080), PORT or off") from None
    if not 0 <= number <= 65535:
        raise WebError(f"--http {text!r}: port {number} is out of range (0..65535; 0: any free port)")
    return WebPlan(host, number)


class Logins:
    """HTTP basic auth against the broker's users file, read again when it changes."""

    def __init__(self, serial: str, path: Path | None) -> None:
        table = UserTable()
        if path is not None:
            try:
                table = UserTable.load(path)
            except AuthError as exc:
                log.warning("web: nobody can log in: %s", exc)
        self.policy = Policy(serial, table, path=path)

    def role(self, header: str | None) -> str | None:
        """The role kind ("device", "reader", ...) of a good login, None for a missing or wrong one."""
        if not header or not header.lower().startswith("basic "):
            return None
        try:
            name, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        self.policy.refresh()
        user = self.policy.users.get(name)
        if user is None or not verify_password(password, user.hash):
            log.info("web: refused a login as %r", name)
            return None
        return user.role.kind


def _static(name: str) -> bytes:
    return resources.files("apm.io.http").joinpath("static", name).read_bytes()


class WebServer:
    """The page's server; an async context manager. ``notify()`` sends the state to every page now."""

    def __init__(self, plan: WebPlan, *, serial: str, snapshot: Snapshot, change: Change,
                 eco_change: Change | None = None) -> None:
        self.plan = plan
        self.snapshot = snapshot
        self.change = change
        self.eco_change = eco_change  # None: no Smart eco (404)
        self.logins = Logins(serial, plan.users_path) if plan.needs_login else None
        self.url = ""
        self._clients: set[asyncio.Queue[str]] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._task: asyncio.Task[None] | None = None
        app = web.Application(middlewares=[self._auth])
        app.add_routes([web.get("/", self._file), web.get("/static/{name}", self._file),
                        web.get("/events", self._events), web.get("/api/state", self._state),
                        web.post("/api/chargers/{id}", self._charger), web.post("/api/eco/{id}", self._eco)])
        self.app = app

    async def __aenter__(self) -> WebServer:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        try:
            site = await self._site(self.plan.port)
        except OSError as exc:
            if not self.plan.any_port_if_taken:
                await self._runner.cleanup()
                raise WebError(f"the web page on {self.plan.host}:{self.plan.port}: "
                               f"{exc.strerror or exc}") from None
            log.warning("web page: port %d is taken (%s); any free port instead", self.plan.port, exc.strerror)
            site = await self._site(0)
        server = site._server
        sockets = getattr(server, "sockets", None) or ()
        port = sockets[0].getsockname()[1] if sockets else self.plan.port
        host = f"[{self.plan.host}]" if ":" in self.plan.host else self.plan.host
        self.url = f"http://{host}:{port}/"
        self._task = asyncio.create_task(self._broadcast(), name="web: events")
        log.info("web page on %s%s", self.url, " (login: the broker's users)" if self.logins else "")
        return self

    async def _site(self, port: int) -> web.TCPSite:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.plan.host, port)
        await site.start()
        return site

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for q in list(self._clients):
            q.put_nowait("")  # ends each open event stream, so the runner's cleanup does not wait on it
        if self._runner is not None:
            await self._runner.cleanup()

    def notify(self) -> None:
        """Something changed (a headroom): the pages hear of it now rather than at the next second."""
        self._changed.set()

    # --- events ------------------------------------------------------------------------------------

    async def _broadcast(self) -> None:
        """One snapshot per event for all pages (not one per page)."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), EVERY_S)
            self._changed.clear()
            if self._clients:
                data = self._encode()
                for q in self._clients:
                    if q.full():  # a slow page gets the newest state, not a backlog
                        q.get_nowait()
                    q.put_nowait(data)
            sent = loop.time()
            await asyncio.sleep(max(0.0, sent + MIN_GAP_S - loop.time()))

    def _encode(self) -> str:
        try:
            return json.dumps(self.snapshot(), separators=(",", ":"))
        except Exception as exc:  # a bug in the view must not end the device's run
            log.exception("web: the page's state failed")
            return json.dumps({"error": str(exc)})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        q: asyncio.Queue[str] = asyncio.Queue(maxsize=2)
        self._clients.add(q)
        try:
            await resp.write(f"retry: 2000\ndata: {self._encode()}\n\n".encode())
            while (data := await q.get()):
                await resp.write(f"data: {data}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._clients.discard(q)
        return resp

    # --- the rest ----------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        name = request.match_info.get("name", "index.html")
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=TYPES[name.rsplit(".", 1)[1]],
                            headers={"Cache-Control": "no-cache"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.Response(text=self._encode(), content_type="application/json")

    async def _charger(self, request: web.Request) -> web.Response:
        return await self._apply(request, self.change, '{"max_a": 16}')

    async def _eco(self, request: web.Request) -> web.Response:
        if self.eco_change is None:
            return web.json_response({"error": "Smart eco is off (no price source)"}, status=404)
        return await self._apply(request, self.eco_change, '{"on": true, "departure": "07:00", "energy_kwh": 20}')

    async def _apply(self, request: web.Request, change: Change, example: str) -> web.Response:
        if request.get("role", "device") != "device":
            return web.json_response({"error": "only the device's login may change settings"}, status=403)
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": f"send a JSON object, e.g. {example}"}, status=400)
        refused = change(request.match_info["id"], body)
        if refused is not None:
            return web.json_response({"error": refused}, status=400)
        self.notify()
        return web.json_response({"ok": True})

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.logins is not None:
            role = self.logins.role(request.headers.get("Authorization"))
            if role is None:
                raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="APM", charset="UTF-8"'})
            if role not in ("device", "reader"):
                raise web.HTTPForbidden(text="this login may not use the web page")
            request["role"] = role
        response: web.StreamResponse = await handler(request)
        return response
