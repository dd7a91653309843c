"""A stand-in session host for the launcher's tests, and a launcher served on a loopback port.

The stand-in speaks the real host's protocol (JSON lines in, ``IK_HOST`` lines out), serves
each session as a small aiohttp server on a port of its own (``/`` says which session it is,
``/ws`` echoes) and writes ``points.mrk.json`` into the session's autosave folder, as a
session autosaves its points. No trame, no model, no browser: a test takes seconds.
"""

from __future__ import annotations

import asyncio
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from aiohttp import web

from interactive_keypoints.web.launcher import Launcher
from interactive_keypoints.web.protocol import HOST_MARK

FAKE_HOST = f"""
import asyncio, json, os, sys, time
from aiohttp import web

time.sleep({{host_delay}})  # the real host imports its libraries and loads the model first
OPEN_DELAY = {{open_delay}}  # and builds a session's scene and views
sites = {{}}


def answer(event, **fields):
    print("{HOST_MARK} " + json.dumps({{"event": event, **fields}}), flush=True)


async def websocket(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        await ws.send_str(message.data)
    return ws


async def open_session(session_id, autosave_dir):
    await asyncio.sleep(OPEN_DELAY)
    if autosave_dir:  # as a session autosaves its points
        os.makedirs(autosave_dir, exist_ok=True)
        with open(os.path.join(autosave_dir, "points.mrk.json"), "w") as file:
            file.write(json.dumps({{"session": session_id}}))
    app = web.Application()
    app.router.add_get("/", lambda r: web.Response(text="stand-in session " + session_id))
    app.router.add_get("/ws", websocket)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sites[session_id] = runner
    answer("ready", id=session_id, port=site._server.sockets[0].getsockname()[1])


async def main():
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    answer("host-ready")
    while line := await reader.readline():
        command = json.loads(line)
        if "open" in command:
            await open_session(command["open"], command.get("autosave_dir"))
        elif "close" in command:
            if command["close"] in sites:
                await sites.pop(command["close"]).cleanup()
            answer("closed", id=command["close"])

asyncio.run(main())
"""


def stand_in_host_command(folder: Path, host_delay: float = 0.5, open_delay: float = 0.1) -> list[str]:
    """The command that runs the stand-in host (its script written to ``folder``)."""
    script = Path(folder) / f"fake_host_{host_delay:g}_{open_delay:g}.py"
    script.write_text(FAKE_HOST.replace("{host_delay}", repr(host_delay)).replace("{open_delay}", repr(open_delay)))
    return [sys.executable, str(script)]


def new_client(**connector_options) -> aiohttp.ClientSession:
    """A client that keeps cookies, as a browser does (unsafe: also those of an IP address)."""
    connector = aiohttp.TCPConnector(**connector_options) if connector_options else None
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True), connector=connector)


@asynccontextmanager
async def running(launcher: Launcher):
    """The launcher on a free loopback port: (its base URL, a client of its own)."""
    runner = web.AppRunner(launcher.make_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with new_client() as client:
            yield f"http://127.0.0.1:{port}", client
    finally:
        await runner.cleanup()  # ends every session (on_shutdown)


async def visit(client, base) -> tuple[int, str]:
    async with client.get(base + "/", allow_redirects=False) as response:
        return response.status, response.headers.get("Location", "")


async def wait_until(condition, timeout_s: float) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout_s``."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout_s, f"not within {timeout_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began
