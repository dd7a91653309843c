"""``interactive-keypoints serve``: a session per browser tab, behind one port.

trame keeps one state per server and shares it with every connected client, so two tabs
on one trame server would see and move each other's points. The launcher therefore gives
every visit of ``/`` a session of its own (a trame server with its own state, scene and
logic), redirects the tab to ``/s/<id>/`` and forwards that path (HTTP and websocket) to
the session's loopback port. The sessions run in one process, the session host
(:mod:`.host`), which loads the libraries and the model once for all of them; the
launcher starts it, opens and closes sessions in it, and starts a new one if it dies.

Sessions are counted from the moment they are reserved (before the host has opened them),
so ``--max-sessions`` holds however many visits arrive together; a refused visit is
logged. ``--spare-sessions`` sessions are opened ahead of the visits that will take them.
The launcher sees every tab's websocket: a session whose last tab disconnected ends after
``--reconnect-grace`` seconds (a reload reconnects within them), and a session no tab ever
connects to ends after ``--idle-timeout``. Points are autosaved under ``--autosave-dir``.

Every request passes :class:`.access.AccessGate` first (a token, a password or a signed-in
proxy user on a shared network). A session belongs to the browser it was given to (a cookie):
its page, websocket and autosaves answer only that browser, each visitor may hold at most
``--max-sessions-per-client`` sessions, and autosaves older than ``--keep-autosaves-days``
are removed.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import html
import json
import logging
import os
import re
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import web

from ..errors import UsageError
from .access import (
    OPEN,
    PROXY_USER_HEADER,
    Access,
    AccessError,
    AccessGate,
    choose_access,
    is_https,
    is_loopback,
    start_url,
)
from .pages import page as _page
from .protocol import RunHooks, read_host_line

log = logging.getLogger(__name__)

MAX_SESSIONS = 4  # each session holds a scene and a render window (~0.1 GB; the host's libraries ~1 GB)
SPARE_SESSIONS = 1
RECONNECT_GRACE_S = 5.0
IDLE_TIMEOUT_S = 300
START_TIMEOUT_S = 300  # from the request; the host's first start on a loaded 2-core machine has needed 90-220 s
STOP_TIMEOUT_S = 20.0  # a host still shutting down after this is killed (points are autosaved)
HOST_COMMAND = (sys.executable, "-m", "interactive_keypoints.web.host")
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"}
SESSIONS_PER_CLIENT_SHARED = 2  # default per visitor when the server serves other machines
KEEP_AUTOSAVES_DAYS = 14.0
SWEEP_EVERY_S = 3600.0  # how often old autosaves are looked for
BROWSER_COOKIE = "ik_browser"  # which browser a session was given to
SESSION_ID = re.compile(r"[0-9a-f]{24}")  # secrets.token_hex(12): autosave folders are named so
BROWSER_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def default_autosave_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "interactive-keypoints" / "web-sessions"


class HostProcess:
    """The session host: its process, and the commands and answers on its pipes."""

    def __init__(self, command: list[str], on_closed, on_exit):
        self.command = command
        self.on_closed = on_closed  # (session id): the host let go of a session
        self.on_exit = on_exit  # (host): the process has ended
        self.process: asyncio.subprocess.Process | None = None
        self.started: asyncio.Future = asyncio.get_running_loop().create_future()  # host-ready
        self.starting: asyncio.Task | None = None  # start(), run by the launcher
        self.opening: dict[str, asyncio.Future] = {}  # session id -> its port, once open
        self.tail: list[str] = []  # the last lines of its own output, for error messages
        self.exited = False

    async def start(self):
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=2**20,
        )
        asyncio.get_running_loop().create_task(self._read())
        await self.started

    async def _read(self):
        async for line in self.process.stdout:
            text = line.decode(errors="replace").rstrip()
            try:
                answer = read_host_line(text)
                if answer is not None:
                    self._answer(answer)
                    continue
            except (ValueError, TypeError, KeyError):
                log.warning("session host: an answer that is not understood: %s", text[:200])
            self.tail = [*self.tail[-14:], text]
            # its errors are warnings of ours; the rest (libraries' output, a stack dump asked for
            # with SIGUSR1) goes to the log too, at info level
            log.log(
                logging.WARNING if "ERROR" in text or "Traceback" in text else logging.INFO, "session host: %s", text
            )
        await self.process.wait()
        self.exited = True
        problem = RuntimeError(f"the session host exited with {self.process.returncode}:\n" + "\n".join(self.tail))
        for waiting in [self.started, *self.opening.values()]:
            if not waiting.done():
                waiting.set_exception(problem)
        self.on_exit(self)

    def _answer(self, answer: dict):
        event, session_id = answer.get("event"), answer.get("id")
        if event == "host-ready":
            self.started.set_result(True)
        elif event in ("ready", "failed") and session_id in self.opening:
            waiting = self.opening.pop(session_id)
            if event == "ready":
                waiting.set_result(int(answer["port"]))
            else:
                waiting.set_exception(RuntimeError(answer.get("error", "the session could not start")))
        elif event == "closed":
            self.on_closed(session_id)

    def _send(self, command: dict):
        if self.exited or self.process is None or self.process.stdin.is_closing():
            return
        self.process.stdin.write((json.dumps(command) + "\n").encode())

    async def open(self, session_id: str, autosave_dir: Path) -> int:
        self.opening[session_id] = asyncio.get_running_loop().create_future()
        self._send({"open": session_id, "autosave_dir": str(autosave_dir)})
        return await self.opening[session_id]

    def close(self, session_id: str):
        self._send({"close": session_id})

    @property
    def came_up(self) -> bool:
        """It has loaded the model and taken commands (it may have exited since)."""
        return self.started.done() and self.started.exception() is None

    async def stop(self):
        """Close its stdin (it ends its sessions and exits); kill it if it does not."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.warning("the session host did not exit within %g s of being asked to; killed it", STOP_TIMEOUT_S)
            self.process.kill()
            await self.process.wait()


@dataclass
class Session:
    id: str
    autosave_dir: Path
    owner: str = ""  # the browser cookie of the tab it was given to
    client: str = ""  # the visitor it was given to (address, or the proxy's user)
    host: HostProcess | None = None
    port: int | None = None
    starting: asyncio.Task | None = None  # open it in the host and read its port
    for_tab: bool = False  # False while it is a spare
    clients: int = 0  # open websockets through the launcher
    end_timer: asyncio.TimerHandle | None = None
    ended: bool = False  # counted out: asked to close, failed, or its host exited
    closed: bool = False  # its host has let go of it (or has gone)

    @property
    def alive(self) -> bool:
        return not self.ended

    @property
    def ready(self) -> bool:
        return self.alive and self.port is not None


class Launcher:
    def __init__(
        self,
        model_dir=None,
        autosave_root=None,
        max_sessions: int = MAX_SESSIONS,
        idle_timeout: float = IDLE_TIMEOUT_S,
        session_args=(),
        spare_sessions: int = SPARE_SESSIONS,
        reconnect_grace: float = RECONNECT_GRACE_S,
        host_command=HOST_COMMAND,
        start_timeout: float = START_TIMEOUT_S,
        access: Access | None = None,
        data_root=None,
        max_sessions_per_client: int | None = None,
        keep_autosaves_days: float = KEEP_AUTOSAVES_DAYS,
        sweep_every_s: float = SWEEP_EVERY_S,
    ):
        if max_sessions < 1:
            raise UsageError(f"--max-sessions must be at least 1, not {max_sessions}")
        if spare_sessions < 0:
            raise UsageError(f"--spare-sessions cannot be negative ({spare_sessions})")
        if max_sessions_per_client is not None and max_sessions_per_client < 1:
            raise UsageError(f"--max-sessions-per-client must be at least 1, not {max_sessions_per_client}")
        if keep_autosaves_days < 0:
            raise UsageError(f"--keep-autosaves-days cannot be negative ({keep_autosaves_days:g})")
        self.model_dir = model_dir
        self.autosave_root = Path(autosave_root) if autosave_root else default_autosave_root()
        self.data_root = _checked_data_root(data_root, self.autosave_root) if data_root else None
        self.access = access or Access()
        self.max_sessions_per_client = max_sessions_per_client or max_sessions
        self.keep_autosaves_s = keep_autosaves_days * 86400
        self.sweep_every_s = sweep_every_s
        self._sweeping: asyncio.Task | None = None
        self.max_sessions = max_sessions
        self.spare_sessions = spare_sessions
        self.idle_timeout = idle_timeout
        self.reconnect_grace = reconnect_grace
        self.start_timeout = start_timeout
        self.host_command = list(host_command)
        self.session_args = list(session_args)  # passed on to the host (limits)
        if self.data_root is not None:
            self.session_args += ["--data-root", str(self.data_root)]
        self.host: HostProcess | None = None
        self.hosts_started = 0
        self.sessions: dict[str, Session] = {}  # ended ones stay, for the "has ended" page
        self.started_count = 0  # sessions opened, ever (tests check the limit with it)
        self._client: aiohttp.ClientSession | None = None
        self._stopping = False  # no spares are started while shutting down

    # -------------------------------------------------------------- sessions

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.alive]

    def spares(self) -> list[Session]:
        return [s for s in self.live_sessions() if not s.for_tab]

    def _census(self) -> str:
        live = self.live_sessions()
        return f"{len(live) - len(self.spares())} for tabs + {len(self.spares())} spare of {self.max_sessions}"

    def _reserve(self, for_tab: bool) -> Session:
        """Register a session and start opening it. No await: count and registration are one step."""
        session_id = secrets.token_hex(12)  # lower case: trame's client lower-cases the websocket URL
        session = Session(session_id, self.autosave_root / session_id, for_tab=for_tab)
        self.sessions[session_id] = session
        session.starting = asyncio.get_running_loop().create_task(self._start(session))
        session.starting.add_done_callback(lambda task: self._started(session, task))
        return session

    def _started(self, session: Session, task: asyncio.Task):
        if task.cancelled():
            return
        if task.exception() is not None and not session.for_tab:
            log.error("spare session %s could not start: %s", session.id, task.exception())  # a tab's is logged there
            return  # not replaced at once: a failing start would be retried in a loop
        self._top_up_spares()

    def sessions_of(self, client: str) -> list[Session]:
        return [s for s in self.live_sessions() if s.for_tab and s.client == client]

    def _claim(self) -> Session | None:
        """A spare (a started one first), else a new session if the limit allows; None: refused."""
        spares = sorted(self.spares(), key=lambda s: not s.ready)
        if spares:
            session = spares[0]
        elif len(self.live_sessions()) < self.max_sessions:
            session = self._reserve(for_tab=True)
        else:
            return None
        session.for_tab = True
        if session.ready:
            self._end_later(session, self.idle_timeout, "no tab connected to it")
        self._top_up_spares()
        return session

    def _top_up_spares(self):
        if any(s.for_tab and s.port is None for s in self.live_sessions()):
            return  # a spare opening now would delay the tabs' sessions; topped up when they are done
        while (
            not self._stopping
            and len(self.spares()) < self.spare_sessions
            and len(self.live_sessions()) < self.max_sessions
        ):
            self._reserve(for_tab=False)

    def _running_host(self) -> HostProcess:
        """The session host, started when there is none (or it has exited)."""
        if self.host is None or self.host.exited:
            command = [
                *self.host_command,
                *(["--model", str(self.model_dir)] if self.model_dir else []),
                *self.session_args,
            ]
            self.host = HostProcess(command, self._session_closed, self._host_exited)
            self.host.starting = asyncio.get_running_loop().create_task(self._start_host(self.host))
            self.host.starting.add_done_callback(lambda task: task.cancelled() or task.exception())  # logged there
        return self.host

    async def _start_host(self, host: HostProcess):
        began = time.monotonic()
        self.hosts_started += 1
        try:
            await host.start()
        except RuntimeError as error:
            log.error("the session host could not start: %s", error)
            raise
        log.info(
            "session host %d ready after %.1f s (pid %d)",
            self.hosts_started,
            time.monotonic() - began,
            host.process.pid,
        )

    async def _start(self, session: Session) -> int:
        began = time.monotonic()
        session.host = self._running_host()
        try:
            session.port = await asyncio.wait_for(self._open(session), self.start_timeout)
        except (asyncio.TimeoutError, RuntimeError) as error:
            session.ended = True
            session.host.close(session.id)  # in case it opens after all
            if isinstance(error, asyncio.TimeoutError):
                raise RuntimeError(f"the session did not start within {self.start_timeout:g} s") from None
            raise
        log.info("session %s listening after %.1f s (%s)", session.id, time.monotonic() - began, self._census())
        if session.for_tab:
            self._end_later(session, self.idle_timeout, "no tab connected to it")
        return session.port

    async def _open(self, session: Session) -> int:
        await asyncio.shield(session.host.starting)
        self.started_count += 1
        return await session.host.open(session.id, session.autosave_dir)

    def _session_closed(self, session_id: str):
        session = self.sessions.get(session_id)
        if session is not None and not session.closed:
            session.ended = session.closed = True
            self._cancel_end(session)
            log.info("session %s closed (%s)", session.id, self._census())

    def _host_exited(self, host: HostProcess):
        lost = [s for s in self.sessions.values() if s.host is host and not s.closed]
        for session in lost:
            session.ended = session.closed = True
            self._cancel_end(session)
        if self._stopping:
            return
        opened = len([s for s in lost if s.port is not None])
        if host.process.returncode == 0:  # asked to (a signal to the whole process group): not restarted
            log.info("the session host exited; its %d sessions ended (%s)", opened, self._census())
            return
        log.error(
            "the session host exited with %s; its %d sessions ended (%s)",
            host.process.returncode,
            opened,
            self._census(),
        )
        if host.came_up:
            self._top_up_spares()  # a new host; one that failed to start is not restarted in a loop

    # ------------------------------------------------- ending unused sessions

    def _end_later(self, session: Session, delay: float, reason: str):
        self._cancel_end(session)
        session.end_timer = asyncio.get_running_loop().call_later(delay, self._end_unused, session, reason, delay)

    def _cancel_end(self, session: Session):
        if session.end_timer is not None:
            session.end_timer.cancel()
            session.end_timer = None

    def _end_unused(self, session: Session, reason: str, delay: float):
        session.end_timer = None
        if session.clients or not session.alive:
            return
        log.info("session %s ended: %s for %g s", session.id, reason, delay)
        session.ended = True  # counted out now: its memory is being given back
        session.host.close(session.id)

    def client_connected(self, session: Session):
        session.clients += 1
        self._cancel_end(session)

    def client_disconnected(self, session: Session):
        session.clients -= 1
        if session.clients == 0 and session.alive:
            log.info(
                "session %s: its last tab disconnected; ending in %g s unless it reconnects",
                session.id,
                self.reconnect_grace,
            )
            self._end_later(session, self.reconnect_grace, "its tab did not reconnect")

    # ------------------------------------------------------------ autosaves

    def remove_old_autosaves(self) -> list[Path]:
        """Remove the autosave folders of sessions that are not live and whose newest file is
        older than --keep-autosaves-days; only folders named as sessions are (other folders
        under the root are not ours)."""
        if not self.autosave_root.is_dir():
            return []
        cutoff = time.time() - self.keep_autosaves_s
        live = {s.id for s in self.live_sessions()}
        removed = []
        for folder in self.autosave_root.iterdir():
            if not SESSION_ID.fullmatch(folder.name) or folder.name in live:
                continue
            if folder.is_symlink() or not folder.is_dir():
                continue
            try:
                newest = max([folder.stat().st_mtime, *(p.lstat().st_mtime for p in folder.iterdir())])
                if newest < cutoff:
                    shutil.rmtree(folder)
                    removed.append(folder)
            except OSError as error:
                log.warning("could not remove the old autosave folder %s: %s", folder, error)
        if removed:
            log.info("removed %d autosave folders older than %g days", len(removed), self.keep_autosaves_s / 86400)
        return removed

    async def _sweep_autosaves(self):
        while True:
            self.remove_old_autosaves()
            await asyncio.sleep(self.sweep_every_s)

    def _saved_files(self, session: Session) -> list[Path]:
        """The session's autosaved files (plain files directly in its folder)."""
        try:
            return sorted(p for p in session.autosave_dir.iterdir() if p.is_file() and not p.is_symlink())
        except OSError:
            return []

    async def on_startup(self, _app):
        self.autosave_root.mkdir(parents=True, exist_ok=True, mode=0o700)  # the points of other patients
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep_autosaves())
        self._client = aiohttp.ClientSession(auto_decompress=False)
        self._running_host()  # loading the libraries and the model takes the longest: begin at once
        self._top_up_spares()

    async def stop_all(self, *_):
        self._stopping = True
        if self._sweeping is not None:
            self._sweeping.cancel()
        for session in list(self.sessions.values()):
            self._cancel_end(session)
            if session.starting is not None and not session.starting.done():
                session.starting.cancel()
        if self.host is not None:
            await self.host.stop()
        if self._client is not None:
            await self._client.close()

    # -------------------------------------------------------------- handlers

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        client = self.access.client(request)
        held = len(self.sessions_of(client))
        if held >= self.max_sessions_per_client < self.max_sessions:  # a cap of its own (else the server's)
            log.warning(
                "refused a visit from %s: it holds %d sessions (--max-sessions-per-client %d)",
                client,
                held,
                self.max_sessions_per_client,
            )
            return _page(
                429,
                "Too many sessions of yours",
                f"You have {held} sessions open, the most one visitor may hold here. Close a tab you no "
                "longer need (its session ends a few seconds later), then open this address again.",
            )
        session = self._claim()
        if session is None:
            log.warning(
                "refused a visit from %s: %s sessions live (--max-sessions %d)",
                client,
                len(self.live_sessions()),
                self.max_sessions,
            )
            return _page(
                503,
                "Too many open sessions",
                f"This server runs at most {self.max_sessions} sessions at a time (one per browser tab). "
                "Close a tab you no longer need (its session ends a few seconds later), "
                "or start the server with a larger --max-sessions.",
            )
        browser = request.cookies.get(BROWSER_COOKIE, "")
        new_browser = not BROWSER_ID.fullmatch(browser)
        if new_browser:
            browser = secrets.token_urlsafe(24)
        session.owner, session.client = browser, client
        log.info("session %s given to a tab (%s)", session.id, self._census())
        try:
            await asyncio.shield(session.starting)  # a visitor who gives up does not stop the start
        except RuntimeError as error:
            log.error("could not start session %s: %s", session.id, error)
            return _page(500, "The session could not start", html.escape(str(error)))
        response = web.Response(status=302, headers={"Location": f"/s/{session.id}/"})
        if new_browser:
            response.set_cookie(
                BROWSER_COOKIE, browser, path="/", httponly=True, samesite="Lax", secure=is_https(request)
            )
        return response

    def _owned(self, request: web.Request, session: Session) -> bool:
        """Whether the request comes from the browser the session was given to."""
        browser = request.cookies.get(BROWSER_COOKIE, "")
        return bool(session.owner) and hmac.compare_digest(browser.encode(), session.owner.encode())

    def _not_yours(self, request: web.Request, session: Session) -> web.Response:
        log.warning("refused %s %s from %s: another browser's session", request.method, request.path, request.remote)
        return _page(
            403,
            "Not your session",
            "This session was opened in another browser. <a href='/'>Start a session of your own</a>.",
        )

    def _ended_page(self, request: web.Request, session: Session | None) -> web.Response:
        saved = ""
        if session is not None and self._owned(request, session) and (files := self._saved_files(session)):
            links = ", ".join(
                f"<a href='/s/{session.id}/autosaved/{quote(p.name)}' download>{html.escape(p.name)}</a>" for p in files
            )
            saved = f" Your last points were saved: {links}."
        return _page(
            410,
            "This session has ended",
            f"The session ended after its tab was closed or left idle.{saved} <a href='/'>Start a new session</a>.",
        )

    async def autosaved_file(self, request: web.Request) -> web.StreamResponse:
        """A file the session autosaved, for the browser it was given to (while it runs and after)."""
        session = self.sessions.get(request.match_info["sid"])
        name = request.match_info["name"]
        if session is not None and self._owned(request, session):
            for path in self._saved_files(session):
                if path.name == name:  # a name from the folder's listing, never a path built from the request
                    return web.FileResponse(
                        path, headers={"Content-Disposition": f"attachment; filename*=UTF-8''{quote(path.name)}"}
                    )
        return _page(404, "No such file", "This session has no saved file of that name.")

    async def connection_info(self, request: web.Request) -> web.Response:
        """trame's page asks where its websocket is (the wslink launcher protocol) before connecting."""
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.alive:
            return web.json_response({"error": "This session has ended; open the server's address again."}, status=410)
        if not self._owned(request, session):
            return web.json_response({"error": "This session was opened in another browser."}, status=403)
        # the page puts its own scheme and host in place of USE_HOST (and wss: under https)
        return web.json_response({"sessionURL": f"ws://USE_HOST/s/{session.id}/ws"})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.ready:
            return self._ended_page(request, session)
        if not self._owned(request, session):
            return self._not_yours(request, session)
        tail = request.match_info.get("tail", "")
        if any(part in ("..", ".") for part in tail.replace("\\", "/").split("/")):
            return _page(404, "Not found", "No such page.")  # the session's server only sees paths of its own
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._forward_websocket(request, session, tail)
        return await self._forward_http(request, session, tail)

    async def _forward_http(self, request, session, tail):
        url = f"http://127.0.0.1:{session.port}/{tail}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._client.request(
            request.method, url, params=request.query, headers=headers, data=await request.read(), allow_redirects=False
        ) as upstream:
            body = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
            if upstream.headers.get("content-encoding"):
                out_headers["Content-Encoding"] = upstream.headers["content-encoding"]
            return web.Response(status=upstream.status, body=body, headers=out_headers)

    async def _forward_websocket(self, request, session, tail):
        browser_ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await browser_ws.prepare(request)
        self.client_connected(session)
        try:
            async with self._client.ws_connect(f"ws://127.0.0.1:{session.port}/{tail}", max_msg_size=0) as server_ws:
                await asyncio.gather(_pump(browser_ws, server_ws), _pump(server_ws, browser_ws))
        finally:
            self.client_disconnected(session)
        return browser_ws

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3, middlewares=[AccessGate(self.access).middleware])
        app.router.add_get("/", self.new_session)
        app.router.add_get("/favicon.ico", _no_icon)  # browsers ask for it on the launcher's own pages
        app.router.add_get("/s/{sid}", _redirect_with_slash)
        app.router.add_post("/s/{sid}/paraview/", self.connection_info)
        app.router.add_get("/s/{sid}/autosaved/{name}", self.autosaved_file)
        app.router.add_route("*", "/s/{sid}/{tail:.*}", self.forward)
        app.on_startup.append(self.on_startup)
        app.on_shutdown.append(self.stop_all)
        return app


async def _pump(source, destination):
    """Copy websocket messages one way until either side closes."""
    try:
        async for message in source:
            if message.type == aiohttp.WSMsgType.TEXT:
                await destination.send_str(message.data)
            elif message.type == aiohttp.WSMsgType.BINARY:
                await destination.send_bytes(message.data)
            else:
                break
    finally:
        if not destination.closed:
            await destination.close()


async def _no_icon(_request):
    return web.Response(status=204)


async def _redirect_with_slash(request):
    raise web.HTTPFound(f"/s/{request.match_info['sid']}/")


def _checked_data_root(data_root, autosave_root: Path) -> Path:
    """The data root, resolved; the autosaves may not lie under it (every session could list
    the others' points)."""
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"--data-root {data_root} is not a folder")
    autosaves = autosave_root.expanduser().resolve()
    if autosaves.is_relative_to(root):
        raise UsageError(f"--autosave-dir {autosave_root} lies inside --data-root {data_root}; put it elsewhere")
    return root


def _checked_training_set(training_set, data_root) -> Path:
    """The training set, resolved; not under the data root (every session lists the data root's
    images: the team's added images would be listed to every visitor)."""
    folder = Path(training_set).expanduser().resolve()
    if not folder.parent.is_dir():
        raise UsageError(f"--training-set {training_set}: its folder {folder.parent} does not exist")
    if data_root is not None and folder.is_relative_to(Path(data_root).expanduser().resolve()):
        raise UsageError(f"--training-set {training_set} lies inside --data-root {data_root}; put it elsewhere")
    return folder


def serve(host: str = "127.0.0.1", port: int = 8080, **launcher_options):
    """Run the launcher until interrupted. Binds loopback unless ``host`` says otherwise;
    ``launcher_options`` are :class:`Launcher`'s."""
    launcher = Launcher(**launcher_options)
    if launcher.access.mode == OPEN and not is_loopback(host):
        log.warning("--no-auth on %s: anyone who can reach port %d can use this server", host or "every address", port)
    url = start_url(host, port, launcher.access)
    print(f"InteractiveKeypoints: open {url} (one session per browser tab)", flush=True)
    web.run_app(launcher.make_app(), host=host, port=port, print=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; another, such as 0.0.0.0, needs one of "
        "--token, --password-file, --trust-proxy-auth or --no-auth)",
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    _add_access_arguments(parser)
    _add_data_arguments(parser)
    _add_session_arguments(parser)


def _add_access_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_argument_group(
        "who may use it",
        "on an address other than loopback, one of these is needed (the server does not start without)",
    )
    who.add_argument(
        "--token",
        action="store_true",
        help="visitors need a token, printed in the address to open at start (random, or $INTERACTIVE_KEYPOINTS_TOKEN); "
        "a browser that came with it is remembered by a cookie",
    )
    who.add_argument("--password-file", default=None, help="visitors sign in with the password in this file")
    who.add_argument(
        "--trust-proxy-auth",
        action="store_true",
        help="a reverse proxy signs users in and names them in --proxy-user-header; requests without it are refused",
    )
    who.add_argument(
        "--proxy-user-header",
        default=PROXY_USER_HEADER,
        help=f"the header the proxy names the signed-in user in (default {PROXY_USER_HEADER})",
    )
    who.add_argument("--no-auth", action="store_true", help="anyone who can reach the port may use it")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        default=None,
        help="a folder whose images the page lists to open from the server (default: none; only uploads)",
    )
    parser.add_argument(
        "--autosave-dir", default=None, help=f"where sessions autosave their points (default {default_autosave_root()})"
    )
    parser.add_argument(
        "--training-set",
        default=None,
        help="a training set (your own landmarks) the page can add its image and points to (default: none)",
    )
    parser.add_argument(
        "--keep-autosaves-days",
        type=float,
        default=KEEP_AUTOSAVES_DAYS,
        help=f"autosaves of ended sessions are removed after this many days (default {KEEP_AUTOSAVES_DAYS:g})",
    )


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=MAX_SESSIONS,
        help=f"sessions (browser tabs) at a time, spares included (default {MAX_SESSIONS})",
    )
    parser.add_argument(
        "--max-sessions-per-client",
        type=int,
        default=None,
        help=f"sessions one visitor (address, or the proxy's user) may hold (default {SESSIONS_PER_CLIENT_SHARED} "
        "when the server serves other machines, else --max-sessions)",
    )
    parser.add_argument(
        "--spare-sessions",
        type=int,
        default=SPARE_SESSIONS,
        help="sessions started before a tab asks for one, so it opens at once "
        f"(default {SPARE_SESSIONS}; each holds memory while it waits)",
    )
    parser.add_argument(
        "--reconnect-grace",
        type=float,
        default=RECONNECT_GRACE_S,
        help=f"seconds a session is kept after its last tab disconnected, for a reload (default {RECONNECT_GRACE_S:g})",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT_S,
        help=f"seconds a session may take to start (default {START_TIMEOUT_S})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=int,
        default=IDLE_TIMEOUT_S,
        help=f"seconds a session waits for its first tab (default {IDLE_TIMEOUT_S})",
    )
    parser.add_argument("--max-file-mb", type=float, default=None, help="largest image file accepted (default 64)")
    parser.add_argument("--max-megapixels", type=float, default=None, help="largest image accepted (default 30)")
    parser.add_argument(
        "--inference-threads",
        type=int,
        default=None,
        help="threads of one model run; all sessions share one model and run it one at a time "
        "(default: torch's, which follows OMP_NUM_THREADS)",
    )
    RunHooks.add_arguments(parser, show_help=False)  # tests, demos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="interactive-keypoints serve", description="Serve the InteractiveKeypoints browser app."
    )
    add_arguments(parser)
    return parser


def main(argv=None):
    return run(build_parser().parse_args(argv))


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    session_args = []
    if args.max_file_mb is not None:
        session_args += ["--max-file-mb", str(args.max_file_mb)]
    if args.max_megapixels is not None:
        session_args += ["--max-megapixels", str(args.max_megapixels)]
    if args.inference_threads is not None:
        session_args += ["--inference-threads", str(args.inference_threads)]
    session_args += RunHooks.from_args(args).argv()
    try:
        if args.training_set is not None:
            session_args += ["--training-set", str(_checked_training_set(args.training_set, args.data_root))]
        access = choose_access(
            args.host,
            token=args.token,
            password_file=args.password_file,
            trust_proxy_auth=args.trust_proxy_auth,
            no_auth=args.no_auth,
            user_header=args.proxy_user_header,
        )
        per_client = args.max_sessions_per_client
        if per_client is None and (access.exposed or not is_loopback(args.host)):
            per_client = min(SESSIONS_PER_CLIENT_SHARED, args.max_sessions)
        serve(
            args.host,
            args.port,
            access=access,
            data_root=args.data_root,
            max_sessions_per_client=per_client,
            keep_autosaves_days=args.keep_autosaves_days,
            model_dir=args.model,
            autosave_root=args.autosave_dir,
            max_sessions=args.max_sessions,
            idle_timeout=args.idle_timeout,
            session_args=session_args,
            spare_sessions=args.spare_sessions,
            reconnect_grace=args.reconnect_grace,
            start_timeout=args.start_timeout,
        )
    except (ValueError, AccessError) as error:
        print(f"interactive-keypoints serve: {error}", file=sys.stderr)
        return 2
    return 0
