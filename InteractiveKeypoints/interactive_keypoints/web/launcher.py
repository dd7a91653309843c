"""``interactive-keypoints serve``: one session process per browser tab, behind one port.

trame keeps one state per server process and shares it with every connected client, so
two tabs on one trame server would see and move each other's points. The launcher
therefore starts a separate session server (:func:`.app.run_session`) for every visit of
``/``, redirects the tab to ``/s/<id>/`` and forwards that path (HTTP and websocket) to
the session's own loopback port. Reloading ``/s/<id>/`` reconnects to the same session;
a session with no tab exits after ``--idle-timeout`` seconds, and its points are
autosaved under ``--autosave-dir``.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import logging
import os
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

READY_MARK = "IK_SESSION_READY"  # a session prints it with its port once it listens
MAX_SESSIONS = 4  # each session holds a model and a render window (~0.5-1 GB)
START_TIMEOUT_S = 180
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "upgrade", "host", "content-length",
               "content-encoding"}


def default_autosave_root() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "interactive-keypoints" / "web-sessions"


@dataclass
class Session:
    id: str
    process: asyncio.subprocess.Process
    port: int | None = None
    autosave_dir: Path | None = None
    output: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


class Launcher:
    def __init__(self, model_dir=None, autosave_root=None, max_sessions: int = MAX_SESSIONS,
                 idle_timeout: int = 300, session_args=()):
        self.model_dir = model_dir
        self.autosave_root = Path(autosave_root) if autosave_root else default_autosave_root()
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.session_args = list(session_args)  # passed on to every session (limits)
        self.sessions: dict[str, Session] = {}

    # -------------------------------------------------------------- sessions

    def live_sessions(self) -> list[Session]:
        return [s for s in self.sessions.values() if s.alive]

    async def start_session(self) -> Session:
        session_id = secrets.token_urlsafe(12)
        autosave_dir = self.autosave_root / session_id
        command = [sys.executable, "-m", "interactive_keypoints.web.app", "--host", "127.0.0.1", "--port", "0",
                   "--autosave-dir", str(autosave_dir), "--idle-timeout", str(self.idle_timeout)]
        if self.model_dir:
            command += ["--model", str(self.model_dir)]
        command += self.session_args
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        session = Session(session_id, process, autosave_dir=autosave_dir)
        self.sessions[session_id] = session
        try:
            session.port = await asyncio.wait_for(self._read_port(session), START_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            raise RuntimeError(f"the session server did not start within {START_TIMEOUT_S} s") from None
        asyncio.get_running_loop().create_task(self._drain(session))
        return session

    async def _read_port(self, session: Session) -> int:
        while True:
            line = await session.process.stdout.readline()
            if not line:
                await session.process.wait()
                tail = "".join(session.output[-15:])
                raise RuntimeError(f"the session server exited with {session.process.returncode}:\n{tail}")
            text = line.decode(errors="replace")
            session.output.append(text)
            if text.startswith(READY_MARK):
                return int(text.split("port=")[1])

    async def _drain(self, session: Session):
        """Keep reading the child's output (a full pipe would block it); log problems."""
        async for line in session.process.stdout:
            text = line.decode(errors="replace").rstrip()
            if "ERROR" in text or "Traceback" in text:
                log.warning("session %s: %s", session.id, text)
        await session.process.wait()
        log.info("session %s ended (%s)", session.id, session.process.returncode)

    async def stop_all(self, *_):
        for session in self.live_sessions():
            session.process.terminate()
        for session in self.sessions.values():
            try:
                await asyncio.wait_for(session.process.wait(), 20)
            except asyncio.TimeoutError:
                session.process.kill()

    # -------------------------------------------------------------- handlers

    async def new_session(self, request: web.Request) -> web.StreamResponse:
        if len(self.live_sessions()) >= self.max_sessions:
            return _page(503, "Too many open sessions",
                         f"This server runs at most {self.max_sessions} sessions at a time (one per browser tab). "
                         "Close a tab you no longer need and its session ends after the idle timeout, "
                         "or start the server with a larger --max-sessions.")
        try:
            session = await self.start_session()
        except RuntimeError as error:
            log.error("could not start a session: %s", error)
            return _page(500, "The session could not start", str(error))
        raise web.HTTPFound(f"/s/{session.id}/")

    async def forward(self, request: web.Request) -> web.StreamResponse:
        session = self.sessions.get(request.match_info["sid"])
        if session is None or not session.alive:
            saved = ""
            if session is not None and session.autosave_dir and any(session.autosave_dir.glob("*")):
                saved = f" Your last points were saved in {session.autosave_dir}."
            return _page(410, "This session has ended",
                         f"The session closed after being idle.{saved} <a href='/'>Start a new session</a>.")
        tail = request.match_info.get("tail", "")
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._forward_websocket(request, session, tail)
        return await self._forward_http(request, session, tail)

    async def _forward_http(self, request, session, tail):
        url = f"http://127.0.0.1:{session.port}/{tail}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            async with client.request(request.method, url, params=request.query, headers=headers,
                                      data=await request.read(), allow_redirects=False) as upstream:
                body = await upstream.read()
                out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                if upstream.headers.get("content-encoding"):
                    out_headers["Content-Encoding"] = upstream.headers["content-encoding"]
                return web.Response(status=upstream.status, body=body, headers=out_headers)

    async def _forward_websocket(self, request, session, tail):
        browser_ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await browser_ws.prepare(request)
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(f"ws://127.0.0.1:{session.port}/{tail}", max_msg_size=0) as server_ws:
                await asyncio.gather(_pump(browser_ws, server_ws), _pump(server_ws, browser_ws))
        return browser_ws

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/", self.new_session)
        app.router.add_get("/s/{sid}", lambda r: _redirect_with_slash(r))
        app.router.add_route("*", "/s/{sid}/{tail:.*}", self.forward)
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


async def _redirect_with_slash(request):
    raise web.HTTPFound(f"/s/{request.match_info['sid']}/")


def _page(status: int, title: str, body: str) -> web.Response:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family: sans-serif; margin: 3em;'><h2>{html.escape(title)}</h2>"
            f"<p id='ik-launcher-message'>{body}</p></body></html>")
    return web.Response(status=status, text=text, content_type="text/html")


def serve(host: str = "127.0.0.1", port: int = 8080, model_dir=None, autosave_dir=None,
          max_sessions: int = MAX_SESSIONS, idle_timeout: int = 300, session_args=()):
    """Run the launcher until interrupted. Binds loopback unless ``host`` says otherwise."""
    launcher = Launcher(model_dir, autosave_dir, max_sessions, idle_timeout, session_args)
    print(f"InteractiveKeypoints: open http://{host}:{port}/ (one session per browser tab)", flush=True)
    web.run_app(launcher.make_app(), host=host, port=port, print=None)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    parser.add_argument("--autosave-dir", default=None,
                        help=f"where sessions autosave their points (default {default_autosave_root()})")
    parser.add_argument("--max-sessions", type=int, default=MAX_SESSIONS)
    parser.add_argument("--idle-timeout", type=int, default=300,
                        help="seconds a session without an open tab is kept (reload within it resumes)")
    parser.add_argument("--max-file-mb", type=float, default=None, help="largest image file accepted (default 64)")
    parser.add_argument("--max-megapixels", type=float, default=None, help="largest image accepted (default 30)")
    parser.add_argument("--slow-inference", type=float, default=None, help=argparse.SUPPRESS)  # tests, demos


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interactive-keypoints serve",
                                     description="Serve the InteractiveKeypoints browser app.")
    add_arguments(parser)
    return parser


def main(argv=None):
    return run(build_parser().parse_args(argv))


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    session_args = []
    if args.max_file_mb is not None:
        session_args += ["--max-file-mb", str(args.max_file_mb)]
    if args.max_megapixels is not None:
        session_args += ["--max-megapixels", str(args.max_megapixels)]
    if args.slow_inference is not None:
        session_args += ["--slow-inference", str(args.slow_inference)]
    serve(args.host, args.port, args.model, args.autosave_dir, args.max_sessions, args.idle_timeout, session_args)
    return 0
